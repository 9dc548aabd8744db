"""test_kernels.py: every SIMD kernel set (avx2, avx512; on ARM neon, neon-dotprod, neon-i8mm) against the scalar reference, on shapes
that are not multiples of the tile sizes and on unaligned data, plus whole-model logits with
each PYLLM_ISA.

Tolerances: conversions and quantization are integer/bit operations and must be bit-identical.
Dot products differ from the scalar reference only in summation order (lane-wise partial sums,
FMA), so the bound is 1e-5 of sum |w_i * a_i| (float32 has ~6e-8 relative rounding per add; over
a few thousand terms the worst case stays well under 1e-5 of the absolute sum)."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from pyllm import _engine

ISAS = [isa for isa in ("avx2", "avx512", "neon", "neon-dotprod", "neon-i8mm") if _engine.isa_supported(isa)]
FLOAT_TYPES = {"f32": 0, "f16": 1, "bf16": 30}
QUANT_TYPES = {"q8_0": 8, "q4_0": 2}
FLOAT_N = [1, 3, 7, 15, 16, 17, 31, 33, 100, 257, 2053]
QUANT_N = [32, 96, 224, 1056]
ROWS = [(1, 1), (3, 2), (4, 4), (5, 7), (17, 9), (33, 3)]


@pytest.fixture(autouse=True)
def restore_isa():
    before = _engine.get_isa()
    yield
    _engine.set_isa(before)


def test_some_simd_path_is_tested():
    if os.uname().machine in ("x86_64", "AMD64"):
        assert ISAS, "an x86-64 machine without AVX2 is unexpected here"


def with_isa(isa, fn, *args):
    _engine.set_isa(isa)
    return fn(*args)


def rows_of(type_id, x):
    return _engine.from_float(type_id, np.ascontiguousarray(x, dtype=np.float32))


def test_unknown_isa_rejected():
    with pytest.raises(ValueError, match="unknown ISA"):
        _engine.set_isa("sse9")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", list(FLOAT_TYPES) + list(QUANT_TYPES))
def test_conversions_bit_identical(isa, name):
    tid = {**FLOAT_TYPES, **QUANT_TYPES}[name]
    rng = np.random.default_rng(tid)
    for n in QUANT_N if name in QUANT_TYPES else FLOAT_N:
        x = (rng.standard_normal((5, n)) * rng.uniform(0.01, 10, (5, 1))).astype(np.float32)
        x[0, : min(n, 4)] = [0.5, -0.5, 2.5, -1.5][: min(n, 4)]  # rounding ties
        if n >= 32:
            x[1, :32] = 0.0  # all-zero block
        ref = with_isa("scalar", rows_of, tid, x)
        got = with_isa(isa, rows_of, tid, x)
        assert got == ref, f"{name} n={n}: from_float differs"
        back_ref = with_isa("scalar", _engine.to_float, tid, ref, n)
        back = with_isa(isa, _engine.to_float, tid, ref, n)
        np.testing.assert_array_equal(back, back_ref)
        # the threaded quantizer equals the row-by-row reference
        np.testing.assert_array_equal(with_isa(isa, _engine.quantize, tid, x, 2), np.frombuffer(ref, np.uint8))


def gemm_case(isa, tid, n, nr, nc, rng, offset):
    act = _engine.act_type(tid)
    w = rng.standard_normal((nr, n)).astype(np.float32)
    a = rng.standard_normal((nc, n)).astype(np.float32)
    wb = b"\x00" * offset + with_isa("scalar", rows_of, tid, w)
    ab = b"\x00" * offset + with_isa("scalar", rows_of, act, a)
    ref = with_isa("scalar", _engine.gemm, tid, wb, ab, n, nr, nc, offset, offset)
    got = with_isa(isa, _engine.gemm, tid, wb, ab, n, nr, nc, offset, offset)
    # scale of the sum: sum |w_i a_i| over the dequantized operands
    wd = with_isa("scalar", _engine.to_float, tid, wb[offset:], n)
    ad = with_isa("scalar", _engine.to_float, act, ab[offset:], n)
    bound = 1e-5 * (np.abs(ad) @ np.abs(wd).T) + 1e-6
    assert np.all(np.abs(got - ref) <= bound), f"max err {np.abs(got - ref).max()}"
    return ref, wd, ad


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", list(FLOAT_TYPES) + list(QUANT_TYPES))
def test_gemm_and_vec_dot_match_scalar(isa, name):
    tid = {**FLOAT_TYPES, **QUANT_TYPES}[name]
    rng = np.random.default_rng(100 + tid)
    for n in QUANT_N if name in QUANT_TYPES else FLOAT_N:
        for nr, nc in ROWS:
            gemm_case(isa, tid, n, nr, nc, rng, offset=3 if name != "f32" else 4)  # odd byte offsets


@pytest.mark.parametrize("name", list(FLOAT_TYPES) + list(QUANT_TYPES))
def test_scalar_gemm_is_the_math(name):
    """The reference itself: dot products of the dequantized operands (integer sums for quant types)."""
    tid = {**FLOAT_TYPES, **QUANT_TYPES}[name]
    rng = np.random.default_rng(7)
    n = 96
    ref, wd, ad = gemm_case("scalar", tid, n, 5, 3, rng, offset=0)
    np.testing.assert_allclose(ref, ad.astype(np.float64) @ wd.T.astype(np.float64), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("isa", ISAS)
def test_fp32_helpers(isa):
    rng = np.random.default_rng(3)
    for n in FLOAT_N:
        a, b = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
        ref = with_isa("scalar", _engine.dot_f32, a, b)
        got = with_isa(isa, _engine.dot_f32, a, b)
        assert abs(got - ref) <= 1e-5 * float(np.abs(a * b).sum()) + 1e-6
        y_ref, y = b.copy(), b.copy()
        with_isa("scalar", _engine.axpy_f32, 0.37, a, y_ref)
        with_isa(isa, _engine.axpy_f32, 0.37, a, y)
        np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("isa", ISAS)
def test_gemm_nn_against_scalar(isa):
    """attention's P x V: values read with a row stride (as in the KV cache), any m, n, k"""
    rng = np.random.default_rng(4)
    for m, n, k in [(1, 1, 1), (8, 64, 1), (8, 64, 37), (3, 17, 5), (5, 100, 9), (4, 128, 300), (2, 24, 2), (7, 33, 64)]:
        a = rng.random((m, k), dtype=np.float32)  # probabilities are >= 0
        cache = rng.standard_normal((k, n + 40), dtype=np.float32)
        b = cache[:, 7:7 + n]  # row stride n + 40
        ref = with_isa("scalar", _engine.gemm_nn_f32, a, b)
        got = with_isa(isa, _engine.gemm_nn_f32, a, b)
        bound = 1e-5 * (np.abs(a) @ np.abs(b)) + 1e-7  # summation order only (see the module docstring)
        assert np.all(np.abs(got - ref) <= bound), (m, n, k)
        np.testing.assert_allclose(ref, a.astype(np.float64) @ b.astype(np.float64), rtol=1e-5, atol=1e-5)
    a, b = np.ones((2, 3), np.float32), np.ones((3, 4), np.float32)
    for bad in ((a, b[:2]), (a[:, ::2], b[:2]), (a[::-1], b), (a, np.ones((3, 4), np.float64))):
        with pytest.raises(ValueError):
            _engine.gemm_nn_f32(*bad)


