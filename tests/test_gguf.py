"""test_gguf.py: GGUF support. (a) pyllm's Q8_0/Q4_0 bytes are ggml's (gguf-py's numpy reference);
(b) HF -> GGUF (pyllm.gguf_export) -> pyllm.load gives the HF folder's logits, and gguf-py's own
reader reads the files; (c) greedy generation from a GGUF equals the folder's; (d) malformed GGUF
files raise ModelLoadError / UnsupportedArchitectureError, never crash; (e) the quantize tool
writes atomically and reports bad input clearly."""
from __future__ import annotations

import errno
import os
import shutil
import struct
import subprocess
import sys
import warnings

import numpy as np
import pytest

import pyllm
from pyllm import _engine
from pyllm.errors import ModelLoadError, UnsupportedArchitectureError
from pyllm.gguf_file import GGUFFile

gguf = pytest.importorskip("gguf")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUANTS = ("f16", "bf16", "q8_0", "q4_0")
ARCHS = ("llama2", "llama3", "mistral")
TYPE_OF = {"f16": 1, "bf16": 30, "q8_0": 8, "q4_0": 2}
FILE_TYPE = {"f16": 1, "bf16": 32, "q8_0": 7, "q4_0": 2}
# one thread: these models are tiny, results do not depend on the thread count, and thread barriers on a
# loaded CI machine can make multi-threaded decoding of a 4M-parameter model 100x slower
THREADS = 1


def _isas():
    out = []
    for isa in ("scalar", "avx2", "avx512", "neon", "neon-dotprod", "neon-i8mm"):
        try:
            _engine.set_isa(isa)
            out.append(isa)
        except Exception:
            pass
    return out


@pytest.fixture
def restore_isa():
    before = _engine.get_isa()
    yield
    _engine.set_isa(before)


# ----------------------------------------------------------------------------------------------- (a)
def _quant_cases():
    rng = np.random.default_rng(1234)
    blk = np.array([-1.0] + [0.5] * 31, np.float32)

    def ties(first, lim):
        x = rng.integers(-2 * lim + 1, 2 * lim, (16, 128)).astype(np.float32) / 2
        x[:, ::32] = first
        return x

    return {
        "normal": rng.standard_normal((37, 256)).astype(np.float32),
        "zeros": np.zeros((3, 64), np.float32),
        "zero_blocks": np.concatenate([np.zeros((4, 32), np.float32), rng.standard_normal((4, 32)).astype(np.float32)], 1),
        "large": (rng.standard_normal((8, 128)) * 3e5).astype(np.float32),
        "tiny": (rng.standard_normal((8, 128)) * 1e-20).astype(np.float32),
        # blocks whose scale is exactly 1 (Q8_0: max |x| = 127; Q4_0: max-magnitude value -8) holding
        # half-integers: every scaled value is a rounding tie, so the rounding rule must be ggml's
        "ties_q8": ties(127.0, 127),
        "ties_q4": ties(-8.0, 8),
        "negative_max": np.tile(blk, (4, 4)),
        "positive_max": np.tile(-blk, (4, 4)),
        "onehot": np.eye(64, dtype=np.float32),
        "constant": np.full((2, 96), 3.75, np.float32),
        "f16_range_edge": np.full((2, 32), 65504.0 * 7, np.float32),
    }


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0"])
def test_quantization_bit_identical_to_ggml(qtype, restore_isa):
    from gguf.quants import quantize

    from pyllm.quantization import convert

    tid = {"Q8_0": 8, "Q4_0": 2}[qtype]
    for isa in _isas():
        _engine.set_isa(isa)
        for name, x in _quant_cases().items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                want = quantize(x, gguf.GGMLQuantizationType[qtype]).reshape(-1)
            got = convert(x, tid)
            assert got.dtype == np.uint8 and got.shape == want.shape, (isa, name)
            if not np.array_equal(got, want):
                bad = np.nonzero(got != want)[0]
                pytest.fail(f"{qtype} {isa} {name}: {len(bad)} bytes differ from ggml, first at byte {bad[0]}")


# ----------------------------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def exported(tmp_path_factory, checkpoint):
    """exported(model, quant) -> (hf_dir, gguf path); model is an arch name or "shipped"."""
    from pyllm.gguf_export import export_gguf

    cache = {}
    out_dir = tmp_path_factory.mktemp("gguf")

    def get(model, quant):
        if (model, quant) not in cache:
            hf = pyllm.default_model_path() if model == "shipped" else checkpoint(model, "float32")
            path = str(out_dir / f"{model}-{quant}.gguf")
            export_gguf(hf, path, quant)
            cache[(model, quant)] = (hf, path)
        return cache[(model, quant)]

    return get


