"""test_load_defects.py: model files that sanitizer builds and fuzzing found to crash, hang or fail
late (issue 8). Each bad file is built in tmp_path from the tiny Llama 2 checkpoint or a GGUF
exported from it, and must give a ModelLoadError naming the file/key at fault (quickly, where the
defect was a hang), or load and run correctly."""
from __future__ import annotations

import json
import os
import re
import shutil
import struct
import threading
import time

import numpy as np
import pytest

import pyllm
from pyllm.errors import ModelLoadError


# "Fails fast": a bogus count must not cost work in proportion to it. Under tools/sanitize.sh the
# whole load runs ~5-10x slower (ASan's allocator for every Python object), hence the larger bound.
FAST_S = 10.0 if os.environ.get("PYLLM_SANITIZER_BUILD") else 1.0


@pytest.fixture
def ckpt(checkpoint, tmp_path):
    """A private, writable copy of the tiny float32 Llama 2 checkpoint."""
    dst = tmp_path / "model"
    shutil.copytree(checkpoint("llama2", "float32"), dst)
    return dst


@pytest.fixture(scope="module")
def base_gguf(checkpoint, tmp_path_factory):
    from pyllm.gguf_export import export_gguf

    out = tmp_path_factory.mktemp("gguf") / "base.gguf"
    export_gguf(checkpoint("llama2", "float32"), out, "f16")
    return str(out)


@pytest.fixture(scope="module")
def reference_logits(checkpoint):
    m = pyllm.load(checkpoint("llama2", "float32"), n_ctx=16)
    return m.logits([1, 450, 4996, 17354])


def edit_json(path, **changes):
    data = json.loads(path.read_text()) if path.exists() else {}
    for k, v in changes.items():
        data[k] = v
    path.write_text(json.dumps(data))


def rewrite_gguf(src, dst, set_kv=None, drop=(), alignment=None, arrays=None):
    """A copy of the GGUF file src at dst with metadata changed: set_kv {key: (value, GGUFValueType)},
    drop (keys left out), arrays {key: new list, same element type}, alignment (general.alignment)."""
    import gguf

    set_kv, arrays = dict(set_kv or {}), dict(arrays or {})
    r = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(str(dst), r.fields["general.architecture"].contents())
    if alignment is not None:
        w.add_custom_alignment(alignment)
    for name, f in r.fields.items():
        if (name.startswith("GGUF.") or name in ("general.architecture", "general.alignment") or name in drop
                or name in set_kv):
            continue
        value = arrays[name] if name in arrays else f.contents()
        sub = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(name, value, f.types[0], sub_type=sub)
    for k, (v, t) in set_kv.items():
        w.add_key_value(k, v, t)
    for t in r.tensors:
        w.add_tensor(t.name, np.asarray(t.data), raw_shape=[int(x) for x in reversed(t.shape)],
                     raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(dst)


def read_safetensors(path):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def write_safetensors(path, header, body, pad_to=8, extra=0):
    """header JSON padded with spaces to a multiple of pad_to, plus `extra` more spaces."""
    raw = json.dumps(header).encode()
    raw += b" " * ((-len(raw)) % pad_to + extra)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)


# ---------------------------------------------------------------- 1. misaligned tensor data


@pytest.mark.parametrize("shift", [1, 2, 3])
def test_safetensors_misaligned_data_is_copied_aligned(ckpt, reference_logits, shift):
    from pyllm.safetensors_file import DTYPES, SafetensorsFile

    f = ckpt / "model.safetensors"
    header, body = read_safetensors(f)
    write_safetensors(f, header, body, extra=shift)  # every tensor now starts `shift` bytes off 4-byte alignment
    sf = SafetensorsFile(str(f))
    with pytest.warns(RuntimeWarning, match="not aligned"):
        bufs = {name: sf.buffer(name) for name in sf.tensors}
    for name, buf in bufs.items():
        addr = np.frombuffer(buf, dtype=np.uint8).ctypes.data
        assert addr % DTYPES[sf.tensors[name].dtype][1] == 0, name
        assert bytes(buf) == bytes(memoryview(sf._mm)[sf.tensors[name].start:][: sf.tensors[name].nbytes])
    with pytest.warns(RuntimeWarning, match="model.safetensors"):
        m = pyllm.load(ckpt, n_ctx=16)
    assert np.array_equal(m.logits([1, 450, 4996, 17354]), reference_logits)