@pytest.mark.parametrize("isa", ["scalar"] + ISAS)
def test_softmax_and_swiglu_accuracy(isa):
    """Against float64. The SIMD exp is a polynomial, the scalar one libm's expf; both within a few
    ulp. softmax: 1e-5 relative, set by the normalizing sum of up to 4099 float32 terms (rounding
    grows with n; the scalar reference's sequential sum measures 6e-6, the SIMD lane sums 3e-6).
    swiglu: 5e-7 relative (exp, add, divide, multiply: about 1 ulp = 6e-8 each, measured 1.7e-7)."""
    rng = np.random.default_rng(5)
    for n in FLOAT_N + [1024, 4099]:
        x = (rng.standard_normal(n) * 6).astype(np.float32)
        for scale in (1.0, 0.125):
            z = x.astype(np.float64) * np.float32(scale)
            exact = np.exp(z - z.max())
            exact /= exact.sum()
            got = with_isa(isa, _engine.softmax_f32, x, scale)
            np.testing.assert_allclose(got, exact, rtol=1e-5, atol=0)
        g, u = (rng.standard_normal(n) * 4).astype(np.float32), rng.standard_normal(n).astype(np.float32)
        exact = g.astype(np.float64) / (1.0 + np.exp(-g.astype(np.float64))) * u
        got = with_isa(isa, _engine.swiglu_f32, g, u)
        np.testing.assert_allclose(got, exact, rtol=5e-7, atol=0)
    # extremes: far-below entries vanish, a huge logit takes all; silu saturates without NaN
    x = np.array([0.0, -200.0, -1e30, 50.0, -np.inf, 3.0], dtype=np.float32)
    got = with_isa(isa, _engine.softmax_f32, x, 1.0)
    np.testing.assert_allclose(got, [np.exp(-50.0), 0, 0, 1.0, 0, np.exp(-47.0)], rtol=1e-6, atol=0)
    g = np.array([-1e4, -100.0, -88.5, -20.0, 0.0, 88.5, 1e4, 1e30], dtype=np.float32)
    got = with_isa(isa, _engine.swiglu_f32, g, np.ones_like(g))
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got[3:], g[3:] / (1.0 + np.exp(-g[3:].astype(np.float64))), rtol=1e-6, atol=0)
    assert np.all(np.abs(got[:3]) < 1e-30)


def test_model_logits_same_on_every_isa(checkpoint):
    """PYLLM_ISA forces a kernel set for a whole process; every set gives the scalar logits."""
    path = checkpoint("mistral", "bfloat16")
    code = (
        "import sys, numpy as np, pyllm\n"
        "m = pyllm.load(sys.argv[1], n_ctx=128, quant=sys.argv[3] if sys.argv[3] != 'none' else None)\n"
        "ids = list(range(3, 80, 2))\n"
        "np.save(sys.argv[2], m.logits(ids))\n"
    )
    out = {}
    for isa in ["scalar"] + ISAS:
        for quant in ("none", "q8_0", "q4_0"):
            f = os.path.join(os.path.dirname(path), f"logits-{isa}-{quant}.npy")
            env = {**os.environ, "PYLLM_ISA": isa}
            subprocess.run([sys.executable, "-c", code, path, f, quant], check=True, env=env)
            out[isa, quant] = np.load(f)
    for (isa, quant), lg in out.items():
        ref = out["scalar", quant]
        scale = max(1.0, float(np.abs(ref).max()))
        assert np.abs(lg - ref).max() <= 1e-4 * scale, (isa, quant)


def test_bad_pyllm_isa_is_reported(checkpoint):
    env = {**os.environ, "PYLLM_ISA": "neon9"}
    r = subprocess.run([sys.executable, "-c", "import pyllm; pyllm.load()"], env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "unknown ISA" in r.stderr
