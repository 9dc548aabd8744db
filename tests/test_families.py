"""test_families.py: the model families beyond Llama (pyllm/arch: Qwen2, Qwen3, Phi-3 with and without
LongRoPE, Mixtral with 8 and 4 experts) outside test_parity's transformers comparisons: their GGUF
files both ways (pyllm's writer -> pyllm's reader gives the folder's model; gguf-py reads the files
with llama.cpp's names, shapes and keys), quantized variants within stated KL bounds, and the errors
bad configs and checkpoints get."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

import pyllm
from pyllm.errors import ModelLoadError, UnsupportedArchitectureError
from pyllm.generation.logprobs import log_softmax
from pyllm.gguf_export import export_gguf

gguf = pytest.importorskip("gguf")

FAMILIES = ["qwen2", "qwen3", "phi3", "phi3-longrope", "mixtral", "mixtral4"]
RTOL = 1e-4  # as test_parity: the same float32 arithmetic up to summation order (RoPE layout, tiles)


def _ids(n=120, seed=1):
    return np.random.default_rng(seed).integers(3, 32000, n).tolist()


def _close(a, b, rtol=RTOL):
    scale = max(1.0, float(np.abs(b).max()))
    assert float(np.abs(a - b).max()) <= rtol * scale, f"max |diff| {np.abs(a - b).max():.3g}"


def mean_kl(ref_logits, logits) -> float:
    """Mean KL(ref || ours) per token, in nats."""
    p, q = log_softmax(ref_logits), log_softmax(logits)
    return float((np.exp(p) * (p - q)).sum(-1).mean())


# which llama.cpp architecture and tensors each family's file has (llama.cpp's converter names)
EXPECT = {
    "qwen2": ("qwen2", ["blk.0.attn_q.bias", "blk.0.attn_k.bias", "blk.0.attn_v.bias", "blk.0.ffn_gate.weight"]),
    "qwen3": ("qwen3", ["blk.0.attn_q_norm.weight", "blk.0.attn_k_norm.weight"]),
    "phi3": ("phi3", ["blk.0.attn_qkv.weight", "blk.0.ffn_up.weight"]),
    "phi3-longrope": ("phi3", ["rope_factors_long.weight", "rope_factors_short.weight", "blk.1.attn_qkv.weight"]),
    "mixtral": ("llama", ["blk.0.ffn_gate_inp.weight", "blk.0.ffn_gate_exps.weight", "blk.1.ffn_down_exps.weight"]),
    "mixtral4": ("llama", ["blk.0.ffn_gate_inp.weight", "blk.0.ffn_up_exps.weight"]),
}


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    cache = {}

    def get(arch, quant):
        if (arch, quant) not in cache:
            out = str(tmp_path_factory.mktemp("fam") / f"{arch}-{quant}.gguf")
            export_gguf(checkpoint(arch, "float32"), out, quant)
            cache[(arch, quant)] = out
        return cache[(arch, quant)]

    return get


@pytest.mark.parametrize("arch", FAMILIES)
def test_gguf_f32_round_trip_is_the_folders_model(checkpoint, exported, arch):
    """HF folder -> GGUF (f32) -> pyllm gives the folder's logits and greedy tokens."""
    path = exported(arch, "f32")
    a, b = pyllm.load(checkpoint(arch, "float32"), n_ctx=256), pyllm.load(path, n_ctx=256)
    assert b.config.architecture == a.config.architecture
    assert (b.config.qkv_bias, b.config.qk_norm, b.config.n_experts, b.config.n_experts_used) == \
        (a.config.qkv_bias, a.config.qk_norm, a.config.n_experts, a.config.n_experts_used)
    ids = _ids()
    _close(b.logits(ids), a.logits(ids))
    assert b.generate_tokens(ids[:30], max_tokens=24, temperature=0, ignore_eos=True) == \
        a.generate_tokens(ids[:30], max_tokens=24, temperature=0, ignore_eos=True)