@pytest.mark.parametrize("alignment", [1, 2, 4])
def test_gguf_alignment_below_spec_rejected(base_gguf, tmp_path, alignment):
    path = rewrite_gguf(base_gguf, tmp_path / "a.gguf", alignment=alignment)
    with pytest.raises(ModelLoadError, match=rf"a\.gguf: general\.alignment is {alignment}; .*multiple of 8"):
        pyllm.load(path)


@pytest.mark.parametrize("alignment", [8, 64])
def test_gguf_spec_alignments_load(base_gguf, tmp_path, alignment):
    path = rewrite_gguf(base_gguf, tmp_path / "a.gguf", alignment=alignment)
    m = pyllm.load(path, n_ctx=16)
    ref = pyllm.load(base_gguf, n_ctx=16)
    assert np.array_equal(m.logits([1, 450, 4996]), ref.logits([1, 450, 4996]))


# ---------------------------------------------------------------- 2. counts bounded by what the files hold


@pytest.mark.parametrize("layers", [10**6, 2**31 - 1, 2**32])
def test_huge_layer_count_fails_fast(ckpt, layers):
    edit_json(ckpt / "config.json", num_hidden_layers=layers)
    t = time.perf_counter()
    with pytest.raises(ModelLoadError, match="num_hidden_layers"):
        pyllm.load(ckpt)
    assert time.perf_counter() - t < FAST_S


def test_huge_gguf_block_count_fails_fast(base_gguf, tmp_path):
    import gguf

    path = rewrite_gguf(base_gguf, tmp_path / "b.gguf",
                        set_kv={"llama.block_count": (2**31 - 1, gguf.GGUFValueType.UINT32)})
    t = time.perf_counter()
    with pytest.raises(ModelLoadError, match="block_count is 2147483647"):
        pyllm.load(path)
    assert time.perf_counter() - t < FAST_S


# ---------------------------------------------------------------- 3. no other exception escapes load()


@pytest.mark.parametrize("changes,match", [
    (dict(hidden_size=2**31), "hidden_size"),
    (dict(intermediate_size=2**40), "intermediate_size"),
    (dict(vocab_size=2**31), "vocab_size"),
    (dict(num_attention_heads=2**31, num_key_value_heads=2**31), "num_attention_heads"),
    (dict(max_position_embeddings=2**31), "max_position_embeddings"),
    (dict(architectures=["MistralForCausalLM"], sliding_window=2**31), "sliding_window"),
    (dict(architectures=["MistralForCausalLM"], sliding_window=[4096]), "sliding_window"),
    (dict(rms_norm_eps=None), "rms_norm_eps"),
    (dict(rms_norm_eps="1e-5"), "rms_norm_eps"),
    (dict(architectures=5), "architectures"),
    (dict(architectures=[["LlamaForCausalLM"]]), "architectures"),
    (dict(architectures=[], model_type=["llama"]), "model_type"),
    (dict(rope_scaling=[1, 2]), "rope_scaling"),
    (dict(rope_parameters="linear"), "rope_parameters"),
    (dict(rope_parameters={"rope_type": "default", "rope_theta": None}), "rope_theta"),
    (dict(rope_scaling={"rope_type": "linear", "factor": None}), "factor"),
    (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 4.0,
                        "original_max_position_embeddings": 32}), "high_freq_factor"),
    (dict(tie_word_embeddings="false"), "tie_word_embeddings"),
])
def test_bad_config_values(ckpt, changes, match):
    edit_json(ckpt / "config.json", **changes)
    with pytest.raises(ModelLoadError, match=rf"config\.json: .*{match}"):
        pyllm.load(ckpt)


CONFIG_FILES = ["config.json", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json",
                "tokenizer.json", "chat_template.json"]


