"""test_quantization_search.py: the error-minimizing Q4_0 / Q8_0 quantizer (csrc/quantize.c,
pl_quantize_rows_weighted; pyllm.quantization.convert(..., method="search", importance=...)) and the
activation statistics it is weighted with (pyllm/imatrix.py).

The search writes plain ggml blocks (fp16 scale, 4-/8-bit levels), so they decode with the reference
to_float; per block its (importance-)weighted squared error is never above the reference quantizer's,
whose block is one of its candidates; the result does not depend on the thread count."""
from __future__ import annotations

import os

import numpy as np
import pytest

import pyllm
from pyllm import _engine
from pyllm.imatrix import collect_importance, load_importance, resolve_importance, save_importance
from pyllm.quantization import DEFAULT_METHOD, convert

Q4_0, Q8_0 = 2, 8
QTYPES = [pytest.param(Q4_0, id="q4_0"), pytest.param(Q8_0, id="q8_0")]


def _unpack(tid, raw, n_blocks):
    """(fp16 scale as float64, levels as int) per block, straight from the bytes."""
    raw = np.asarray(raw, dtype=np.uint8).reshape(n_blocks, -1)
    d = raw[:, :2].copy().view(np.float16)[:, 0].astype(np.float64)
    if tid == Q4_0:
        qs = raw[:, 2:]
        q = np.concatenate([qs & 15, qs >> 4], axis=1).astype(np.int64) - 8
    else:
        q = raw[:, 2:].view(np.int8).astype(np.int64)
    return d, q


def _block_err(tid, x, raw, w):
    """per-block sum of w * (x - d q)^2 in float64"""
    xb = x.reshape(-1, 32).astype(np.float64)
    d, q = _unpack(tid, raw, xb.shape[0])
    return np.sum(w.reshape(-1, 32) * (xb - d[:, None] * q) ** 2, axis=1)


def _rows(seed=0):
    """test matrices (rows, 256): various distributions, plus awkward blocks"""
    rng = np.random.default_rng(seed)
    out = {
        "normal": rng.standard_normal((24, 256)),
        "weights": rng.standard_normal((24, 256)) * 0.02,
        "heavy": rng.standard_t(3, (24, 256)),
        "uniform": rng.uniform(-1, 1, (24, 256)),
        "outliers": rng.standard_normal((24, 256)) * np.where(rng.random((24, 256)) < 0.02, 30.0, 1.0),
        "positive": np.abs(rng.standard_normal((8, 256))),
        "negative": -np.abs(rng.standard_normal((8, 256))),
        "sparse": rng.standard_normal((8, 256)) * (rng.random((8, 256)) < 0.1),
        "large": rng.standard_normal((4, 256)) * 3e4,
        "tiny": rng.standard_normal((4, 256)) * 1e-6,
    }
    special = np.zeros((4, 256))
    special[0, :32] = 3.75  # constant block
    special[0, 32:64] = np.arange(32) - 16.0
    special[1, :32] = 65504.0 * 7  # fp16 range edge
    special[1, 64:96] = rng.standard_normal(32) * 1e-20
    special[2, ::32] = 1.0  # one-hot blocks
    out["special"] = special
    return {k: v.astype(np.float32) for k, v in out.items()}


@pytest.mark.parametrize("tid", QTYPES)
@pytest.mark.parametrize("weighting", ["plain", "importance", "sparse_importance"])
def test_never_worse_than_reference(tid, weighting):
    rng = np.random.default_rng(1)
    for name, x in _rows().items():
        n = x.shape[1]
        if weighting == "plain":
            imp = None
            w = np.ones_like(x, dtype=np.float64)
        else:
            imp = (rng.random(n) * rng.choice([0.01, 1.0, 100.0], n)).astype(np.float32)
            if weighting == "sparse_importance":
                imp[rng.random(n) < 0.5] = 0.0
                imp[:32] = 0.0  # a block with no weight at all: plain squared error there
            w = np.broadcast_to(imp.astype(np.float64), x.shape).copy()
            w[:, :32] = np.where(imp[:32].sum() > 0, w[:, :32], 1.0)
        ref = convert(x, tid)
        new = convert(x, tid, importance=imp, method="search")
        assert new.dtype == np.uint8 and new.shape == ref.shape
        e_ref, e_new = _block_err(tid, x, ref, w), _block_err(tid, x, new, w)
        bad = np.nonzero(e_new > e_ref * (1 + 1e-12) + 1e-300)[0]
        assert len(bad) == 0, f"{name}: {len(bad)} blocks worse than the reference, first {bad[0]}: " \
                              f"{e_new[bad[0]]} > {e_ref[bad[0]]}"
        if name in ("normal", "weights", "uniform"):
            # and clearly better overall (measured with plain weights: q4_0 0.81-0.89, q8_0 0.72-0.76
            # of the reference's error)
            ratio = e_new.sum() / e_ref.sum()
            assert ratio < (0.92 if tid == Q4_0 else 0.8), (name, ratio)