@pytest.fixture(scope="module", autouse=True)
def _memo_tokenizers():
    """Building the Llama 3 tokenizer (128k tokens, 280k merges) takes seconds; these tests are about
    weights, so each folder's tokenizer metadata and each vocabulary's Tokenizer is built once."""
    import pyllm.gguf_tokenizer as gt

    real_md, real_tok = gt.tokenizer_metadata, gt.tokenizer_from_metadata
    md_cache, tok_cache = {}, {}

    def tokenizer_metadata(model_dir):
        key = os.path.abspath(model_dir)
        if key not in md_cache:
            md_cache[key] = real_md(model_dir)
        return md_cache[key]

    def tokenizer_from_metadata(md, *a, **k):
        toks = md.get("tokenizer.ggml.tokens") or []
        key = hash((tuple(toks), tuple(sorted((k2, repr(v)) for k2, v in md.items() if k2.startswith("tokenizer.")
                                              and k2 not in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges",
                                                             "tokenizer.ggml.scores", "tokenizer.ggml.token_type")))))
        if key not in tok_cache:
            tok_cache[key] = real_tok(md, *a, **k)
        return tok_cache[key]

    mp = pytest.MonkeyPatch()
    mp.setattr(gt, "tokenizer_metadata", tokenizer_metadata)
    mp.setattr(gt, "tokenizer_from_metadata", tokenizer_from_metadata)
    yield
    mp.undo()


def _forward_logits(cm, ids):
    """All-position logits of ids in a fresh sequence (one engine call, as Model.logits makes)."""
    kv = _engine.KVCache(cm, len(ids))
    return _engine.Runner(cm).forward([kv], ids, np.arange(len(ids)), [0] * len(ids), np.arange(len(ids)), THREADS)


_hf_cache = {}


def _hf_reference(hf, quant, ids):
    """pyllm.load(hf, quant=quant)'s logits (the engine model alone: no tokenizer needed)."""
    from pyllm.hf_loader import load_hf_folder

    if (hf, quant) not in _hf_cache:
        cfg, cm, _ = load_hf_folder(hf, 256, quant=quant)
        _hf_cache[(hf, quant)] = (cfg, cm)
    cfg, cm = _hf_cache[(hf, quant)]
    return cfg, _forward_logits(cm, ids)


def _token_ids(vocab, n=40, seed=0):
    """Random ids; 40 > the tiny Mistral's sliding window (24), so the window matters."""
    return np.random.default_rng(seed).integers(3, vocab, n).tolist()


def _unpermuted_model(path, n_ctx):
    """The GGUF's tensors with the Q/K rows put back in Hugging Face order and RoPE in halves mode: the
    same arithmetic, in the same order, as pyllm.load(hf_dir, quant=...)."""
    from pyllm.gguf_export import _rope_permutation
    from pyllm.gguf_loader import read_config
    from pyllm.hf_loader import build_engine_model

    gf = GGUFFile(path)
    cfg = read_config(gf)
    names = cfg.family.gguf_tensors(cfg)

    def get(name, layer):
        tid, shape, buf = gf.tensor(names[(name, layer)].name)
        if name in ("wq", "wk"):
            perm = _rope_permutation(shape[0], cfg.num_heads if name == "wq" else cfg.num_kv_heads)
            rows = np.frombuffer(buf, np.uint8).reshape(shape[0], -1)
            out = np.empty_like(rows)
            out[perm] = rows
            return tid, shape, out.reshape(-1)
        return tid, shape, buf

    return cfg, build_engine_model(cfg, n_ctx, get, interleaved_rope=False, names=names)


def _unpermuted_logits(path, ids):
    return _forward_logits(_unpermuted_model(path, 64)[1], ids)


# ----------------------------------------------------------------------------------------------- (b)
@pytest.mark.parametrize("quant", QUANTS)
@pytest.mark.parametrize("model", ARCHS + ("shipped",))
def test_gguf_matches_hf_folder(exported, model, quant):
    """pyllm.load(gguf) against pyllm.load(hf_dir, quant=same).

    The file holds exactly the bytes quant-on-load uses, with the Q/K rows permuted (llama.cpp's layout),
    and pyllm runs it with interleaved RoPE. That is the same math but not the same float order: q.k
    in attention is summed over a permuted head dimension. So:
      * with the rows put back (test-only helper) the logits are bit-identical: this checks the file,
        the config read from it (Mistral's window, llama3's rope_freqs: base inv_freq / factor gives
        transformers' values exactly for this config; in general up to 1 ulp in the smoothed band) and
        the tensor mapping;
      * through pyllm.load, f16/bf16 logits agree within 1e-4 * max|logit| (seen: ~1e-6 relative);
      * for q8_0/q4_0 the engine quantizes activations to Q8_0 before each matmul, which usually
        absorbs the ulp-level attention difference (the logits are then identical) but can, rarely,
        move one activation across a rounding boundary; a step of that size is bounded well within
        5e-2 * max|logit| and leaves the top token unchanged almost everywhere."""
    hf, path = exported(model, quant)
    ids = _token_ids(1000 if model == "shipped" else 32000)
    ref_cfg, want = _hf_reference(hf, quant, ids)
    np.testing.assert_array_equal(_unpermuted_logits(path, ids), want)

    m = pyllm.load(path, n_ctx=64, n_threads=THREADS)
    assert m.config.sliding_window == ref_cfg.sliding_window
    assert m.config.tie_word_embeddings == ref_cfg.tie_word_embeddings
    _close(m.logits(ids), want, quantized=quant in ("q8_0", "q4_0"))