def _prepare_for(ckpt, name):
    if name == "chat_template.json":  # read only when tokenizer_config.json has no template
        cfg = json.loads((ckpt / "tokenizer_config.json").read_text())
        del cfg["chat_template"]
        (ckpt / "tokenizer_config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_deeply_nested_json(ckpt, name):
    _prepare_for(ckpt, name)
    (ckpt / name).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ModelLoadError, match=name.replace(".", r"\.")):
        pyllm.load(ckpt)


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_non_utf8_json(ckpt, name):
    _prepare_for(ckpt, name)
    (ckpt / name).write_bytes(b'{"a": "\xff\xfe"}')
    with pytest.raises(ModelLoadError, match=name.replace(".", r"\.") + ".*UTF-8"):
        pyllm.load(ckpt)


def test_config_is_a_fifo(ckpt):
    fifo = ckpt / "config.json"
    os.remove(fifo)
    os.mkfifo(fifo)  # opening it for reading blocks until a writer comes
    result = []

    def load():
        try:
            pyllm.load(ckpt)
        except Exception as e:
            result.append(e)

    t = threading.Thread(target=load, daemon=True)
    t.start()
    t.join(5)
    blocked = t.is_alive()
    if blocked:  # be the writer, so that the blocked open returns and the thread ends
        with open(fifo, "wb"):
            pass
        t.join(5)
    assert not blocked, "pyllm.load blocked opening a FIFO"
    assert isinstance(result[0], ModelLoadError) and "config.json: not a regular file" in str(result[0])


def test_corrupt_tokenizer_model(ckpt):
    (ckpt / "tokenizer.model").write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(ModelLoadError, match=r"tokenizer\.model: not a SentencePiece model"):
        pyllm.load(ckpt)


@pytest.mark.parametrize("field,value,match", [
    ("dtype", ["F32"], "unknown dtype"),
    ("dtype", {"F": 32}, "unknown dtype"),
    ("shape", [0, 2**63], "bad shape"),
    ("data_offsets", "ab", "bad data offsets"),
])
def test_bad_safetensors_entries(ckpt, field, value, match):
    f = ckpt / "model.safetensors"
    header, body = read_safetensors(f)
    entry = header["model.norm.weight"]
    entry[field] = value
    if field == "shape":
        entry["data_offsets"] = [entry["data_offsets"][0]] * 2
    write_safetensors(f, header, body)
    with pytest.raises(ModelLoadError, match=rf"model\.safetensors: tensor 'model\.norm\.weight': {match}"):
        pyllm.load(ckpt)


@pytest.mark.parametrize("weight_map", [{"model.norm.weight": 5}, {"model.norm.weight": ".."}, [], "x"])
def test_bad_safetensors_index(ckpt, weight_map):
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(ModelLoadError, match=r"model\.safetensors\.index\.json"):
        pyllm.load(ckpt)


@pytest.mark.parametrize("key,value,vtype,match", [
    ("llama.attention.sliding_window", 2**31, "UINT32", "sliding_window"),
    ("llama.attention.layer_norm_rms_epsilon", 1e300, "FLOAT64", "layer_norm_rms_epsilon"),
    ("llama.rope.freq_base", 1e300, "FLOAT64", "freq_base"),
])
def test_bad_gguf_values(base_gguf, tmp_path, key, value, vtype, match):
    import gguf

    path = rewrite_gguf(base_gguf, tmp_path / "v.gguf", set_kv={key: (value, gguf.GGUFValueType[vtype])})
    with pytest.raises(ModelLoadError, match=rf"v\.gguf: .*{match}"):
        pyllm.load(path)


# ---------------------------------------------------------------- 4. files that loaded, then failed at generate()


def _sentencepiece_prefix(data: bytes, n: int) -> bytes:
    """A SentencePiece ModelProto keeping only its first n pieces (field 1) and every other field."""
    from pyllm.tokenizer import _varint

    out, pos, kept = bytearray(), 0, 0
    while pos < len(data):
        start = pos
        tag, pos = _varint(data, pos)
        assert tag & 7 == 2  # ModelProto's top-level fields are all length-delimited
        length, pos = _varint(data, pos)
        pos += length
        if tag >> 3 != 1 or kept < n:
            out += data[start:pos]
            kept += tag >> 3 == 1
    return bytes(out)


