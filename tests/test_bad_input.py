"""test_bad_input.py: every kind of bad input gets its documented exception with a message that
names the problem, and never crashes the process or leaves a half-usable model."""
from __future__ import annotations

import json
import os
import shutil

import pytest

import pyllm
from pyllm.errors import ContextLengthError, ModelLoadError, UnsupportedArchitectureError


@pytest.fixture
def ckpt(checkpoint, tmp_path):
    """A private, writable copy of the tiny Llama 2 checkpoint."""
    dst = tmp_path / "model"
    shutil.copytree(checkpoint("llama2", "bfloat16"), dst)
    return dst


def edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (path / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("keep", [0, 5, 8, 100, 0.5, 0.999])
def test_truncated_safetensors(ckpt, keep):
    f = ckpt / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: keep if isinstance(keep, int) else int(len(data) * keep)])
    with pytest.raises(ModelLoadError, match="model.safetensors"):
        pyllm.load(ckpt)


def test_corrupt_safetensors_header(ckpt):
    f = ckpt / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[8:40] = b"\xff" * 32  # header JSON no longer parses
    f.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="corrupt safetensors header"):
        pyllm.load(ckpt)


def test_safetensors_offsets_inconsistent_with_shape(ckpt):
    import struct

    f = ckpt / "model.safetensors"
    data = f.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    name = "model.norm.weight"
    header[name]["shape"] = [header[name]["shape"][0] * 2]
    raw = json.dumps(header, separators=(",", ":")).encode().ljust(n)
    assert len(raw) == n
    f.write_bytes(data[:8] + raw + data[8 + n :])
    with pytest.raises(ModelLoadError, match="model.norm.weight"):
        pyllm.load(ckpt)


@pytest.mark.parametrize("key", ["hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size", "num_attention_heads"])
def test_config_missing_key(ckpt, key):
    edit_config(ckpt, **{key: None})
    with pytest.raises(ModelLoadError, match=key):
        pyllm.load(ckpt)


def test_config_not_json(ckpt):
    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="config.json"):
        pyllm.load(ckpt)


def test_tensor_shape_mismatch(ckpt):
    edit_config(ckpt, intermediate_size=96)  # the file's MLP weights are 160 wide
    with pytest.raises(ModelLoadError, match=r"tensor .model\.layers\.0\.mlp\.gate_proj\.weight.*\[96, 64\]"):
        pyllm.load(ckpt)


def test_missing_tensor(ckpt):
    edit_config(ckpt, num_hidden_layers=3)  # the file has 2 layers
    with pytest.raises(ModelLoadError, match=r"model\.layers\.2\."):
        pyllm.load(ckpt)


@pytest.mark.parametrize("arch", ["GPT2LMHeadModel", "FalconForCausalLM"])
def test_unknown_architecture(ckpt, arch):
    edit_config(ckpt, architectures=[arch])
    with pytest.raises(UnsupportedArchitectureError, match=arch) as e:
        pyllm.load(ckpt)
    assert "LlamaForCausalLM" in str(e.value)  # says what is supported


def test_unsupported_rope_scaling(ckpt):
    edit_config(ckpt, rope_scaling={"rope_type": "yarn", "factor": 4.0})
    with pytest.raises(UnsupportedArchitectureError, match="yarn"):
        pyllm.load(ckpt)


def test_missing_files(tmp_path, ckpt):
    with pytest.raises(ModelLoadError, match="no such file"):
        pyllm.load(tmp_path / "nope")
    os.remove(ckpt / "model.safetensors")
    with pytest.raises(ModelLoadError, match="safetensors"):
        pyllm.load(ckpt)


@pytest.fixture(scope="module")
def small_ctx_model(checkpoint):
    return pyllm.load(checkpoint("llama2", "float32"), n_ctx=32)


def test_prompt_longer_than_context(small_ctx_model):
    m = small_ctx_model
    ids = list(range(5, 45))
    with pytest.raises(ContextLengthError, match="context"):
        m.generate(ids, max_tokens=4)
    with pytest.raises(ContextLengthError):
        m.logits(ids)
    with pytest.raises(ContextLengthError):
        m.generate("word " * 100)
    seq = m.sequence()
    seq.append(ids[:30])
    with pytest.raises(ContextLengthError):
        seq.append(ids[:3])
    assert len(seq) == 30  # a refused append changes nothing
    # generation that reaches the end of the context stops there instead of failing
    out = m.generate_tokens(ids[:28], max_tokens=50, temperature=0, ignore_eos=True)
    assert len(out) == 32 - 28 + 1


@pytest.mark.parametrize(
    "kwargs",
    [dict(temperature=-0.5), dict(temperature=float("nan")), dict(top_p=0.0), dict(top_p=1.5), dict(min_p=-0.1),
     dict(min_p=2.0), dict(top_k=-3), dict(repeat_penalty=0.0), dict(seed=-1), dict(max_tokens=-1),
     dict(max_tokens=2.5)],
)
def test_bad_sampling_values(small_ctx_model, kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        small_ctx_model.generate("hello", **kwargs)


@pytest.mark.parametrize("ids", [[1, 2, 32000], [-1], [1, 10**12]])
def test_token_ids_out_of_range(small_ctx_model, ids):
    with pytest.raises(ValueError, match="vocabulary"):
        small_ctx_model.logits(ids)
    with pytest.raises(ValueError, match="vocabulary"):
        small_ctx_model.generate(ids)


def test_bad_load_arguments(checkpoint):
    path = checkpoint("llama2", "float32")
    with pytest.raises(ValueError, match="n_ctx"):
        pyllm.load(path, n_ctx=0)
    with pytest.raises(ValueError, match="n_threads"):
        pyllm.load(path, n_threads=-2)
    with pytest.raises(ValueError, match="n_threads"):
        pyllm.load(path, n_threads=2**40)  # once an OverflowError at the first generate
    with pytest.raises(ValueError, match="max_position_embeddings"):
        pyllm.load(path, n_ctx=10**9)
