"""test_engine_bindings.py: the C core's lifecycle, thread-safety and bounds checks as seen through
pyllm._engine (issue 8): finalize runs once, set_isa on another thread never mixes ISAs inside one
forward, offsets and sizes that would overflow size_t are refused, thread counts and token ids are
checked before they reach C."""
from __future__ import annotations

import os
import re
import threading

import numpy as np
import pytest

import pyllm
from pyllm import _engine

ISAS = [isa for isa in ("scalar", "avx2", "avx512", "neon", "neon-dotprod", "neon-i8mm") if _engine.isa_supported(isa)]
PYX = os.path.join(os.path.dirname(os.path.abspath(_engine.__file__)), "_engine.pyx")


@pytest.fixture(autouse=True)
def restore_isa():
    before = _engine.get_isa()
    yield
    _engine.set_isa(before)


@pytest.fixture(scope="module")
def model():
    return pyllm.load(n_ctx=64)


# ---------------------------------------------------------------- a tiny hand-built model
CFG = dict(n_vocab=8, dim=32, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=16, hidden_dim=64, max_ctx=16,
           norm_eps=1e-5, rope_interleaved=False, sliding_window=0)


def tiny_model(seed=0):
    """An f32 CModel with every tensor set (not finalized) and its rope inverse frequencies."""
    rng = np.random.default_rng(seed)
    cm = _engine.CModel(**CFG)
    d, hd, hid, v = CFG["dim"], CFG["head_dim"], CFG["hidden_dim"], CFG["n_vocab"]
    q, kv = CFG["n_heads"] * hd, CFG["n_kv_heads"] * hd

    def put(name, layer, rows, cols, norm=False):
        w = (1.0 + 0.1 * rng.standard_normal((rows, cols)) if norm else 0.2 * rng.standard_normal((rows, cols)))
        cm.set_tensor(name, layer, 0, cols, rows, np.ascontiguousarray(w, dtype=np.float32))

    put("tok_embd", -1, v, d)
    put("output", -1, v, d)
    put("output_norm", -1, 1, d, norm=True)
    for name, rows, cols, norm in [("attn_norm", 1, d, True), ("wq", q, d, False), ("wk", kv, d, False),
                                   ("wv", kv, d, False), ("wo", d, q, False), ("ffn_norm", 1, d, True),
                                   ("ffn_gate", hid, d, False), ("ffn_up", hid, d, False),
                                   ("ffn_down", d, hid, False)]:
        put(name, 0, rows, cols, norm)
    inv_freq = 1.0 / (10000.0 ** (np.arange(0, hd, 2, dtype=np.float32) / hd))
    return cm, inv_freq


def run(cm, ids, n_threads=1):
    kv = _engine.KVCache(cm, CFG["max_ctx"])
    return _engine.Runner(cm).forward([kv], ids, np.arange(len(ids)), [0] * len(ids), np.arange(len(ids)),
                                      n_threads)


# ---------------------------------------------------------------- 1. finalize once
def test_second_finalize_is_an_error_and_changes_nothing():
    cm, inv_freq = tiny_model()
    cm.finalize(inv_freq)
    ids = [1, 5, 2, 7]
    before = run(cm, ids)
    # a second call used to allocate new rope tables / norm copies over the first ones (leaked)
    with pytest.raises(ValueError, match="already finalized"):
        cm.finalize(inv_freq)
    with pytest.raises(ValueError, match="already finalized"):
        cm.finalize(inv_freq * 2, attn_factor=0.5)  # would have rebuilt different rope tables
    np.testing.assert_array_equal(run(cm, ids), before)


def test_failed_finalize_can_be_retried():
    cm, inv_freq = tiny_model()
    bad = inv_freq.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="not finite"):
        cm.finalize(bad)
    with pytest.raises(ValueError, match="not finalized"):
        run(cm, [1])
    cm.finalize(inv_freq)
    ref, ref_inv = tiny_model()
    ref.finalize(ref_inv)
    np.testing.assert_array_equal(run(cm, [3, 1, 4]), run(ref, [3, 1, 4]))