def _close(got, want, quantized):
    scale = float(np.abs(want).max())
    diff = float(np.abs(got - want).max())
    assert diff <= (5e-2 if quantized else 1e-4) * scale, f"max |logit diff| {diff} (scale {scale})"
    if quantized:
        assert np.mean(got.argmax(-1) == want.argmax(-1)) >= 0.9


def test_linear_rope_scaling(tmp_path):
    from conftest import build_checkpoint

    from pyllm.gguf_export import export_gguf

    hf = build_checkpoint("llama2", "float32", str(tmp_path / "hf"), rope_scaling={"rope_type": "linear", "factor": 4.0},
                          max_position_embeddings=2048)
    path = str(tmp_path / "lin.gguf")
    export_gguf(hf, path, "f16")
    f = GGUFFile(path)
    assert f.metadata["llama.rope.scaling.type"] == "linear" and f.metadata["llama.rope.scaling.factor"] == 4.0
    m = pyllm.load(path, n_ctx=256, n_threads=THREADS)
    assert m.config.rope_scaling == {"rope_type": "linear", "factor": 4.0}
    ids = _token_ids(32000, n=200)
    _close(m.logits(ids), _hf_reference(hf, "f16", ids)[1], quantized=False)


@pytest.mark.parametrize("quant", ["q8_0", "q4_0"])
def test_load_gguf_with_quant(exported, quant):
    """pyllm.load(file.gguf, quant=...) converts a 16-bit file like quant-on-load converts the folder."""
    hf, path = exported("shipped", "bf16")
    m = pyllm.load(path, n_ctx=64, n_threads=THREADS, quant=quant)
    ids = _token_ids(1000)
    _close(m.logits(ids), _hf_reference(hf, quant, ids)[1], quantized=True)


