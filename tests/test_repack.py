"""test_repack.py: weights repacked at load (csrc/repack.c, layout in csrc/tensor_types.h).

- the packed gemm of every ISA (Q4_0, Q8_0, and Q4_1 / Q5_0 / Q5_1 / IQ4_NL: csrc/legacy_packed.h, their
  layout checked byte by byte) is bit-identical to the scalar reference of the unpacked layout
  (integer block dots are exact and every lane sums its row's blocks in the reference's order
  with its roundings), on odd shapes, unaligned sources and extreme bytes (-128 included);
- whole models give the same logits with and without repacking (PYLLM_REPACK=0): bit for bit on the
  scalar ISA, within test_kernels' whole-model tolerance on the SIMD ones, and on every ISA,
  with an ISA switch after loading, for Hugging Face quantize-on-load and for mmapped GGUF files,
  tied embeddings and a last row group that is not full;
- an mmapped GGUF's repacked tensors leave the file's pages (madvise), so the weights are not held
  twice, and the peak RSS of a load stays within file size + KV cache + 100 MB."""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pyllm import _engine

ISAS = ["scalar"] + [isa for isa in ("avx2", "avx512", "neon", "neon-dotprod", "neon-i8mm") if _engine.isa_supported(isa)]
TYPES = {"q4_0": 2, "q8_0": 8}
QB = {2: 16, 8: 32}  # quant bytes per block
SHAPES = [(1, 1), (3, 2), (15, 1), (16, 1), (17, 9), (33, 3), (64, 1), (70, 13), (5, 17)]
NS = [32, 96, 224, 1056]


@pytest.fixture(autouse=True)
def restore_isa():
    before = _engine.get_isa()
    yield
    _engine.set_isa(before)