@pytest.mark.parametrize("tid", QTYPES)
def test_valid_blocks_decode_with_reference(tid):
    """The bytes are ordinary Q4_0 / Q8_0: to_float (the reference decoder) gives d * q, the scale is a
    finite fp16, and the engine's matmul kernels compute with them as with any block."""
    x = _rows()["normal"]
    raw = convert(x, tid, method="search")
    n_blocks = x.size // 32
    d, q = _unpack(tid, raw, n_blocks)
    assert np.all(np.isfinite(d))
    lo, hi = (-8, 7) if tid == Q4_0 else (-128, 127)
    assert q.min() >= lo and q.max() <= hi
    deq = _engine.to_float(tid, raw, x.shape[1])
    np.testing.assert_array_equal(deq.reshape(-1, 32), (d[:, None] * q).astype(np.float32))
    if tid == Q8_0:
        assert (q == -128).any()  # the search uses the full int8 range; kernels must handle -128
    # dot products through the active ISA's kernels (q8_0 activations) against float64 math
    a = np.random.default_rng(2).standard_normal((4, x.shape[1])).astype(np.float32)
    act = np.frombuffer(_engine.from_float(Q8_0, a), np.uint8).copy()
    a_deq = _engine.to_float(Q8_0, act, x.shape[1]).astype(np.float64)
    want = a_deq @ deq.astype(np.float64).T
    got = _engine.gemm(tid, raw, act, x.shape[1], x.shape[0], a.shape[0])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("tid", QTYPES)
def test_deterministic_across_thread_counts(tid):
    x = np.concatenate(list(_rows(3).values()))
    imp = np.random.default_rng(4).random(x.shape[1]).astype(np.float32)
    for importance in (None, imp):
        outs = [convert(x, tid, n_threads=t, importance=importance, method="search") for t in (1, 2, 3, 7)]
        for o in outs[1:]:
            np.testing.assert_array_equal(o, outs[0])
        np.testing.assert_array_equal(convert(x, tid, importance=importance, method="search"), outs[0])


@pytest.mark.parametrize("tid", QTYPES)
def test_non_finite_and_zero_blocks_keep_reference(tid):
    x = np.random.default_rng(5).standard_normal((2, 128)).astype(np.float32)
    x[0, 3] = np.inf
    x[0, 40] = np.nan
    x[1, 32:64] = 0.0
    ref, new = convert(x, tid), convert(x, tid, method="search")
    rb = _engine.row_bytes(tid, 128) // 4  # bytes per block
    blocks_ref, blocks_new = ref.reshape(8, rb), new.reshape(8, rb)
    for b in (0, 1, 5):  # the inf block, the nan block, the zero block
        np.testing.assert_array_equal(blocks_new[b], blocks_ref[b])


def test_reference_method_and_other_types_unchanged():
    x = _rows()["normal"]
    for tid in (Q4_0, Q8_0):
        ref = _engine.quantize(tid, x, 0)
        np.testing.assert_array_equal(convert(x, tid), ref)  # the default of convert() stays ggml's reference
        np.testing.assert_array_equal(convert(x, tid, 2, method="reference"), ref)
        assert not np.array_equal(convert(x, tid, method="search"), ref)
    for tid in (0, 1, 30):  # f32, f16, bf16: nothing to search
        ref = _engine.quantize(tid, x, 0)
        np.testing.assert_array_equal(convert(x, tid, method="search"), ref)
        np.testing.assert_array_equal(convert(x, tid, importance=np.ones(256, np.float32)), ref)
        np.testing.assert_array_equal(_engine.quantize_weighted(tid, x, None, 1), ref)
    assert DEFAULT_METHOD == "search"


def test_bad_importance_raises():
    x = _rows()["normal"]
    for tid in (Q4_0, Q8_0):
        for bad in (np.ones(255, np.float32), np.ones(512, np.float32), np.ones((2, 256), np.float32),
                    np.ones(1, np.float32), np.array([], np.float32)):
            with pytest.raises(ValueError, match="importance"):
                convert(x, tid, importance=bad)
            with pytest.raises(ValueError, match="importance"):
                _engine.quantize_weighted(tid, x, bad, 1)
        for value in (-1.0, np.nan, np.inf):
            imp = np.ones(256, np.float32)
            imp[7] = value
            with pytest.raises(ValueError, match="importance"):
                convert(x, tid, importance=imp)
            with pytest.raises(ValueError, match="importance"):
                _engine.quantize_weighted(tid, x, imp, 1)
        with pytest.raises(ValueError, match="importance"):
            convert(x, tid, importance=np.ones(256, np.float32), method="reference")
        with pytest.raises(ValueError, match="method"):
            convert(x, tid, method="best")
    with pytest.raises(ValueError):
        _engine.quantize_weighted(Q4_0, x[:, :100], None, 1)  # not whole blocks