def test_shipped_model_refuses_a_second_finalize(model):
    ids = [5, 17, 300, 2]
    before = model.logits(ids)
    with pytest.raises(ValueError, match="already finalized"):
        model._cmodel.finalize(model.config.rope_inv_freq())
    np.testing.assert_array_equal(model.logits(ids), before)


# ---------------------------------------------------------------- 3. set_isa while forwards run
def test_set_isa_on_another_thread_never_mixes_isas_in_one_forward(model):
    """Each forward reads the kernel table once: while a thread flips set_isa as fast as it can,
    every forward's logits must equal those of one ISA (computed beforehand), never a mixture."""
    if len(ISAS) < 2:
        pytest.skip("only one ISA on this CPU/build")
    ids = model.tokenize("To be, or not to be, that is the question:")[:16]
    refs = {}
    for isa in ISAS:
        _engine.set_isa(isa)
        refs[isa] = model.logits(ids)
        np.testing.assert_array_equal(model.logits(ids), refs[isa])  # deterministic per ISA
    distinct = {r.tobytes() for r in refs.values()}
    if len(distinct) < 2:
        pytest.skip("every ISA gives the same logits here: a mixture could not be told apart")

    stop = threading.Event()
    flips = [0]

    def flip():
        while not stop.is_set():
            for isa in ISAS:
                _engine.set_isa(isa)
                flips[0] += 1

    results = []
    th = threading.Thread(target=flip)
    th.start()
    try:
        for _ in range(40):
            results.append(model.logits(ids))
    finally:
        stop.set()
        th.join()
    assert flips[0] > len(results)  # the switches did land while forwards ran
    mixed = [i for i, r in enumerate(results) if r.tobytes() not in distinct]
    assert not mixed, f"forwards {mixed} match no single ISA's logits (ISAs mixed inside one forward)"


# ---------------------------------------------------------------- 4. offsets and sizes
HUGE_OFFSETS = [2**63, 2**64 - 1, 2**64 - 4, 2**64 - 64]


@pytest.mark.parametrize("tid", [0, 8])
@pytest.mark.parametrize("off", HUGE_OFFSETS)
def test_gemm_rejects_offsets_that_wrap(tid, off):
    n, nr, nc = 32, 2, 2
    w = _engine.from_float(tid, np.ones((nr, n), np.float32))
    a = _engine.from_float(_engine.act_type(tid), np.ones((nc, n), np.float32))
    assert _engine.gemm(tid, w, a, n, nr, nc).shape == (nc, nr)
    # off + len(w) wraps around to just below len(w): the old check passed and read before the buffer
    with pytest.raises(ValueError, match="too small"):
        _engine.gemm(tid, w, a, n, nr, nc, off, 0)
    with pytest.raises(ValueError, match="too small"):
        _engine.gemm(tid, w, a, n, nr, nc, 0, off)


def test_gemm_rejects_huge_row_counts_and_past_end_offsets():
    n = 32
    w = _engine.from_float(0, np.ones((2, n), np.float32))
    a = _engine.from_float(0, np.ones((2, n), np.float32))
    for nr, nc in [(2**31 - 1, 1), (1, 2**31 - 1), (3, 2), (2, 3)]:
        with pytest.raises(ValueError, match="too small"):
            _engine.gemm(0, w, a, n, nr, nc)
    for nr, nc in [(0, 1), (1, 0), (-1, 1), (1, -(2**31))]:
        with pytest.raises(ValueError, match="positive"):
            _engine.gemm(0, w, a, n, nr, nc)
    with pytest.raises(ValueError, match="too small"):
        _engine.gemm(0, w, a, n, 2, 2, 1, 0)  # one byte short
    with pytest.raises(ValueError, match="too small"):
        _engine.gemm(0, w, a, n, 1, 1, len(w) + 1, 0)  # offset past the end
    np.testing.assert_array_equal(_engine.gemm(0, w, a, n, 1, 2, 4 * n, 0), np.full((2, 1), n, np.float32))