@pytest.mark.parametrize("model,quant", [("shipped", "q4_0"), ("mistral", "q8_0")])
def test_gguf_readable_by_gguf_py(exported, model, quant):
    hf, path = exported(model, quant)
    cfg = pyllm.ModelConfig.from_file(os.path.join(hf, "config.json"))
    r = gguf.GGUFReader(path)
    f = {k: v.contents() for k, v in r.fields.items() if not k.startswith("GGUF.")}
    assert f["general.architecture"] == "llama"
    assert f["general.file_type"] == FILE_TYPE[quant]
    assert f["general.quantization_version"] == 2
    assert f["llama.block_count"] == cfg.num_layers
    assert f["llama.context_length"] == cfg.max_position_embeddings
    assert f["llama.embedding_length"] == cfg.hidden_size
    assert f["llama.feed_forward_length"] == cfg.intermediate_size
    assert f["llama.attention.head_count"] == cfg.num_heads
    assert f["llama.attention.head_count_kv"] == cfg.num_kv_heads
    assert f["llama.rope.dimension_count"] == cfg.head_dim
    assert f["llama.vocab_size"] == cfg.vocab_size
    assert f["llama.rope.freq_base"] == pytest.approx(cfg.rope_theta)
    assert f["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(cfg.rms_norm_eps)
    assert f["tokenizer.ggml.model"] in ("llama", "gpt2")
    assert len(f["tokenizer.ggml.tokens"]) >= cfg.vocab_size - 1
    if cfg.sliding_window:
        assert f["llama.attention.sliding_window"] == cfg.sliding_window
    types = {t.name: t.tensor_type for t in r.tensors}
    shapes = {t.name: [int(x) for x in t.shape] for t in r.tensors}
    n_expected = 9 * cfg.num_layers + 2 + (0 if cfg.tie_word_embeddings else 1)
    n_expected += 1 if cfg.rope_scaling.get("rope_type") == "llama3" else 0
    assert len(types) == n_expected
    q = gguf.GGMLQuantizationType
    want = q(TYPE_OF[quant])
    assert types["output_norm.weight"] == q.F32 and types["blk.0.attn_norm.weight"] == q.F32
    assert types["blk.0.ffn_down.weight"] == want and types["blk.0.attn_q.weight"] == want
    assert shapes["blk.0.attn_k.weight"] == [cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim]  # ggml order
    if cfg.tie_word_embeddings:
        assert "output.weight" not in types
        assert types["token_embd.weight"] == (q.Q8_0 if quant == "q4_0" else want)
    else:
        assert types["output.weight"] == (q.Q8_0 if quant == "q4_0" else want)
        assert types["token_embd.weight"] == want
    if cfg.rope_scaling.get("rope_type") == "llama3":
        assert types["rope_freqs.weight"] == q.F32 and shapes["rope_freqs.weight"] == [cfg.head_dim // 2]


@pytest.mark.parametrize("quant", ["q4_0", "f16"])
def test_llama3_layout(exported, quant):
    """Tied embeddings (no output.weight; for q4_0 the shared matrix is Q8_0) and rope_freqs, read with
    pyllm's reader (gguf-py's GGUFReader takes ~30 s on a 128k vocabulary)."""
    hf, path = exported("llama3", quant)
    f = GGUFFile(path)
    assert f.metadata["general.architecture"] == "llama" and f.metadata["general.file_type"] == FILE_TYPE[quant]
    assert "output.weight" not in f.tensors and "llama.rope.scaling.type" not in f.metadata
    assert f.tensors["token_embd.weight"].type_id == (8 if quant == "q4_0" else 1)
    assert f.tensors["rope_freqs.weight"].type_id == 0 and f.tensors["rope_freqs.weight"].shape == (8,)
    assert f.metadata["tokenizer.ggml.model"] == "gpt2" and len(f.metadata["tokenizer.ggml.tokens"]) == 128256
    assert len(f.tensors) == 9 * 2 + 3


def test_llama3_rope_freqs_reproduce_inv_freq(exported):
    """inv_freq / rope_freqs (what llama.cpp computes) is transformers' llama3 inv_freq to float32 rounding."""
    from pyllm.gguf_loader import read_config

    hf, path = exported("llama3", "q8_0")
    want = pyllm.ModelConfig.from_file(os.path.join(hf, "config.json")).rope_inv_freq()
    got = read_config(GGUFFile(path)).rope_inv_freq()
    np.testing.assert_allclose(got, want, rtol=2e-7, atol=0)


@pytest.mark.parametrize("quant", ["q8_0", "q4_0"])
def test_reference_method_matches_llama_cpp_bytes(tmp_path, quant):
    """With method "reference" every tensor is what llama.cpp's convert_hf_to_gguf.py (q8_0) or
    llama-quantize (q4_0, output tensor q8_0) writes: ggml's quantizer over the permuted rows."""
    import pyllm.gguf_export as ge
    from pyllm.safetensors_file import open_checkpoint

    if "reference" not in ge.METHODS:
        pytest.skip("this pyllm has a single quantization method")
    hf = pyllm.default_model_path()
    path = str(tmp_path / "ref.gguf")
    ge.export_gguf(hf, path, quant, method="reference")
    f = GGUFFile(path)
    tensors = open_checkpoint(hf)
    cfg = pyllm.ModelConfig.from_file(os.path.join(hf, "config.json"))
    for gname, hname, heads in (("blk.1.attn_q.weight", "model.layers.1.self_attn.q_proj.weight", cfg.num_heads),
                                ("blk.1.attn_k.weight", "model.layers.1.self_attn.k_proj.weight", cfg.num_kv_heads),
                                ("blk.2.ffn_down.weight", "model.layers.2.mlp.down_proj.weight", 0),
                                ("output.weight", "lm_head.weight", 0)):
        sf, _ = tensors[hname]
        w = sf.numpy(hname)
        if heads:
            w = w[ge._rope_permutation(w.shape[0], heads)]
        t = f.tensors[gname]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            want = gguf.quants.quantize(w, gguf.GGMLQuantizationType(t.type_id)).reshape(-1)
        assert np.array_equal(np.frombuffer(f.buffer(gname), np.uint8), want), gname


# ----------------------------------------------------------------------------------------------- (c)
@pytest.mark.parametrize("quant", ["bf16", "q8_0"])
def test_shipped_model_greedy_generation(exported, quant):
    """bf16: the GGUF generates exactly the folder's tokens and text. q8_0 (against the folder quantized
    on load): the logits differ by the ulp-level attention-order effect amplified by activation
    re-quantization (see test_gguf_matches_hf_folder), so the token streams may part, but only where the
    folder's own top two logits are a near-tie (< 0.05 apart) and the GGUF picks the runner-up."""
    hf, path = exported("shipped", quant)
    ref = pyllm.load(hf, quant=None if quant == "bf16" else quant, n_threads=THREADS)  # shipped weights are bf16
    m = pyllm.load(path, n_threads=THREADS)
    for prompt in ("ROMEO:", "To be, or not to be, that is the question:", "JULIET:\nO Romeo, Romeo!"):
        ids = ref.tokenize(prompt)
        assert m.tokenize(prompt) == ids
        want = ref.generate_tokens(ids, max_tokens=48, temperature=0, ignore_eos=True)
        got = m.generate_tokens(ids, max_tokens=48, temperature=0, ignore_eos=True)
        if quant == "bf16":
            assert got == want, prompt
            continue
        i = next((k for k in range(len(want)) if got[k] != want[k]), None)
        if i is not None:
            logits = ref.logits(ids + want[:i])[-1]
            top2 = np.argsort(logits)[-2:]
            assert logits[top2[1]] - logits[top2[0]] < 0.05 and got[i] == top2[0], (prompt, i)
    if quant == "bf16":
        assert m.generate("ROMEO:", max_tokens=48, temperature=0) == ref.generate("ROMEO:", max_tokens=48, temperature=0)


# ----------------------------------------------------------------------------------------------- (d)
class _G:
    """A tiny GGUF file built byte by byte, so that each field can be corrupted on purpose."""

    def __init__(self, version=3, alignment=32):
        self.version, self.alignment = version, alignment
        self.kvs = []  # raw encoded entries
        self.tensors = []  # (name, ne, type, data bytes, offset override)
        self.n_kv = self.n_tensors = None
        self.magic = b"GGUF"

    @staticmethod
    def s(x):
        b = x.encode() if isinstance(x, str) else x
        return struct.pack("<Q", len(b)) + b

    def kv(self, key, vtype, payload):
        self.kvs.append(self.s(key) + struct.pack("<I", vtype) + payload)
        return self

    def kv_str(self, key, value):
        return self.kv(key, 8, self.s(value))

    def kv_u32(self, key, value):
        return self.kv(key, 4, struct.pack("<I", value))

    def kv_f32(self, key, value):
        return self.kv(key, 6, struct.pack("<f", value))

    def tensor(self, name, ne, ttype=0, data=None, offset=None):
        if data is None:
            n = int(np.prod(ne))
            data = np.arange(n, dtype=np.float32).tobytes() if ttype == 0 else bytes(n)
        self.tensors.append((name, ne, ttype, data, offset))
        return self

    def bytes(self):
        out = bytearray(self.magic + struct.pack("<I", self.version))
        out += struct.pack("<QQ", len(self.tensors) if self.n_tensors is None else self.n_tensors,
                           len(self.kvs) if self.n_kv is None else self.n_kv)
        for e in self.kvs:
            out += e
        offsets, off = [], 0
        for name, ne, ttype, data, override in self.tensors:
            offsets.append(off if override is None else override)
            off += len(data) + (-len(data)) % self.alignment
        for (name, ne, ttype, data, _), o in zip(self.tensors, offsets):
            out += self.s(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", d) for d in ne)
            out += struct.pack("<IQ", ttype, o)
        out += bytes((-len(out)) % self.alignment)
        for _, _, _, data, _ in self.tensors:
            out += data + bytes((-len(data)) % self.alignment)
        return bytes(out)


def _good():
    return (_G().kv_str("general.architecture", "llama").kv_u32("some.count", 7)
            .tensor("a.weight", (32, 2)).tensor("b.weight", (32,), 8, bytes(34)))


def _write(tmp_path, data, name="bad.gguf"):
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


def test_reader_parses_every_value_type(tmp_path):
    g = _G()
    for vtype, fmt, val in ((0, "<B", 200), (1, "<b", -5), (2, "<H", 60000), (3, "<h", -300), (4, "<I", 4000000000),
                            (5, "<i", -7), (6, "<f", 1.5), (7, "<?", True), (10, "<Q", 2**63 + 5), (11, "<q", -2**40),
                            (12, "<d", 0.1)):
        g.kv(f"v.{vtype}", vtype, struct.pack(fmt, val))
        g.kv(f"a.{vtype}", 9, struct.pack("<IQ", vtype, 2) + struct.pack(fmt, val) * 2)
    g.kv_str("s", "héllo")
    g.kv("strs", 9, struct.pack("<IQ", 8, 2) + g.s("x") + g.s(""))
    inner = struct.pack("<IQ", 5, 2) + struct.pack("<ii", 1, 2)
    g.kv("nested", 9, struct.pack("<IQ", 9, 2) + inner + struct.pack("<IQ", 8, 1) + g.s("z"))
    g.kv("empty", 9, struct.pack("<IQ", 4, 0))
    g.tensor("t", (32, 3), 2, bytes(18 * 3)).tensor("u", (4,), 0)
    f = GGUFFile(_write(tmp_path, g.bytes(), "ok.gguf"))
    md = f.metadata
    assert md["v.0"] == 200 and md["v.1"] == -5 and md["v.4"] == 4000000000 and md["v.10"] == 2**63 + 5
    assert md["v.6"] == 1.5 and md["v.7"] is True and md["v.11"] == -2**40 and md["v.12"] == 0.1
    assert md["a.3"] == [-300, -300] and md["a.7"] == [True, True] and f.value_types["a.6"] == "f32[]"
    assert md["s"] == "héllo" and md["strs"] == ["x", ""] and md["nested"] == [[1, 2], ["z"]] and md["empty"] == []
    tid, shape, buf = f.tensor("t")
    assert (tid, shape, len(buf)) == (2, (3, 32), 54)
    assert np.frombuffer(f.tensor("u")[2], np.float32).tolist() == [0, 1, 2, 3]
    assert f.alignment == 32 and f.data_offset % 32 == 0


@pytest.mark.parametrize("version,alignment", [(2, 32), (3, 64), (3, 1)])
def test_reader_versions_and_alignment(tmp_path, version, alignment):
    g = _G(version=version, alignment=alignment).kv_str("general.architecture", "llama")
    if alignment != 32:
        g.kv_u32("general.alignment", alignment)
    g.tensor("a", (32, 2)).tensor("b", (3,), 0).tensor("c", (32,), 8, bytes(34))
    f = GGUFFile(_write(tmp_path, g.bytes(), "v.gguf"))
    assert f.version == version and f.alignment == alignment and f.data_offset % alignment == 0
    assert np.frombuffer(f.tensor("a")[2], np.float32).tolist() == list(range(64))
    assert f.tensor("b")[1] == (3,) and f.tensor("c")[:2] == (8, (32,))


def _bad_cases():
    def with_(fn):
        g = _good()
        fn(g)
        return g.bytes()

    def patch(data, old, new):
        assert data.count(old) == 1
        return data.replace(old, new)

    good = _good().bytes()
    return {
        "bad magic": (b"GGML" + good[4:], "not a GGUF file"),
        "version 1": (with_(lambda g: setattr(g, "version", 1)), "version 1"),
        "version 99": (with_(lambda g: setattr(g, "version", 99)), "version 99"),
        "big endian": (with_(lambda g: setattr(g, "version", 3 << 24)), "big-endian"),
        "huge n_tensors": (with_(lambda g: setattr(g, "n_tensors", 2**62)), "tensors"),
        "huge n_kv": (with_(lambda g: setattr(g, "n_kv", 2**63 - 1)), "metadata entries"),
        "n_kv one too many": (with_(lambda g: setattr(g, "n_kv", 3)), "."),
        "huge key length": (with_(lambda g: g.kvs.insert(0, struct.pack("<Q", 2**60) + b"k")), "key"),
        "huge string length": (with_(lambda g: g.kv("x", 8, struct.pack("<Q", 2**62) + b"abc")), "truncated"),
        "huge array length": (with_(lambda g: g.kv("x", 9, struct.pack("<IQ", 4, 2**61))), "truncated"),
        "huge string array": (with_(lambda g: g.kv("x", 9, struct.pack("<IQ", 8, 2**61))), "truncated"),
        "huge nested array": (with_(lambda g: g.kv("x", 9, struct.pack("<IQ", 9, 2**60))), "truncated"),
        "deeply nested array": (with_(lambda g: g.kv("x", 9, struct.pack("<IQ", 9, 1) * 6 + struct.pack("<IQ", 4, 0))),
                                "nests"),
        "unknown value type": (with_(lambda g: g.kv("x", 13, b"\0" * 8)), "value type"),
        "unknown array type": (with_(lambda g: g.kv("x", 9, struct.pack("<IQ", 77, 1))), "element type"),
        "duplicate key": (with_(lambda g: g.kv_u32("some.count", 8)), "duplicate"),
        "bad utf8": (with_(lambda g: g.kv("x", 8, g.s(b"\xff\xfe"))), "UTF-8"),
        "bad alignment": (with_(lambda g: g.kv_u32("general.alignment", 24)), "alignment"),
        "alignment wrong type": (with_(lambda g: g.kv_f32("general.alignment", 32.0)), "alignment"),
        "offset beyond file": (with_(lambda g: g.tensor("c", (32,), 0, offset=1 << 40)), "tensor 'c'.*ends at byte"),
        "offset near 2**64": (with_(lambda g: g.tensor("c", (32,), 0, offset=2**64 - 32)), "tensor 'c'"),
        "misaligned offset": (with_(lambda g: g.tensor("c", (32,), 0, offset=96 + 4)), "tensor 'c'.*alignment"),
        "unknown tensor type": (with_(lambda g: g.tensor("c", (32,), 31)), "tensor 'c'.*unknown tensor type"),
        "n_dims 5": (with_(lambda g: g.tensor("c", (1, 1, 1, 1, 32), 0)), "tensor 'c'.*5 dimensions"),
        "dims overflow": (with_(lambda g: g.tensor("c", (2**40, 2**40), 0, data=b"")), "tensor 'c'.*overflow"),
        "huge dim": (with_(lambda g: g.tensor("c", (2**63 + 1,), 0, data=b"")), "tensor 'c'"),
        "row not whole blocks": (with_(lambda g: g.tensor("c", (33,), 8, data=bytes(34))), "tensor 'c'.*block"),
        "overlapping tensors": (with_(lambda g: g.tensor("c", (8,), 0, offset=0)), "overlap"),
        "duplicate tensor": (with_(lambda g: g.tensor("a.weight", (32,), 0)), "duplicate tensor"),
        "long tensor name": (with_(lambda g: g.tensor("x" * 65, (32,), 0)), "tensor #2"),
        "tensor data cut": (good[:-40], "truncated|ends at byte"),
        "bad general.alignment 0": (with_(lambda g: g.kv_u32("general.alignment", 0)), "alignment"),
        "tensor name not utf-8": (patch(good, b"a.weight", b"a.weigh\xff"), "UTF-8"),
    }


@pytest.mark.parametrize("case", list(_bad_cases()))
def test_malformed_gguf(tmp_path, case):
    data, match = _bad_cases()[case]
    path = _write(tmp_path, data)
    with pytest.raises(ModelLoadError, match=match) as e:
        GGUFFile(path)
    assert path in str(e.value)
    with pytest.raises(ModelLoadError):
        pyllm.load(path)


def test_truncated_at_many_points(tmp_path, exported):
    _, src = exported("shipped", "q8_0")
    data = open(src, "rb").read()
    f = GGUFFile(src)
    end = max(t.start + t.nbytes for t in f.tensors.values())
    header_end = f.data_offset
    points = sorted(set(list(range(0, 200, 7)) + list(range(header_end - 300, header_end + 40, 13))
                        + np.linspace(0, end - 1, 40).astype(int).tolist() + [end - 1]))
    for keep in points:
        p = _write(tmp_path, data[:keep], "trunc.gguf")
        with pytest.raises(ModelLoadError, match="truncated|ends at byte|not a GGUF") as e:
            pyllm.load(p)
        assert "trunc.gguf" in str(e.value)


def _rewrite(src, dst, drop_keys=(), set_keys=None, drop_tensors=()):
    """Copy a GGUF through gguf-py's writer with some metadata/tensors changed."""
    r = gguf.GGUFReader(src)
    arch = (set_keys or {}).get("general.architecture", r.fields["general.architecture"].contents())
    w = gguf.GGUFWriter(dst, arch)
    for k, fld in r.fields.items():
        if k.startswith("GGUF.") or k == "general.architecture" or k in drop_keys or k in (set_keys or {}):
            continue
        vt = fld.types[0]
        w.add_key_value(k, fld.contents(), vt, sub_type=fld.types[-1] if vt == gguf.GGUFValueType.ARRAY else None)
    for k, v in (set_keys or {}).items():
        if k != "general.architecture":
            w.add_key_value(k, v[0], v[1])
    for t in r.tensors:
        if t.name not in drop_tensors:
            w.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


@pytest.mark.parametrize("key", ["llama.embedding_length", "llama.block_count", "llama.attention.head_count",
                                 "llama.feed_forward_length", "llama.context_length",
                                 "llama.attention.layer_norm_rms_epsilon", "general.architecture"])
def test_missing_required_key(tmp_path, exported, key):
    _, src = exported("shipped", "q8_0")
    if key == "general.architecture":  # gguf-py always writes it: build the file without it by hand
        data = open(src, "rb").read()
        data = data.replace(b"general.architecture", b"general.architectur_", 1)
        dst = _write(tmp_path, data, "nokey.gguf")
    else:
        dst = _rewrite(src, str(tmp_path / "nokey.gguf"), drop_keys=(key,))
    with pytest.raises(ModelLoadError, match=key.replace(".", r"\.")):
        pyllm.load(dst)


@pytest.mark.parametrize("key,value,match", [
    ("llama.block_count", 2**31 - 1, "block_count"),  # nothing may be sized by it before the tensors are checked
    ("llama.block_count", 2**32 - 1, "block_count"),
    ("llama.block_count", 4, "blk.4"),  # the file has 5 blocks: an unused tensor
    ("llama.embedding_length", 2**31 - 1, "token_embd|shape|size|multiple"),
    ("llama.context_length", 0, "context_length"),
    ("llama.attention.head_count_kv", 3, "head_count"),
    ("llama.vocab_size", 5000, "token_embd|shape|size"),
])
def test_inconsistent_metadata(tmp_path, exported, key, value, match):
    _, src = exported("shipped", "q8_0")
    dst = _rewrite(src, str(tmp_path / "bad.gguf"), set_keys={key: (value, gguf.GGUFValueType.UINT32)})
    with pytest.raises(ModelLoadError, match=match):
        pyllm.load(dst, n_threads=THREADS)


def test_unknown_architecture(tmp_path, exported):
    _, src = exported("shipped", "q8_0")
    dst = _rewrite(src, str(tmp_path / "gpt2.gguf"), set_keys={"general.architecture": "gpt2"})
    with pytest.raises(UnsupportedArchitectureError, match="'gpt2'") as e:
        pyllm.load(dst)
    assert "llama" in str(e.value)


def test_unsupported_variants(tmp_path, exported):
    _, src = exported("shipped", "q8_0")
    V = gguf.GGUFValueType
    cases = {
        "yarn": ({"llama.rope.scaling.type": ("yarn", V.STRING), "llama.rope.scaling.factor": (4.0, V.FLOAT32)},
                 "yarn"),
        "partial rope": ({"llama.rope.dimension_count": (16, V.UINT32)}, "partial RoPE"),
    }
    for name, (keys, match) in cases.items():
        dst = _rewrite(src, str(tmp_path / f"{name}.gguf"), set_keys=keys)
        with pytest.raises(UnsupportedArchitectureError, match=match):
            pyllm.load(dst)
    # experts announced but not there (or without their count per token): a clear error
    for keys, match in (({"llama.expert_count": (8, V.UINT32)}, r"moe.gguf: llama.expert_used_count must be an integer in 1..llama.expert_count \(8\)"),
                        ({"llama.expert_count": (8, V.UINT32), "llama.expert_used_count": (2, V.UINT32)},
                         "no tensor 'blk.0.ffn_gate_inp.weight'"),
                        ({"llama.expert_count": (1000, V.UINT32)}, "at most 256 experts")):
        dst = _rewrite(src, str(tmp_path / "moe.gguf"), set_keys=keys)
        with pytest.raises((ModelLoadError, UnsupportedArchitectureError), match=match):
            pyllm.load(dst)
    # no output.weight: the LM head is tied to token_embd, as in llama.cpp
    dst = _rewrite(src, str(tmp_path / "tied.gguf"), drop_tensors=("output.weight",))
    assert pyllm.load(dst).config.tie_word_embeddings
    # a tensor type pyllm has no kernels for (output.weight Q8_0 -> IQ2_XXS, a valid smaller size)
    data = bytearray(open(src, "rb").read())
    name = b"output.weight"
    pos = bytes(data).index(struct.pack("<Q", len(name)) + name) + 8 + len(name) + 4 + 16
    assert struct.unpack_from("<I", data, pos)[0] == 8
    struct.pack_into("<I", data, pos, 16)
    p = _write(tmp_path, bytes(data), "k.gguf")
    with pytest.raises(UnsupportedArchitectureError, match="output.weight.*IQ2_XXS"):
        pyllm.load(p)


def test_load_dispatch(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("hello, not a model" * 10)
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        pyllm.load(p)
    with pytest.raises(ModelLoadError, match="no such file"):
        pyllm.load(tmp_path / "missing.gguf")


# ----------------------------------------------------------------------------------------------- (e)
def _dir_entries(d):
    return sorted(os.listdir(d))


def test_quantize_cli_writes_file(tmp_path, capsys):
    from pyllm.cli import main

    out = tmp_path / "shk.gguf"
    assert main(["quantize", pyllm.default_model_path(), str(out), "--type", "q4_0"]) == 0
    err = capsys.readouterr().err
    assert "bits per weight" in err and "MiB" in err
    assert _dir_entries(tmp_path) == ["shk.gguf"]
    m = pyllm.load(str(out), n_threads=THREADS)
    assert m.generate("ROMEO:", max_tokens=8, temperature=0)


@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()])
def test_quantize_atomic_on_failure(tmp_path, monkeypatch, exc):
    import pyllm.gguf_export as ge

    calls = {"n": 0}
    real = ge.convert

    def failing(x, type_id, n_threads=0, **kw):
        calls["n"] += 1
        if calls["n"] == 12:  # mid-way through the tensor data
            raise exc
        return real(x, type_id, n_threads, **kw)

    monkeypatch.setattr(ge, "convert", failing)
    out = tmp_path / "out.gguf"
    with pytest.raises(type(exc)) as e:
        ge.export_gguf(pyllm.default_model_path(), str(out), "q8_0")
    assert calls["n"] == 12
    assert _dir_entries(tmp_path) == []  # neither the output nor a temporary file
    if isinstance(exc, OSError):
        assert e.value.errno == errno.ENOSPC and "out.gguf" in str(e.value)
    # an existing file of that name is left untouched
    out.write_bytes(b"old contents")
    calls["n"] = 0
    with pytest.raises(type(exc)):
        ge.export_gguf(pyllm.default_model_path(), str(out), "q8_0")
    assert out.read_bytes() == b"old contents" and _dir_entries(tmp_path) == ["out.gguf"]


def test_quantize_cli_disk_full_message(tmp_path, monkeypatch, capsys):
    import pyllm.gguf_export as ge
    from pyllm.cli import main

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ge, "_write_tensor", full)
    rc = main(["quantize", pyllm.default_model_path(), str(tmp_path / "x.gguf"), "--type", "q8_0", "-q"])
    assert rc != 0
    assert "No space left on device" in capsys.readouterr().err
    assert _dir_entries(tmp_path) == []


def test_quantize_bad_input(tmp_path, checkpoint, capsys):
    from pyllm.cli import main
    from pyllm.gguf_export import export_gguf

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="not a Hugging Face checkpoint"):
        export_gguf(str(empty), str(tmp_path / "a.gguf"), "q8_0")
    gpt = tmp_path / "gpt"
    shutil.copytree(checkpoint("llama2", "float32"), gpt)
    import json

    cfg = json.loads((gpt / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (gpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedArchitectureError, match="GPT2LMHeadModel"):
        export_gguf(str(gpt), str(tmp_path / "a.gguf"), "q8_0")
    assert main(["quantize", str(gpt), str(tmp_path / "a.gguf"), "--type", "q4_0"]) != 0
    err = capsys.readouterr().err
    assert "GPT2LMHeadModel" in err and "not supported" in err
    with pytest.raises(ValueError, match="q3_k"):
        export_gguf(pyllm.default_model_path(), str(tmp_path / "a.gguf"), "q3_k")
    assert not any(n.endswith(".gguf") or n.endswith(".tmp") for n in os.listdir(tmp_path))

    # the thin tools/ script: exit code and message on stderr
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "quantize.py"), str(empty), str(tmp_path / "b.gguf"),
                        "--type", "q8_0"], capture_output=True, text=True)
    assert r.returncode != 0
    assert "not a Hugging Face checkpoint" in r.stderr
    assert not (tmp_path / "b.gguf").exists()