def test_tokenizer_model_shorter_than_vocab(ckpt):
    f = ckpt / "tokenizer.model"
    f.write_bytes(_sentencepiece_prefix(f.read_bytes(), 332))
    from pyllm.tokenizer import Tokenizer

    assert Tokenizer.from_dir(ckpt).vocab_size == 332  # a valid tokenizer, shorter than the model's vocabulary
    # as checkpoints that pad their vocabulary: it loads, and the ids past the tokenizer are never generated
    m = pyllm.load(ckpt)
    out = m.complete([1, 100, 200], max_tokens=8, temperature=0, ignore_eos=True, logit_bias={5000: 100})
    assert out.token_ids and max(out.token_ids) < 332
    assert m.complete([1, 100, 200], max_tokens=8, temperature=0, ignore_eos=True, logit_bias={300: 100}).token_ids == [300] * 8


def _token_arrays(path, n=None, extra=()):
    import gguf

    r = gguf.GGUFReader(path)
    keys = ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type")
    arrays = {k: r.fields[k].contents()[:n] for k in keys}
    for token in extra:
        for k, v in zip(keys, (token, 0.0, 1)):
            arrays[k].append(v)
    return arrays


def test_gguf_token_list_shorter_than_vocab(base_gguf, tmp_path):
    path = rewrite_gguf(base_gguf, tmp_path / "t.gguf", arrays=_token_arrays(base_gguf, n=332))
    with pytest.raises(ModelLoadError, match=r"t\.gguf: tokenizer\.ggml\.tokens: the tokenizer has 332 tokens .*32000"):
        pyllm.load(path)


def test_gguf_token_list_longer_than_vocab(base_gguf, tmp_path):
    path = rewrite_gguf(base_gguf, tmp_path / "t.gguf", arrays=_token_arrays(base_gguf, extra=["zzextra"]))
    with pytest.raises(ModelLoadError, match=r"tokenizer\.ggml\.tokens: the tokenizer has 32001 tokens .*only 32000"):
        pyllm.load(path)


@pytest.mark.parametrize("key,value", [("top_p", 2.0), ("temperature", -1), ("top_k", 2.5), ("min_p", "0.1"),
                                       ("repetition_penalty", 0)])
def test_bad_generation_config_defaults(ckpt, key, value):
    edit_json(ckpt / "generation_config.json", **{key: value, "do_sample": True})
    with pytest.raises(ModelLoadError, match=rf"generation_config\.json: {key} = "):
        pyllm.load(ckpt)


def test_unused_generation_config_defaults_are_ignored(ckpt):
    edit_json(ckpt / "generation_config.json", top_p=2.0, do_sample=False)  # Model does not read them then
    m = pyllm.load(ckpt, n_ctx=16)
    assert len(m.generate_tokens([1, 450], max_tokens=2, ignore_eos=True)) == 2


@pytest.mark.parametrize("key,value,vtype", [("general.sampling.top_p", 2.0, "FLOAT32"),
                                             ("general.sampling.temp", "hot", "STRING"),
                                             ("general.sampling.top_k", -3, "INT32")])
def test_bad_gguf_sampling_defaults(base_gguf, tmp_path, key, value, vtype):
    import gguf

    path = rewrite_gguf(base_gguf, tmp_path / "s.gguf", set_kv={key: (value, gguf.GGUFValueType[vtype])})
    with pytest.raises(ModelLoadError, match=r"s\.gguf: " + re.escape(key) + " = "):
        pyllm.load(path)


def test_good_gguf_sampling_defaults_are_used(base_gguf, tmp_path):
    import gguf

    path = rewrite_gguf(base_gguf, tmp_path / "s.gguf",
                        set_kv={"general.sampling.top_p": (0.5, gguf.GGUFValueType.FLOAT32),
                                "general.sampling.top_k": (7, gguf.GGUFValueType.INT32)})
    m = pyllm.load(path, n_ctx=16)
    assert m.generation_config == {"top_p": 0.5, "top_k": 7}
    assert len(m.generate_tokens([1, 450], max_tokens=2, ignore_eos=True)) == 2


# ---------------------------------------------------------------- 5. missing tokenizer files


def test_folder_without_tokenizer(ckpt):
    os.remove(ckpt / "tokenizer.model")
    with pytest.raises(ModelLoadError, match="no tokenizer.json or tokenizer.model"):
        pyllm.load(ckpt)