@pytest.mark.parametrize("off", HUGE_OFFSETS)
def test_repack_rejects_offsets_that_wrap(off):
    n, nr = 64, 16
    w = _engine.from_float(8, np.ones((nr, n), np.float32))
    assert len(_engine.repack(8, w, nr, n)) == _engine.packed_group_bytes(8, n)
    with pytest.raises(ValueError, match="too small"):
        _engine.repack(8, w, nr, n, off)
    with pytest.raises(ValueError, match="too small"):
        _engine.repack(8, w, 2**31 - 1, n)
    with pytest.raises(ValueError, match="too small"):
        _engine.repack(8, w, nr, n, 1)


def test_gemm_packed_and_vec_dot_check_sizes():
    n, nr = 64, 16
    w = _engine.from_float(8, np.ones((nr, n), np.float32))
    wp = _engine.repack(8, w, nr, n)
    acts = _engine.pack_acts(np.ones((2, n), np.float32))
    np.testing.assert_allclose(_engine.gemm_packed(8, wp, acts, n, nr, 2), np.full((2, nr), n), rtol=1e-2)
    for nr_, nc in [(2**31 - 1, 1), (nr, 2**31 - 1), (17, 1), (nr, 3)]:
        with pytest.raises(ValueError, match="too small"):
            _engine.gemm_packed(8, wp, acts, n, nr_, nc)
    with pytest.raises(ValueError):
        _engine.gemm_packed(8, wp, acts, n, 0, 1)
    a = _engine.from_float(8, np.ones((1, n), np.float32))
    assert _engine.vec_dot(8, w, a, n) == pytest.approx(n, rel=1e-2)
    for bad_n in [2 * n, 2**31 - 32, -32, 0]:
        with pytest.raises(ValueError):
            _engine.vec_dot(8, w[: len(a)], a, bad_n)