def test_importance_changes_the_choice():
    """Columns with more importance get less error."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((64, 256)).astype(np.float32)
    imp = np.ones(256, np.float32)
    imp[::32] = 1000.0  # the first column of every block
    for tid in (Q4_0, Q8_0):
        plain = convert(x, tid, method="search")
        weighted = convert(x, tid, importance=imp)
        col = lambda raw: np.mean((_engine.to_float(tid, raw, 256)[:, ::32] - x[:, ::32]) ** 2)  # noqa: E731
        assert col(weighted) < 0.5 * col(plain)


# ---------------------------------------------------------------------------------------------- imatrix

@pytest.fixture(scope="module")
def model():
    return pyllm.load(n_threads=1)


def _text():
    with open(os.path.join(pyllm.default_model_path(), "calibration.txt"), encoding="utf-8") as f:
        return f.read()


def test_collect_importance(model):
    cfg = model.config
    imp = collect_importance(model, _text(), n_ctx=128, max_tokens=600)
    lens = {"wq": cfg.hidden_size, "wk": cfg.hidden_size, "wv": cfg.hidden_size,
            "wo": cfg.num_heads * cfg.head_dim, "ffn_gate": cfg.hidden_size, "ffn_up": cfg.hidden_size,
            "ffn_down": cfg.intermediate_size}
    assert set(imp) == {(name, layer) for name in lens for layer in range(cfg.num_layers)}
    for (name, layer), v in imp.items():
        assert v.dtype == np.float32 and v.shape == (lens[name],), (name, layer, v.shape)
        assert np.all(np.isfinite(v)) and np.all(v > 0), (name, layer)
    # q/k/v share their input, so do gate/up
    np.testing.assert_array_equal(imp[("wq", 0)], imp[("wv", 0)])
    np.testing.assert_array_equal(imp[("ffn_gate", 2)], imp[("ffn_up", 2)])
    # RMSNorm output: mean square over columns ~ mean of the squared norm weights
    assert 0.1 < float(imp[("wq", 0)].mean()) < 10
    # the stats hook is off afterwards, and the same text gives the same statistics
    again = collect_importance(model, _text(), n_ctx=128, max_tokens=600)
    for k in imp:
        np.testing.assert_allclose(again[k], imp[k], rtol=1e-6)
    # token ids work as well as text; max_tokens is respected
    ids = model.tokenize(_text())[:600]
    np.testing.assert_allclose(collect_importance(model, ids, n_ctx=128)[("wo", 1)], imp[("wo", 1)], rtol=1e-6)
    other = collect_importance(model, _text(), n_ctx=128, max_tokens=300)
    assert not np.allclose(other[("wo", 1)], imp[("wo", 1)])


def test_collect_importance_bad_arguments(model):
    with pytest.raises(ValueError):
        collect_importance(model, "", n_ctx=128)  # too short (BOS only)
    with pytest.raises(ValueError):
        collect_importance(model, _text(), n_ctx=1)
    with pytest.raises(ValueError):
        collect_importance(model, _text(), max_tokens=0)


def test_save_load_importance(model, tmp_path):
    imp = collect_importance(model, _text(), n_ctx=64, max_tokens=200)
    path = str(tmp_path / "imatrix.npz")
    save_importance(path, imp)
    back = load_importance(path)
    assert set(back) == set(imp)
    for k in imp:
        np.testing.assert_array_equal(back[k], imp[k])
    assert resolve_importance(pyllm.default_model_path(), path).keys() == imp.keys()


def test_load_with_calibration(model, tmp_path):
    """pyllm.load(quant=..., calibration=text file | .npz | dict) quantizes with importance."""
    text = tmp_path / "cal.txt"
    text.write_text(_text()[:4000], encoding="utf-8")
    m = pyllm.load(quant="q4_0", n_threads=1, calibration=str(text))
    ids = model.tokenize("ROMEO:\nWhat say you?")
    lg = m.logits(ids)
    assert lg.shape == (len(ids), model.vocab_size) and np.all(np.isfinite(lg))
    imp = resolve_importance(pyllm.default_model_path(), str(text), n_threads=1)
    path = str(tmp_path / "cal.npz")
    save_importance(path, imp)
    for cal in (imp, path):
        np.testing.assert_array_equal(pyllm.load(quant="q4_0", n_threads=1, calibration=cal).logits(ids), lg)
    # the importance makes a difference against the plain search
    assert not np.array_equal(pyllm.load(quant="q4_0", n_threads=1).logits(ids), lg)
    with pytest.raises(ValueError, match="calibration"):
        pyllm.load(n_threads=1, calibration=str(text))  # nothing to quantize