def raw_weights(tid, nr, n, rng, extreme=False):
    """nr rows of random blocks: any quant byte (Q8_0: -128 too), fp16 scales of both signs."""
    bs = 2 + QB[tid]
    blocks = rng.integers(0, 256, (nr, n // 32, bs), dtype=np.uint8)
    if extreme:
        blocks[..., 2:] = np.where(rng.random(blocks[..., 2:].shape) < 0.5, 0x80 if tid == 8 else 0x00,
                                   0x7F if tid == 8 else 0xFF)
    d = (rng.uniform(1e-3, 0.1, (nr, n // 32)) * rng.choice([-1, 1], (nr, n // 32))).astype(np.float16)
    blocks[..., :2] = d.view(np.uint8).reshape(nr, n // 32, 2)
    return blocks.reshape(-1)


def q8x_rows(q8: bytes, nc: int, n: int) -> np.ndarray:
    """The packed-gemm activation rows built in numpy from Q8_0 rows (the layout of tensor_types.h)."""
    nb = n // 32
    r64 = lambda x: (x + 63) // 64 * 64
    stride = r64(nb * 34) + 3 * r64(nb * 4)
    out = np.zeros(nc * stride + 64, np.uint8)
    off = (-out.ctypes.data) % 64
    out = out[off:off + nc * stride]
    src = np.frombuffer(q8, np.uint8).reshape(nc, nb, 34)
    for j in range(nc):
        row = out[j * stride:(j + 1) * stride]
        row[:nb * 34] = src[j].reshape(-1)
        s = src[j, :, 2:].view(np.int8).astype(np.int32).sum(axis=1)
        base = r64(nb * 34)
        row[base:base + nb * 4] = src[j, :, :2].copy().view(np.float16).astype(np.float32).reshape(-1).view(np.uint8)
        row[base + r64(nb * 4):base + r64(nb * 4) + nb * 4] = (-8 * s).astype(np.int32).view(np.uint8)
        row[base + 2 * r64(nb * 4):base + 2 * r64(nb * 4) + nb * 4] = (-128 * s).astype(np.int32).view(np.uint8)
    return out


def reference(tid, w, a_q8, n, nr, nc):
    _engine.set_isa("scalar")
    return _engine.gemm(tid, bytes(w), bytes(a_q8), n, nr, nc)


def gemm_cases(tid, weights, rng):
    """(n, nr, nc, w, x, ref) for each n of NS and (nr, nc) of SHAPES: w = weights(nr, n), x = nc random
    activation rows at scales 0.1 .. 10, ref = the scalar table's unpacked gemm of w and x's Q8_0 rows
    (the scalar table is left set)."""
    for n in NS:
        for nr, nc in SHAPES:
            w = weights(nr, n)
            x = (rng.standard_normal((nc, n)) * rng.uniform(0.1, 10, (nc, 1))).astype(np.float32)
            yield n, nr, nc, w, x, reference(tid, w, _engine.from_float(8, x), n, nr, nc)


@pytest.mark.parametrize("name", list(TYPES))
def test_layout(name):
    """Group bytes, the documented byte positions (blocks in pairs: 64 bytes of scales, then the
    two blocks' quants), zero padding of a partial group and of an odd block count's last pair."""
    tid = TYPES[name]
    rng = np.random.default_rng(1)
    for n, nr in ((96, 5), (128, 16)):
        nb = n // 32
        w = raw_weights(tid, nr, n, rng)
        gb = _engine.packed_group_bytes(tid, n)
        pair = 64 + 32 * QB[tid]
        assert gb == (nb + 1) // 2 * 64 + nb * 16 * QB[tid] and gb % 64 == 0
        assert gb == 16 * _engine.row_bytes(tid, n) or nb % 2  # same size as the rows it replaces (nb even)
        p = _engine.repack(tid, w, nr, n)
        assert p.shape == (gb,) and p.ctypes.data % 64 == 0
        blocks = w.reshape(nr, nb, 2 + QB[tid])
        x = 0x80 if tid == 8 else 0
        for r in range(16):
            for b in range(nb):
                d_off = b // 2 * pair + 32 * (b % 2) + 2 * r
                q_off = b // 2 * pair + 64 + (b % 2) * 16 * QB[tid] + 4 * r
                d = p[d_off:d_off + 2]
                q = np.concatenate([p[q_off + 64 * v:][:4] for v in range(QB[tid] // 4)])
                if r < nr:
                    assert bytes(d) == bytes(blocks[r, b, :2])
                    assert bytes(q) == bytes(blocks[r, b, 2:] ^ x)
                else:
                    assert not d.any() and not q.any()
        if nb % 2:  # the last pair's second half of scales is padding
            assert not p[(nb // 2) * pair + 32:(nb // 2) * pair + 64].any()


def test_pack_acts_layout():
    rng = np.random.default_rng(2)
    for n in NS:
        x = rng.standard_normal((3, n)).astype(np.float32)
        x[0, :32] = 0.0
        x[1, :32], x[2, -32:] = 3.0, -3.0  # blocks of +127 / -127: the extreme block sums
        for isa in ISAS:
            _engine.set_isa(isa)
            got = _engine.pack_acts(x)
            assert got.shape == (3 * _engine.packed_act_row_bytes(n),)
            np.testing.assert_array_equal(got, q8x_rows(_engine.from_float(8, x), 3, n))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", list(TYPES))
def test_packed_gemm_equals_reference(isa, name):
    tid = TYPES[name]
    rng = np.random.default_rng(10 + tid)
    for n, nr, nc, w, x, ref in gemm_cases(tid, lambda nr, n: raw_weights(tid, nr, n, rng), rng):
        src = np.concatenate([np.zeros(3, np.uint8), w])  # an odd source offset
        _engine.set_isa(isa)
        p = _engine.repack(tid, src, nr, n, 3)
        got = _engine.gemm_packed(tid, p, _engine.pack_acts(x), n, nr, nc)
        np.testing.assert_array_equal(got, ref, err_msg=f"{name} {isa} n={n} nr={nr} nc={nc}")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", list(TYPES))
def test_packed_gemm_extreme_bytes(isa, name):
    """Weights and activations at the ends of their ranges (Q8_0 -128 on both sides): the unsigned
    offsets and their corrections stay exact. Activations -127 / 127 take the AVX2 sign-trick kernels
    (whose pair sums then reach 2 x 128 x 127); a -128 in any row of a call takes the other ones."""
    tid = TYPES[name]
    rng = np.random.default_rng(20 + tid)
    for (n, nr, nc), lo in itertools.product(((32, 16, 1), (1056, 33, 3), (224, 17, 9)), (0x80, 0x81)):
        w = raw_weights(tid, nr, n, rng, extreme=True)
        a = rng.integers(0, 256, (nc, n // 32, 34), dtype=np.uint8)
        a[..., 2:] = np.where(rng.random(a[..., 2:].shape) < 0.5, lo, 0x7F)
        a[..., :2] = np.full((nc, n // 32), 0.01, np.float16).view(np.uint8).reshape(nc, n // 32, 2)
        a_q8 = a.reshape(-1).tobytes()
        ref = reference(tid, w, a_q8, n, nr, nc)
        _engine.set_isa(isa)
        got = _engine.gemm_packed(tid, _engine.repack(tid, w, nr, n), q8x_rows(a_q8, nc, n), n, nr, nc)
        np.testing.assert_array_equal(got, ref)



# ------------------------------------------- Q4_1 / Q5_0 / Q5_1 / IQ4_NL (csrc/legacy_packed.h)
# name -> (type id, block bytes, offsets of the fp16 d and m (None: no m), of qh (None: no qh), of qs)
LEGACY = {"q4_1": (3, 20, 0, 2, None, 4), "q5_0": (6, 22, 0, None, 2, 6), "q5_1": (7, 24, 0, 2, 4, 8),
          "iq4_nl": (20, 18, 0, None, None, 2)}


def legacy_weights(name, nr, n, rng, extreme=False):
    """nr rows of random blocks of a legacy type: any quant / qh bits, fp16 d and m of both signs; with
    extreme, every nibble 0 or 15 and every qh word all zeros or all ones."""
    tid, bs, od, om, oqh, oqs = LEGACY[name]
    nb = n // 32
    blocks = rng.integers(0, 256, (nr, nb, bs), dtype=np.uint8)
    if extreme:
        blocks[..., oqs:] = np.where(rng.random(blocks[..., oqs:].shape) < 0.5, 0x00, 0xFF)
        if oqh is not None:
            blocks[..., oqh:oqh + 4] = np.where(rng.random((nr, nb, 1)) < 0.5, 0x00, 0xFF)
    for o in (od, om):
        if o is not None:
            v = (rng.uniform(1e-3, 0.1, (nr, nb)) * rng.choice([-1, 1], (nr, nb))).astype(np.float16)
            blocks[..., o:o + 2] = v.view(np.uint8).reshape(nr, nb, 2)
    return blocks.reshape(-1)


def legacy_offsets(name, b):
    """(d, m, qh', qs) byte offsets of block b in a packed group: the layout of legacy_packed.h"""
    if name in ("q4_1", "q5_1"):
        rec = 320 if name == "q4_1" else 384
        d = b * rec
        return d, d + 32, (d + 64 if name == "q5_1" else None), d + (64 if name == "q4_1" else 128)
    body = 320 if name == "q5_0" else 256
    pair = 64 + 2 * body
    base = b // 2 * pair + 64 + (b % 2) * body
    return b // 2 * pair + 32 * (b % 2), None, (base if name == "q5_0" else None), base + (64 if name == "q5_0" else 0)


def qh_prime(qh: int) -> int:
    """qh' of legacy_packed.h: bit v of byte i = bit 4v + i of qh, bit 4 + v of byte i = bit 16 + 4v + i"""
    o = 0
    for i in range(4):
        for v in range(4):
            o |= ((qh >> (4 * v + i)) & 1) << (8 * i + v)
            o |= ((qh >> (16 + 4 * v + i)) & 1) << (8 * i + 4 + v)
    return o


@pytest.mark.parametrize("name", list(LEGACY))
def test_legacy_layout(name):
    """Group bytes (the size of the rows replaced; Q5_0 / IQ4_NL with an odd block count: 32 bytes of
    scale padding), the documented positions of d, m, qh' and the qs words, zero rows past the end, and
    that the dequantized weights read back from the packed group are the source's."""
    tid, bs, od, om, oqh, oqs = LEGACY[name]
    rng = np.random.default_rng(3)
    _engine.set_isa("scalar")  # the layout of every table; NEON tables do not repack these types
    for n, nr in ((96, 5), (128, 16), (32, 1)):
        nb = n // 32
        gb = _engine.packed_group_bytes(tid, n)
        paired = name in ("q5_0", "iq4_nl")
        assert gb == (nb + 1) // 2 * 64 + nb * (16 * bs - 32) if paired else gb == 16 * bs * nb
        assert gb % 64 == 0 and _engine.packed_group_bytes(tid, n + 1) == 0 and _engine.packed_group_bytes(tid, 0) == 0
        w = legacy_weights(name, nr, n, rng)
        p = _engine.repack(tid, w, nr, n)
        assert p.shape == (gb,)
        blocks = w.reshape(nr, nb, bs)
        for b in range(nb):
            d, m, qh, qs = legacy_offsets(name, b)
            for r in range(16):
                got_d = bytes(p[d + 2 * r:d + 2 * r + 2])
                got_q = np.concatenate([p[qs + 64 * v + 4 * r:][:4] for v in range(4)])
                if r < nr:
                    assert got_d == bytes(blocks[r, b, od:od + 2])
                    if m is not None:
                        assert bytes(p[m + 2 * r:m + 2 * r + 2]) == bytes(blocks[r, b, om:om + 2])
                    assert bytes(got_q) == bytes(blocks[r, b, oqs:oqs + 16])
                    if qh is not None:
                        src = int.from_bytes(bytes(blocks[r, b, oqh:oqh + 4]), "little")
                        assert int.from_bytes(bytes(p[qh + 4 * r:qh + 4 * r + 4]), "little") == qh_prime(src)
                else:
                    assert not any(got_d) and not got_q.any()
                    assert qh is None or not p[qh + 4 * r:qh + 4 * r + 4].any()
        if paired and nb % 2:
            pair = 64 + 2 * (16 * bs - 32)
            assert not p[nb // 2 * pair + 32:nb // 2 * pair + 64].any()


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", list(LEGACY))
def test_legacy_packed_gemm_equals_reference(isa, name):
    """Every ISA's packed gemm (decode and prefill tiles) equals the scalar unpacked vec_dot bit for bit,
    on odd shapes and an odd source offset; a row's result does not depend on the batch."""
    tid = LEGACY[name][0]
    rng = np.random.default_rng(30 + tid)
    for n, nr, nc, w, x, ref in gemm_cases(tid, lambda nr, n: legacy_weights(name, nr, n, rng), rng):
        # packed with the scalar table's repack (one layout for all tables; NEON tables do not repack
        # these types at load, but run a weight packed under another table; gemm_cases left the scalar
        # table set)
        p = _engine.repack(tid, np.concatenate([np.zeros(3, np.uint8), w]), nr, n, 3)
        _engine.set_isa(isa)
        acts = _engine.pack_acts(x, tid)
        assert acts.shape == (nc * _engine.packed_act_row_bytes(n),)  # Q4_0's q8x rows
        got = _engine.gemm_packed(tid, p, acts, n, nr, nc)
        np.testing.assert_array_equal(got, ref, err_msg=f"{name} {isa} n={n} nr={nr} nc={nc}")
        one = _engine.gemm_packed(tid, p, acts[-len(acts) // nc:], n, nr, 1)
        np.testing.assert_array_equal(one, ref[-1:])


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", list(LEGACY))
def test_legacy_packed_gemm_extreme_bytes(isa, name):
    """Nibbles 0 / 15, fifth bits all set or clear, activations -128 / 127 (int16 partial sums of the
    AVX2 kernels at their bound): still the reference, and the values are the dequantized weights'."""
    tid = LEGACY[name][0]
    rng = np.random.default_rng(40 + tid)
    for n, nr, nc in ((32, 16, 1), (1056, 33, 3), (224, 17, 9), (96, 16, 6)):
        w = legacy_weights(name, nr, n, rng, extreme=True)
        a = rng.integers(0, 256, (nc, n // 32, 34), dtype=np.uint8)
        a[..., 2:] = np.where(rng.random(a[..., 2:].shape) < 0.5, 0x80, 0x7F)
        a[..., :2] = np.full((nc, n // 32), 0.01, np.float16).view(np.uint8).reshape(nc, n // 32, 2)
        a_q8 = a.reshape(-1).tobytes()
        ref = reference(tid, w, a_q8, n, nr, nc)
        # the reference is the math: float64 sums of the dequantized weights x activations
        _engine.set_isa("scalar")
        wf = _engine.to_float(tid, w.tobytes(), n).astype(np.float64)
        af = a[..., 2:].view(np.int8).reshape(nc, n).astype(np.float64) * float(np.float16(0.01))
        want = af @ wf.T
        assert np.all(np.abs(ref - want) <= 1e-4 * (np.abs(af) @ np.abs(wf).T) + 1e-6)
        p = _engine.repack(tid, w, nr, n)  # the scalar table's (see above)
        _engine.set_isa(isa)
        got = _engine.gemm_packed(tid, p, q8x_rows(a_q8, nc, n), n, nr, nc)
        np.testing.assert_array_equal(got, ref, err_msg=f"{name} {isa} n={n} nr={nr} nc={nc}")


# ---------------------------------------------------------------- whole models
LOGITS = r"""
import json, os, sys, numpy as np, pyllm
from pyllm import _engine
path, quant, out = sys.argv[1], sys.argv[2], sys.argv[3]
m = pyllm.load(path, n_ctx=128, quant=None if quant == 'none' else quant)
cm = m._cmodel
info = {'wq': cm.packed_bytes('wq', 0), 'ffn_up': cm.packed_bytes('ffn_up', 1), 'output': cm.packed_bytes('output')}
ids = list(range(3, 60, 2))
res = {'prefill': m.logits(ids)}
seq = m.sequence()
seq.append(ids[:5])
res['decode'] = np.stack([seq.append([t]) for t in ids[5:9]])
if os.environ.get('SWITCH'):
    _engine.set_isa(os.environ['SWITCH'])
    res['switched'] = m.logits(ids)
np.savez(out, **res)
print(json.dumps(info))
"""


def assert_logits(got, ref, isa, what):
    """Exact on the scalar ISA (the packed gemm does the unpacked reference's arithmetic); on SIMD
    ISAs the other kernels (attention, float weights) sum in their own order, so a last-bit change
    can flip an activation's Q8_0 rounding: the tolerance of test_kernels' whole-model test."""
    if isa == "scalar":
        np.testing.assert_array_equal(got, ref, err_msg=what)
    else:
        assert np.abs(got - ref).max() <= 1e-4 * max(1.0, float(np.abs(ref).max())), what


def run_logits(tmp_path, path, quant, isa, repack, switch=None):
    out = str(tmp_path / f"lg-{isa}-{repack}-{quant}.npz")
    env = {**os.environ, "PYLLM_ISA": isa, "PYLLM_REPACK": "1" if repack else "0"}
    if switch:
        env["SWITCH"] = switch
    r = subprocess.run([sys.executable, "-c", LOGITS, path, quant, out], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return dict(np.load(out)), json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("quant", ["q4_0", "q8_0"])
def test_model_logits_with_and_without_repack(checkpoint, tmp_path, quant):
    """mistral (GQA, sliding window): packed logits == unpacked (scalar reference) logits, for prefill
    and decode, on every ISA, and after switching a loaded (repacked) model to the scalar ISA."""
    path = checkpoint("mistral", "bfloat16")
    ref, info0 = run_logits(tmp_path, path, quant, "scalar", False)
    assert info0 == {"wq": 0, "ffn_up": 0, "output": 0}
    for isa in ISAS:
        got, info = run_logits(tmp_path, path, quant, isa, True, switch="scalar" if isa != "scalar" else None)
        assert info["wq"] > 0 and info["ffn_up"] > 0 and info["output"] > 0, info
        for k in ("prefill", "decode"):
            assert_logits(got[k], ref[k], isa, f"{isa} {k}")
        if "switched" in got:
            np.testing.assert_array_equal(got["switched"], ref["prefill"])


def test_model_partial_row_group_and_tied_embeddings(tmp_path):
    """llama3 shape with tied embeddings (the output is repacked, the token embedding still reads the
    same buffer) and ffn_gate/ffn_up of 200 rows (a last row group of 8)."""
    sys.path.insert(0, os.path.dirname(__file__))
    from conftest import build_checkpoint

    path = build_checkpoint("llama3", "float32", str(tmp_path / "ck"), intermediate_size=200)
    for quant in ("q4_0", "q8_0"):
        for isa in ISAS:
            # ffn_down (200 columns) stays F16 here; its SIMD kernels round differently from the
            # scalar ones by enough to flip activations: compare with the same ISA unpacked
            ref, _ = run_logits(tmp_path, path, quant, isa, False)
            got, info = run_logits(tmp_path, path, quant, isa, True)
            assert info["ffn_up"] > 0 and info["output"] > 0
            for k in ("prefill", "decode"):
                assert_logits(got[k], ref[k], isa, f"{quant} {isa} {k}")


def test_gguf_tied_embeddings(checkpoint, tmp_path):
    """llama3 GGUF (q8_0, tied): the LM head is repacked from the file mapping and its pages dropped,
    while the token embedding keeps reading rows of the same bytes from the file."""
    from pyllm.gguf_export import export_gguf

    gguf = str(tmp_path / "tied-q8_0.gguf")
    export_gguf(checkpoint("llama3", "float32"), gguf, "q8_0")
    ref, info0 = run_logits(tmp_path, gguf, "none", "scalar", False)
    got, info = run_logits(tmp_path, gguf, "none", "scalar", True)
    assert info0["output"] == 0 and info["output"] > 0 and info["wq"] > 0
    for k in ("prefill", "decode"):
        np.testing.assert_array_equal(got[k], ref[k])


GGUF_RUN = r"""
import json, os, resource, sys, numpy as np
path = sys.argv[1]
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
import pyllm
m = pyllm.load(path, n_ctx=64)
ids = list(range(3, 40, 3))
lg = m.logits(ids)
def mapped_rss(p):
    tot, cur = 0, None
    with open('/proc/self/smaps') as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and '-' in parts[0]:
                cur = parts[5]
            elif line.startswith('Rss:') and cur == p:
                tot += int(parts[1]) * 1024
    return tot
cm = m._cmodel
print(json.dumps(dict(file_rss=mapped_rss(os.path.realpath(path)), peak=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      rss0=rss0, packed=cm.packed_bytes('wq', 0), lg=lg.tolist())))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux /proc")
def test_gguf_mmapped_source_released(checkpoint, tmp_path):
    """A q4_0 GGUF: weights used in place from the mmapped file are repacked and their file pages
    dropped, so they are not resident twice; logits equal those without repacking."""
    from pyllm.gguf_export import export_gguf

    sys.path.insert(0, os.path.dirname(__file__))
    from conftest import build_checkpoint

    # big enough that holding the weights twice would show: ~45 MB of q4_0 / q8_0 tensors
    ck = build_checkpoint("llama2", "float32", str(tmp_path / "ck"), hidden_size=512, intermediate_size=1408,
                          num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8)
    gguf = str(tmp_path / "m-q4_0.gguf")
    export_gguf(ck, gguf, "q4_0")
    size = os.path.getsize(gguf)
    res = {}
    for repack in ("0", "1"):
        r = subprocess.run([sys.executable, "-c", GGUF_RUN, gguf], capture_output=True, text=True,
                           env={**os.environ, "PYLLM_REPACK": repack, "PYLLM_ISA": "scalar"})  # exact
        assert r.returncode == 0, r.stderr
        res[repack] = json.loads(r.stdout.strip().splitlines()[-1])
    np.testing.assert_array_equal(np.array(res["0"]["lg"]), np.array(res["1"]["lg"]))
    assert res["0"]["packed"] == 0 and res["1"]["packed"] > 0
    # without repacking the whole file is touched and resident; with it, only what is read in place
    # (norms, the token embedding rows looked up, page fragments at tensor edges)
    assert res["0"]["file_rss"] > 0.5 * size
    assert res["1"]["file_rss"] < 0.1 * size, (res["1"]["file_rss"], size)
    kv = 2 * 8 * 64 * 512 * 4
    assert res["1"]["peak"] - res["1"]["rss0"] <= size + kv + 100 * 2**20