def test_byte_counts_never_wrap():
    # f32 rows of 2**62 + 1 elements are 2**64 + 4 bytes: that used to come back as 4
    for n in [2**62 + 1, 2**62, 2**63 - 1]:
        with pytest.raises(ValueError, match="cannot hold"):
            _engine.row_bytes(0, n)
        with pytest.raises(ValueError, match="cannot hold"):
            _engine.to_float(0, b"\0" * 64, n)
    assert _engine.row_bytes(1, 2**63 - 1) == 2**64 - 2  # the largest that fits: exact
    with pytest.raises(ValueError, match="whole number of rows"):
        _engine.to_float(1, b"\0" * 64, 2**63 - 1)
    assert _engine.row_bytes(8, 2**63 - 32) == (2**63 - 32) // 32 * 34  # fits: exact
    assert _engine.packed_group_bytes(8, 2**62) == 0  # 2**57 blocks x 16 rows x 34 bytes > 2**64
    assert _engine.packed_group_bytes(2, 2**62) == 0
    nb = 2**63 // 32 - 1  # the most blocks an int64 n holds: the q8x row bytes still fit a size_t
    assert _engine.packed_act_row_bytes(nb * 32) == -(-nb * 34 // 64) * 64 + 3 * (-(-nb * 4 // 64) * 64)
    assert _engine.packed_act_row_bytes(-32) == 0 and _engine.packed_act_row_bytes(33) == 0
    assert _engine.packed_group_bytes(8, 64) > 0 and _engine.packed_act_row_bytes(64) > 0


# ---------------------------------------------------------------- 5. token ids are integers
def test_sequence_append_rejects_non_integer_ids(model):
    seq = model.sequence()
    for bad in ([1.5], [1, 2.0], [True], [np.float32(3)], np.array([1.5, 2.0]), np.array([True]),
                np.array([[1, 2]]), ["7"], [None]):
        with pytest.raises(TypeError, match="integer"):
            seq.append(bad)
        assert len(seq) == 0  # nothing was fed
    with pytest.raises(TypeError, match="1.5"):
        seq.append([3, 1.5])  # the message names the bad value
    with pytest.raises(TypeError, match="integer"):
        model.logits([2, 1.0])


def test_sequence_append_takes_ints_and_numpy_integers(model):
    ids = [5, 17, 300, 2]
    ref = model.logits(ids)
    for form in (np.array(ids, dtype=np.int64), np.array(ids, dtype=np.int32), np.array(ids, dtype=np.uint16),
                 [np.int64(i) for i in ids], tuple(ids), iter(ids)):
        np.testing.assert_array_equal(model.logits(form), ref)
    seq = model.sequence()
    seq.append(np.array(ids[:2], dtype=np.int32))
    seq.append([np.uint32(ids[2]), ids[3]])
    np.testing.assert_array_equal(seq.logits, ref[-1])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.sequence().append(np.array([model.vocab_size], dtype=np.int64))


def test_runner_forward_rejects_non_integer_batches():
    cm, inv_freq = tiny_model()
    cm.finalize(inv_freq)
    kv = _engine.KVCache(cm, 8)
    r = _engine.Runner(cm)
    ok = r.forward([kv], [1, 2], [0, 1], [0, 0], [1])
    np.testing.assert_array_equal(r.forward([kv], np.array([1, 2], np.int64), range(2), [0, 0], [1]), ok)
    for args in (([1.5, 2], [0, 1], [0, 0], [1]), ([1, 2], [0.0, 1.0], [0, 0], [1]),
                 ([1, 2], [0, 1], [0, 0], [True]), ([1, 2], [0, 1], np.array([0.0, 0.0]), [1])):
        with pytest.raises(TypeError, match="must be integers"):
            r.forward([kv], *args)
    # an id past int32 used to wrap (2**32 + 1 -> 1) into a valid token
    with pytest.raises(ValueError, match="int32"):
        r.forward([kv], np.array([2**32 + 1, 2], np.int64), [0, 1], [0, 0], [1])
    with pytest.raises(ValueError, match="int32"):
        r.forward([kv], [1, 2], [0, 2**40], [0, 0], [1])


# ---------------------------------------------------------------- 7. thread counts
def test_runner_forward_checks_n_threads():
    cm, inv_freq = tiny_model()
    cm.finalize(inv_freq)
    ref = run(cm, [1, 2, 3], n_threads=1)
    for n in (0, 2, np.int64(3), _engine.MAX_THREADS):
        np.testing.assert_array_equal(run(cm, [1, 2, 3], n_threads=n), ref)
    for n in (2**40, 2**31, _engine.MAX_THREADS + 1, -1, -(2**40)):
        with pytest.raises(ValueError, match="n_threads"):
            run(cm, [1, 2, 3], n_threads=n)
    for n in (1.5, True, "2", None):
        with pytest.raises(TypeError, match="n_threads"):
            run(cm, [1, 2, 3], n_threads=n)


def test_quantize_checks_n_threads():
    x = np.ones((2, 32), np.float32)
    ref = _engine.quantize(8, x, 1)
    np.testing.assert_array_equal(_engine.quantize(8, x, 0), ref)
    np.testing.assert_array_equal(_engine.quantize_weighted(8, x, None, 2), _engine.quantize_weighted(8, x))
    for fn in (_engine.quantize, lambda t, a, n: _engine.quantize_weighted(t, a, None, n)):
        with pytest.raises(ValueError, match="n_threads"):
            fn(8, x, 2**40)
        with pytest.raises(ValueError, match="n_threads"):
            fn(8, x, -1)
        with pytest.raises(TypeError, match="n_threads"):
            fn(8, x, 2.0)


def test_model_with_huge_n_threads_is_a_clear_error(model):
    saved = model.n_threads
    try:
        model.n_threads = 2**40
        with pytest.raises(ValueError, match="n_threads"):
            model.logits([1, 2])
    finally:
        model.n_threads = saved


# ---------------------------------------------------------------- 6. sizes come from the headers
def test_binding_sizes_come_from_the_header():
    """_engine.pyx repeats no array size of the C headers as a number (a header change would silently
    mismatch the struct layout or an error buffer)."""
    src = open(PYX).read() if os.path.exists(PYX) else None
    if src is None:
        pytest.skip("_engine.pyx not next to the built module")
    decls = re.findall(r"^\s*(?:cdef\s+)?[\w ]+\s+\w+\[(\w+)\]\s*$", src, flags=re.M)
    assert decls, "no array declarations found: the pattern is stale"
    numeric = [d for d in decls if d.isdigit()]
    assert not numeric, f"array sizes written as numbers in _engine.pyx: {numeric}"
    assert "types[PL_TYPE_COUNT]" in src and "buf[PL_ERRMSG_LEN]" in src
    assert _engine.MAX_THREADS == 4096