@pytest.mark.parametrize("arch", FAMILIES)
def test_gguf_layout_is_llama_cpps(checkpoint, exported, arch):
    """gguf-py reads the file; architecture, tensor names, shapes (experts stacked [n_expert, rows,
    cols]), the router and vectors kept F32, and the family's metadata are llama.cpp's."""
    r = gguf.GGUFReader(exported(arch, "q8_0"))
    want_arch, want_tensors = EXPECT[arch]
    fields = {k: f for k, f in r.fields.items()}
    arch_name = bytes(fields["general.architecture"].parts[-1]).decode()
    assert arch_name == want_arch
    tensors = {t.name: t for t in r.tensors}
    for name in want_tensors:
        assert name in tensors, f"{name} missing from {sorted(tensors)[:8]}..."
    cfg = json.load(open(os.path.join(checkpoint(arch, "float32"), "config.json")))
    if arch.startswith("mixtral"):
        n = cfg["num_local_experts"]
        t = tensors["blk.0.ffn_gate_exps.weight"]
        assert list(t.shape) == [64, cfg["intermediate_size"], n]  # ggml order: [cols, rows, experts]
        assert tensors["blk.0.ffn_gate_inp.weight"].tensor_type == gguf.GGMLQuantizationType.F32
        assert int(fields["llama.expert_count"].parts[-1][0]) == n
        assert int(fields["llama.expert_used_count"].parts[-1][0]) == cfg["num_experts_per_tok"]
    if arch.startswith("phi3"):
        hd = 16
        assert list(tensors["blk.0.attn_qkv.weight"].shape) == [64, 64 + 2 * cfg["num_key_value_heads"] * hd]
        assert list(tensors["blk.0.ffn_up.weight"].shape) == [64, 2 * cfg["intermediate_size"]]
        assert "blk.0.ffn_gate.weight" not in tensors
    if arch == "phi3-longrope":
        assert int(fields["phi3.rope.scaling.original_context_length"].parts[-1][0]) == 64
        f = float(fields["phi3.rope.scaling.attn_factor"].parts[-1][0])
        assert f == pytest.approx(np.sqrt(1 + np.log(512 / 64) / np.log(64)), rel=1e-6)
        np.testing.assert_array_equal(tensors["rope_factors_long.weight"].data,
                                      np.float32(cfg["rope_parameters"]["long_factor"]))
    if arch == "qwen3":
        assert int(fields["qwen3.attention.key_length"].parts[-1][0]) == 32
    for t in r.tensors:
        if len(t.shape) == 1 or t.name.endswith("norm.weight"):
            assert t.tensor_type == gguf.GGMLQuantizationType.F32, t.name


# mean KL (nats/token) of the quantized model (quant-on-load, seed-5 prompt of 120 tokens) against the
# fp32 one, measured on these tiny random models: the Llama family (already checked against llama.cpp
# on the shipped model) Q8_0 8e-5..1.2e-4, Q4_0 7.8e-3..1.7e-2; Qwen2 1.1e-4 / 9.8e-3, Qwen3 1.8e-4 /
# 2.6e-2, Phi-3 1.2e-4 / 1.4e-2, Mixtral 8 experts 9.8e-4 / 2.9e-2 (quantization noise flips some
# top-2 expert choices, each a large change for its token), 4 experts 1.0e-3 / 1.6e-2. The bounds are
# 2x the largest, far below what a broken layout or routing gives (KL > 1).
KL_BOUND = {"q8_0": 2e-3, "q4_0": 6e-2}


@pytest.mark.parametrize("quant", ["q8_0", "q4_0"])
@pytest.mark.parametrize("arch", FAMILIES)
def test_quantized_variants_within_kl_bounds(checkpoint, exported, arch, quant):
    ref = pyllm.load(checkpoint(arch, "float32"), n_ctx=256)
    ids = _ids(seed=5)
    want = ref.logits(ids)
    on_load = pyllm.load(checkpoint(arch, "float32"), n_ctx=256, quant=quant).logits(ids)
    from_file = pyllm.load(exported(arch, quant), n_ctx=256).logits(ids)
    kl_load, kl_file = mean_kl(want, on_load), mean_kl(want, from_file)
    assert 0 <= kl_load <= KL_BOUND[quant], kl_load
    assert 0 <= kl_file <= KL_BOUND[quant], kl_file


# ------------------------------------------------------------------------------------------ bad input
def _edit_config(src, dst, **changes):
    shutil.copytree(src, dst)
    p = os.path.join(dst, "config.json")
    cfg = json.load(open(p))
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    json.dump(cfg, open(p, "w"))
    return dst


@pytest.mark.parametrize("arch,changes,exc,match", [
    ("qwen2", {"use_sliding_window": True}, UnsupportedArchitectureError, "use_sliding_window"),
    ("mixtral", {"num_experts_per_tok": 9}, ModelLoadError, "num_experts_per_tok must be an integer in 1..num_local"),
    ("mixtral", {"num_local_experts": 0}, ModelLoadError, "num_local_experts must be an integer in 1..256"),
    ("mixtral", {"num_local_experts": 512}, UnsupportedArchitectureError, "at most 256 experts"),
    ("mixtral", {"num_local_experts": 4}, ModelLoadError, "expert tensor|shape"),
    ("phi3", {"attention_bias": True}, UnsupportedArchitectureError, "attention_bias"),
    ("phi3-longrope", {"rope_parameters": {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0] * 3,
                                           "long_factor": [1.0] * 8}},
     ModelLoadError, "short_factor must be a list of 8 positive numbers"),
    ("phi3-longrope", {"rope_parameters": {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0] * 8,
                                           "long_factor": [1.0] * 7 + [-1.0]}},
     ModelLoadError, "long_factor must be a list"),
    ("qwen3", {"head_dim": 16}, ModelLoadError, "'model.layers.0.self_attn.[qkvo]_(proj|norm).weight'.*shape"),
    ("phi3", {"intermediate_size": 128}, ModelLoadError, "'model.layers.0.mlp.(down|gate_up)_proj.weight'.*shape"),
])
def test_bad_configs_get_clear_errors(checkpoint, tmp_path, arch, changes, exc, match):
    path = _edit_config(checkpoint(arch, "float32"), str(tmp_path / "m"), **changes)
    with pytest.raises(exc, match=match):
        pyllm.load(path, n_ctx=64)
    if exc is ModelLoadError and "rope_parameters" not in changes:
        with pytest.raises(exc, match=match):
            export_gguf(path, str(tmp_path / "out.gguf"), "q8_0")
        assert not os.path.exists(tmp_path / "out.gguf")


def test_missing_expert_and_fused_tensors_are_named(checkpoint, tmp_path):
    from safetensors.numpy import load_file, save_file

    for arch, drop in (("mixtral", "model.layers.1.block_sparse_moe.experts.5.w3.weight"),
                       ("phi3", "model.layers.0.self_attn.qkv_proj.weight"),
                       ("qwen2", "model.layers.1.self_attn.k_proj.bias")):
        dst = str(tmp_path / arch)
        shutil.copytree(checkpoint(arch, "float32"), dst)
        f = os.path.join(dst, "model.safetensors")
        t = load_file(f)
        del t[drop]
        save_file(t, f)
        with pytest.raises(ModelLoadError, match=f"no tensor '{drop}'"):
            pyllm.load(dst, n_ctx=64)


def test_gguf_expert_tensor_with_wrong_expert_count(exported, tmp_path):
    """A file whose stacked experts do not match llama.expert_count."""
    src = exported("mixtral4", "f32")
    r = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(str(tmp_path / "bad.gguf"), "llama")
    for k, f in r.fields.items():
        if k.startswith("GGUF.") or k == "general.architecture":
            continue
        v = f.contents()
        if k == "llama.expert_count":
            v = 8
        vt = f.types[0]
        if vt == gguf.GGUFValueType.ARRAY:
            w.add_key_value(k, v, vt, sub_type=f.types[-1])
        else:
            w.add_key_value(k, v, vt)
    for t in r.tensors:
        w.add_tensor(t.name, np.asarray(t.data), raw_shape=list(reversed([int(x) for x in t.shape])),
                     raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelLoadError, match="experts, expected 8|ffn_gate_inp"):
        pyllm.load(str(tmp_path / "bad.gguf"), n_ctx=64)


@pytest.mark.parametrize("arch", ["mixtral", "phi3", "qwen3"])
def test_calibrated_quantization_of_other_families(checkpoint, tmp_path, arch):
    """Calibration statistics reach every matmul weight a family has (MoE experts and router, fused
    Phi-3 parts), and quantizing with them gives a model within the same KL bound."""
    from pyllm.imatrix import collect_importance

    path = checkpoint(arch, "float32")
    ref = pyllm.load(path, n_ctx=256)
    text = " ".join(["the quick brown fox jumps over the lazy dog"] * 40)
    imp = collect_importance(ref, text, n_ctx=64)
    names = {n for n, _ in imp}
    want = {"mixtral": {"wq", "wo", "ffn_gate_inp", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"},
            "phi3": {"wq", "wk", "wv", "ffn_gate", "ffn_up", "ffn_down"},
            "qwen3": {"wq", "ffn_down"}}[arch]
    assert want <= names and all(np.all(v >= 0) and np.any(v > 0) for v in imp.values())
    if arch == "mixtral":  # each expert its own statistics, over the tokens routed to it
        e = imp[("ffn_down_exps", 0)]
        assert e.shape == (8, 96) and not np.allclose(e[0], e[1])
        assert imp[("ffn_gate_exps", 1)].shape == (8, 64)
    ids = _ids(seed=9)
    q = pyllm.load(path, n_ctx=256, quant="q4_0", calibration=imp)
    assert mean_kl(ref.logits(ids), q.logits(ids)) <= KL_BOUND["q4_0"]


def test_llama_attention_bias_matches_transformers(tmp_path):
    """Llama with attention_bias (q/k/v and output biases): transformers' logits, and a GGUF round
    trip, where the q/k biases are permuted with their rows."""
    from conftest import build_checkpoint, hf_model
    import torch

    path = build_checkpoint("llama3", "float32", str(tmp_path / "b"), attention_bias=True)
    m = pyllm.load(path, n_ctx=256)
    assert m.config.qkv_bias and m.config.o_bias
    ids = _ids(100, seed=11)
    with torch.no_grad():
        want = hf_model(path)(torch.tensor([ids])).logits[0].numpy()
    _close(m.logits(ids), want)
    out = str(tmp_path / "b.gguf")
    export_gguf(path, out, "f32")
    assert "blk.0.attn_q.bias" in {t.name for t in gguf.GGUFReader(out).tensors}
    _close(pyllm.load(out, n_ctx=256).logits(ids), want)
