"""test_kquants.py: the GGUF types pyllm reads but does not write (csrc/types_kquants.c: Q4_1, Q5_0,
Q5_1, IQ4_NL, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS).
  * dequantization is bit-identical to gguf-py's numpy reference (gguf.quants.dequantize) on random
    blocks, on every ISA's table;
  * the matmul (dequantize a row, fixed-order fp32 dot) gives the same value through vec_dot and gemm
    and for any batch, close to the dot of the dequantized values;
  * a GGUF file whose weights are in these types (mixed with F32 / Q8_0 / Q4_0 inside one q/k/v
    group, as llama.cpp's mixes are) runs like the same file with those tensors dequantized to F32;
  * the packed layouts of Q2_K..Q6_K and IQ4_XS (csrc/kquant_packed.c): every ISA's packed gemm equals
    the scalar unpacked reference bit for bit on odd shapes (rows not filling a 16-row group, 1..17
    activation rows), whatever the batch; a model repacked at load gives the logits of the same model
    with PYLLM_REPACK=0, bit for bit (also one of Q4_1 / Q5_0 / Q5_1 / IQ4_NL, whose packed gemms
    tests/test_repack.py checks); Q8_K activations are the same bytes on every ISA.
llama.cpp's own files of every standard mix were checked by hand against llama.cpp (README)."""
from __future__ import annotations

import numpy as np
import pytest

import pyllm
from pyllm import _engine

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf.quants import GGML_QUANT_SIZES, dequantize  # noqa: E402

# type -> byte offsets of its fp16 scale fields (set to finite, weight-sized values in random blocks)
HALVES = {T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.IQ4_NL: [0], T.Q2_K: [80, 82], T.Q3_K: [108],
          T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208], T.IQ4_XS: [0]}
ISAS = ["scalar"] + [isa for isa in ("avx2", "avx512", "neon", "neon-dotprod", "neon-i8mm") if _engine.isa_supported(isa)]
Q8_K = 15  # the activations of the types with integer kernels
INTEGER_KERNELS = tuple(HALVES)  # every type: quantized activations, exact integer sums


def random_blocks(t, rows, n, rng, scale=0.02, rms=None) -> np.ndarray:
    """rows x n weights of type t as random (valid) blocks: uint8 [rows, row bytes]. With rms, the fp16
    scale fields are then rescaled so that the weights' root mean square is about rms (every type's
    values are linear in them)."""
    blck, nbytes = GGML_QUANT_SIZES[t]
    nb = rows * n // blck
    raw = rng.integers(0, 256, (nb, nbytes), dtype=np.uint8)
    for o in HALVES[t]:
        d = (rng.standard_normal(nb) * scale).astype(np.float16)
        raw[:, o:o + 2] = d.view(np.uint8).reshape(nb, 2)
    if rms is not None:
        f = rms / float(np.sqrt(np.mean(dequantize(raw.reshape(-1), t).astype(np.float64) ** 2)))
        for o in HALVES[t]:
            d = raw[:, o:o + 2].copy().view(np.float16).astype(np.float32) * f
            raw[:, o:o + 2] = d.astype(np.float16).view(np.uint8).reshape(nb, 2)
    return raw.reshape(rows, -1)


@pytest.fixture(autouse=True)
def restore_isa():
    before = _engine.get_isa()
    yield
    _engine.set_isa(before)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("t", list(HALVES), ids=lambda t: t.name)
def test_dequantization_is_gguf_pys(isa, t):
    _engine.set_isa(isa)
    rng = np.random.default_rng(int(t))
    blck = GGML_QUANT_SIZES[t][0]
    for rows, nblk in ((1, 1), (3, 5), (7, 2)):
        raw = random_blocks(t, rows, nblk * blck, rng, scale=rng.choice([1e-3, 0.05, 3.0]))
        ours = _engine.to_float(int(t), raw.reshape(-1), nblk * blck)
        ref = dequantize(raw.reshape(-1), t).reshape(rows, -1)
        np.testing.assert_array_equal(ours.view(np.uint32), ref.view(np.uint32))
    # integer kernels: Q8_K activations for the 256-weight types, Q8_0 for the 32-weight ones
    assert _engine.act_type(int(t)) == (Q8_K if blck == 256 else 8)
    with pytest.raises(ValueError):
        _engine.row_bytes(int(t), blck + 1)
    # writing these types: tests/test_kquant_write.py


@pytest.mark.parametrize("t", [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_XS, T.Q5_0, T.IQ4_NL, T.Q4_1],
                         ids=lambda t: t.name)
def test_matmul_is_exact_batch_invariant_and_the_same_on_every_isa(t):
    """Q4_K / Q6_K x Q8_K: integer sums, bit-identical on every ISA to the scalar reference; the others
    dequantize rows and dot in fp32. Either way: any batch gives the same values, and they are the
    dot of the dequantized weights with the (dequantized) activations to fp32 rounding."""
    rng = np.random.default_rng(5)
    blck = GGML_QUANT_SIZES[t][0]
    n, nr = 2 * max(blck, 256), 13
    w = random_blocks(t, nr, n, rng, rms=0.03).reshape(-1)
    a = rng.standard_normal((9, n)).astype(np.float32)
    act = _engine.act_type(int(t))
    a_in = np.frombuffer(_engine.from_float(act, a), np.uint8) if act else a.reshape(-1).view(np.uint8)
    a_val = _engine.to_float(act, a_in, n) if act else a
    wf = dequantize(w, t).reshape(nr, n).astype(np.float64)
    ref = a_val.astype(np.float64) @ wf.T
    mag = np.abs(a_val).astype(np.float64) @ np.abs(wf).T
    outs = {}
    for isa in ISAS:
        _engine.set_isa(isa)
        full = _engine.gemm(int(t), w, a_in, n, nr, 9)
        assert np.all(np.abs(full - ref) <= 1e-5 * mag + 1e-30), isa  # fp32 sums of n products
        for nc in (1, 4):  # any batch: the same values
            part = _engine.gemm(int(t), w, a_in[: nc * len(a_in) // 9], n, nr, nc)
            np.testing.assert_array_equal(part, full[:nc])
        outs[isa] = full
    if t in INTEGER_KERNELS:
        for isa in ISAS:
            np.testing.assert_array_equal(outs[isa], outs["scalar"], err_msg=isa)


PACKED = [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_XS]  # the K-quants with a packed layout (csrc/kquant_packed.c, tensor_types.h)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("t", PACKED, ids=lambda t: t.name)
def test_packed_gemm_equals_the_unpacked_reference(isa, t):
    """The packed gemm of every ISA (decode: one activation row; prefill: tiles of several) equals the
    scalar unpacked reference bit for bit, on rows that do not fill the last 16-row group, few and many
    activation rows (AVX2 Q6_K / Q5_K / Q3_K take a decoded-block path from 16 rows, Q4_K from 64, in panels of 64: 17, 19, 70), an odd
    source offset, weights of every scale (1e-3 .. 3)."""
    rng = np.random.default_rng(20 + int(t))
    for n in (256, 768):
        for nr, nc in ((1, 1), (15, 1), (16, 2), (17, 3), (33, 7), (40, 13), (5, 17), (33, 19), (9, 70)):
            w = random_blocks(t, nr, n, rng, scale=float(rng.choice([1e-3, 0.05, 3.0]))).reshape(-1)
            x = (rng.standard_normal((nc, n)) * rng.uniform(0.1, 10, (nc, 1))).astype(np.float32)
            _engine.set_isa("scalar")
            a = np.frombuffer(_engine.from_float(Q8_K, x), np.uint8)
            ref = _engine.gemm(int(t), w, a, n, nr, nc)
            _engine.set_isa(isa)
            p = _engine.repack(int(t), np.concatenate([np.zeros(3, np.uint8), w]), nr, n, 3)
            assert p.shape == (-(-nr // 16) * _engine.packed_group_bytes(int(t), n),)
            acts = _engine.pack_acts(x, int(t))
            np.testing.assert_array_equal(acts, a)  # plain Q8_K rows
            got = _engine.gemm_packed(int(t), p, acts, n, nr, nc)
            np.testing.assert_array_equal(got, ref, err_msg=f"{t.name} {isa} n={n} nr={nr} nc={nc}")
            # a row's result does not depend on the batch it is in
            np.testing.assert_array_equal(_engine.gemm_packed(int(t), p, acts[:len(a) // nc], n, nr, 1), ref[:1])


def q6_k_plane_word(block, h, p, v) -> bytes:
    """Bytes 4v .. 4v + 3 of plane p of half h of a row's packed Q6_K quants (tensor_types.h): the 6-bit
    value of weight 128h + 32p + 4v + i, bits 2p, 2p + 1 of that of weight 128h + 96 + 4v + i on top."""
    def q6(e):  # ggml's ql / qh bits
        hh, k, l = e // 128, e % 128 // 32, e % 32
        lo, hb = int(block[64 * hh + 32 * (k & 1) + l]), int(block[128 + 32 * hh + l])
        return (lo & 15 if k < 2 else lo >> 4) | ((hb >> 2 * k) & 3) << 4
    return bytes(q6(128 * h + 32 * p + 4 * v + i) | ((q6(128 * h + 96 + 4 * v + i) >> 2 * p) & 3) << 6
                 for i in range(4))


def q5_k_planes(block: np.ndarray) -> np.ndarray:
    """The 5 x 32 quant bytes of one Q5_K row in its packed record (tensor_types.h): [t, l] = the 5-bit
    value of weight l of sub-block t, and in bits 5-7 bits 3t .. 3t + 2 of q5 | q6 << 5 | q7 << 10 (qj:
    weight l of sub-block j)."""
    qh, qs = block[16:48].astype(np.uint32), block[48:176].astype(np.uint32)
    q = [((qs[32 * (s // 2):32 * (s // 2) + 32] >> (4 * (s % 2))) & 15) | (((qh >> s) & 1) << 4) for s in range(8)]
    stream = q[5] | q[6] << 5 | q[7] << 10
    return np.array([q[t] | ((stream >> (3 * t)) & 7) << 5 for t in range(5)], np.uint8)


@pytest.mark.parametrize("t", PACKED, ids=lambda t: t.name)
def test_packed_layout(t):
    """Record sizes of tensor_types.h, zero rows past the end, and the documented byte positions of the
    fp16 scales and of the first and last quant word of a row (Q5_K, whose quants are rearranged: all of
    them)."""
    rng = np.random.default_rng(7)
    n, nr = 512, 5
    rec = {T.Q2_K: 1600, T.Q3_K: 1856, T.Q4_K: 2368, T.Q5_K: 2880, T.Q6_K: 3392, T.IQ4_XS: 2240}[t]
    assert _engine.packed_group_bytes(int(t), n) == 2 * rec and rec % 64 == 0
    assert _engine.packed_group_bytes(int(t), 255) == 0 and _engine.packed_group_bytes(int(t), 0) == 0
    w = random_blocks(t, nr, n, rng)
    p = _engine.repack(int(t), w.reshape(-1), nr, n)
    blocks = w.reshape(nr, 2, -1)
    d_src = {T.Q2_K: 80, T.Q3_K: 108, T.Q4_K: 0, T.Q5_K: 0, T.Q6_K: 208, T.IQ4_XS: 0}[t]
    # (packed offset, offset in the source block) of the first quant word (Q6_K: q6_k_plane_word)
    q_first = {T.Q2_K: (576, 16), T.Q3_K: (320, 32), T.Q4_K: (320, 16), T.Q6_K: (320, 0), T.IQ4_XS: (192, 8)}.get(t)
    for b in range(2):
        r_ = p[b * rec:(b + 1) * rec]
        if t == T.Q5_K:  # 5 planes of 8 vectors: byte 4r + i of vector v of plane t' = [t', 4v + i]
            planes = r_[320:].reshape(5, 8, 16, 4)
            for r in range(16):
                assert bytes(r_[2 * r:2 * r + 2]) == (bytes(blocks[r, b, :2]) if r < nr else bytes(2))
                want = q5_k_planes(blocks[r, b]) if r < nr else np.zeros((5, 32), np.uint8)
                np.testing.assert_array_equal(planes[:, :, r, :].reshape(5, 32), want)
            continue
        for r in range(16):
            d, q = r_[2 * r:2 * r + 2], r_[q_first[0] + 4 * r:q_first[0] + 4 * r + 4]
            if r < nr:
                assert bytes(d) == bytes(blocks[r, b, d_src:d_src + 2])
                want = bytes(blocks[r, b, q_first[1]:q_first[1] + 4])
                assert bytes(q) == (q6_k_plane_word(blocks[r, b], 0, 0, 0) if t == T.Q6_K else want)
            else:
                assert not d.any() and not q.any()
        last = r_[rec - 64 + 4 * (nr - 1):rec - 64 + 4 * nr]  # the last vector: the row's last word of qs / qh
        if t == T.Q6_K:
            assert bytes(last) == q6_k_plane_word(blocks[nr - 1, b], 1, 2, 7)
        else:
            assert bytes(last) == bytes(blocks[nr - 1, b, {T.Q2_K: 76, T.Q3_K: 28, T.Q4_K: 140,
                                                             T.IQ4_XS: 132}[t]:][:4])


def test_q8_k_activations():
    """Q8_K rows: d = max|x| / 127, q = round(x / d), bsums = the sums of each 16 q."""
    rng = np.random.default_rng(6)
    x = (rng.standard_normal((3, 512)) * [[1e-3], [1.0], [50.0]]).astype(np.float32)
    x[2, :256] = 0.0
    raw = np.frombuffer(_engine.from_float(Q8_K, x), np.uint8).reshape(3 * 2, 292)
    d = raw[:, :4].copy().view(np.float32)[:, 0]
    q = raw[:, 4:260].view(np.int8).astype(np.int32)
    bs = raw[:, 260:].copy().view(np.int16)
    xb = x.reshape(6, 256)
    np.testing.assert_array_equal(d, np.abs(xb).max(1) / np.float32(127))
    assert np.all(np.abs(q) <= 127) and d[4] == 0 and not q[4].any()
    np.testing.assert_array_equal(bs, q.reshape(6, 16, 16).sum(2))
    back = _engine.to_float(Q8_K, raw.reshape(-1), 512).reshape(6, 256)
    assert np.all(np.abs(back - xb) <= d[:, None] / 2 * (1 + 1e-6))


@pytest.mark.parametrize("isa", ISAS)
def test_q8_k_activations_are_the_same_on_every_isa(isa):
    """Each ISA's Q8_K from_float equals the scalar reference byte for byte: ties of the rounding,
    zeros, denormal scales (|x / d| past 127), huge values, and a super-block holding NaN or inf."""
    rng = np.random.default_rng(8)
    x = (rng.standard_normal((7, 512)) * [[1e-3], [1.0], [50.0], [1e-40], [1e30], [1.0], [1.0]]).astype(np.float32)
    x[1, :256] = np.round(rng.standard_normal(256) * 20) / 2  # halves: ties after scaling by 127 / max
    x[1, 7] = 63.5
    x[2, :256] = 0.0
    x[5, 300] = np.nan
    x[6, 10] = np.inf
    _engine.set_isa("scalar")
    want = np.frombuffer(_engine.from_float(Q8_K, x), np.uint8)
    _engine.set_isa(isa)
    np.testing.assert_array_equal(np.frombuffer(_engine.from_float(Q8_K, x), np.uint8), want)


def _rewrite(src: str, dst: str, types: dict, rng) -> str:
    """A copy of the GGUF src whose 2-D weights named in types (substring -> type) hold random blocks of
    that type; returns dst. The companion F32 file (dst + '.f32.gguf') holds those blocks dequantized."""
    r = gguf.GGUFReader(src)
    writers = [gguf.GGUFWriter(dst, "llama"), gguf.GGUFWriter(dst + ".f32.gguf", "llama")]
    for k, f in r.fields.items():
        if k.startswith("GGUF.") or k == "general.architecture":
            continue
        vt = f.types[0]
        for w in writers:
            if vt == gguf.GGUFValueType.ARRAY:
                w.add_key_value(k, f.contents(), vt, sub_type=f.types[-1])
            else:
                w.add_key_value(k, f.contents(), vt)
    for t in r.tensors:
        shape = [int(x) for x in reversed([int(v) for v in t.shape])]  # numpy order [rows, cols]
        t_new = next((ty for key, ty in types.items() if key in t.name), None)
        if t_new is None or len(shape) != 2 or shape[1] % GGML_QUANT_SIZES[t_new][0]:
            for w in writers:  # (quantized data comes as uint8 [rows, row bytes], which the writer expects)
                w.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
            continue
        blocks = random_blocks(t_new, shape[0], shape[1], rng, rms=0.03)  # about the trained weights' size
        writers[0].add_tensor(t.name, blocks, raw_dtype=t_new)
        writers[1].add_tensor(t.name, dequantize(blocks.reshape(-1), t_new).reshape(shape), raw_dtype=T.F32)
    for w in writers:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return dst


@pytest.fixture(scope="module")
def shipped_q8(tmp_path_factory):
    """The shipped model (hidden 256: whole K-quant super-blocks) as a GGUF with Q8_0 weights."""
    from pyllm.gguf_export import export_gguf

    out = str(tmp_path_factory.mktemp("kq") / "shipped-q8_0.gguf")
    export_gguf(pyllm.default_model_path(), out, "q8_0")
    return out


MIXES = {
    "q4_k_m-like": {"attn_q": T.Q4_K, "attn_k": T.Q4_K, "attn_output": T.Q4_K, "ffn_gate": T.Q4_K, "ffn_up": T.Q4_K,
                    "ffn_down": T.Q5_0, "output.weight": T.Q6_K, "token_embd": T.Q4_K},  # attn_v stays Q8_0
    "k-quants": {"attn_q": T.Q2_K, "attn_k": T.Q3_K, "attn_v": T.Q5_K, "attn_output": T.Q6_K, "ffn_gate": T.IQ4_XS,
                 "ffn_up": T.Q4_K, "ffn_down": T.IQ4_NL, "output.weight": T.Q5_K},
    "legacy": {"attn_q": T.Q4_1, "attn_k": T.Q5_0, "attn_v": T.Q5_1, "attn_output": T.IQ4_NL, "ffn_": T.Q4_1,
               "token_embd": T.Q5_1},
}


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("mix", ["k-quants", "legacy"])
def test_packed_k_quant_model_equals_unpacked(shipped_q8, tmp_path, monkeypatch, isa, mix):
    """A Q4_K_M-like file with every packed K-quant type (attn_q Q4_K, attn_k Q3_K, attn_v Q8_0, attn_output
    Q5_K, ffn_gate Q2_K, ffn_up IQ4_XS, ffn_down Q5_0, LM head Q6_K), and one of the 32-weight types
    (attn_q / ffn Q4_1, attn_k Q5_0, attn_v Q5_1, attn_output IQ4_NL, LM head Q8_0): its packed types'
    weights are repacked at load, and the logits equal those of the same file with repacking off
    (PYLLM_REPACK=0: the vec_dot kernels) bit for bit, on every ISA, for a prompt at once and token by
    token (the packed kernels are batch invariant)."""
    # the NEON tables have no packed gemm of the 32-weight types and keep their rows unpacked
    unpacked = mix == "legacy" and isa.startswith("neon")
    if mix == "legacy":
        mix = MIXES["legacy"]
    else:
        mix = {**MIXES["q4_k_m-like"], "attn_output": T.Q5_K, "ffn_up": T.IQ4_XS, "attn_k": T.Q3_K, "ffn_gate": T.Q2_K}
    path = _rewrite(shipped_q8, str(tmp_path / "mix.gguf"), mix, np.random.default_rng(4))
    _engine.set_isa(isa)
    m = pyllm.load(path, n_ctx=64)
    assert m._cmodel.packed_bytes("output") > 0
    for name in ("wq", "wk", "wv", "wo", "ffn_gate", "ffn_up", "ffn_down"):  # all packed (Q8_0 attn_v too)
        assert (m._cmodel.packed_bytes(name, 0) > 0) != unpacked, name
    monkeypatch.setenv("PYLLM_REPACK", "0")
    ref = pyllm.load(path, n_ctx=64)
    assert ref._cmodel.packed_bytes("wq", 0) == 0
    ids = m.tokenize("ROMEO:\nWhat light through yonder window breaks?")
    got = m.logits(ids)
    np.testing.assert_array_equal(got, ref.logits(ids))
    seq = m.sequence()
    steps = [seq.append(ids[:5])] + [seq.append([i]) for i in ids[5:]]
    np.testing.assert_array_equal(np.stack(steps), got[4:])


@pytest.mark.parametrize("mix", list(MIXES))
def test_model_with_these_types_runs_like_its_dequantized_copy(shipped_q8, tmp_path, mix):
    path = _rewrite(shipped_q8, str(tmp_path / f"{mix}.gguf"), MIXES[mix], np.random.default_rng(3))
    m, ref = pyllm.load(path, n_ctx=128), pyllm.load(path + ".f32.gguf", n_ctx=128)
    ids = m.tokenize("ROMEO:\nWhat light through yonder window breaks? It is the east")
    got, want = m.logits(ids), ref.logits(ids)
    scale = max(1.0, float(np.abs(want).max()))
    if not any(ty in INTEGER_KERNELS for ty in MIXES[mix].values()):
        # the same fp32 weights and activations, different summation order: the parity bound
        assert np.abs(got - want).max() <= 1e-4 * scale
        # decode through the engine (one token at a time) agrees too
        assert m.generate_tokens(ids, max_tokens=12, temperature=0, ignore_eos=True) == \
            ref.generate_tokens(ids, max_tokens=12, temperature=0, ignore_eos=True)
    else:
        # Q4_K / Q6_K layers quantize their inputs to Q8_K (as Q4_0 / Q8_0 layers do to Q8_0): measured
        # max |diff| 1.6e-2 / 2.2e-2 of the largest logit and mean KL 4e-5 / 1e-4; bounds 3x / 10x
        from pyllm.generation.logprobs import log_softmax

        assert np.abs(got - want).max() <= 0.07 * scale
        p, q_ = log_softmax(want), log_softmax(got)
        assert float((np.exp(p) * (p - q_)).sum(-1).mean()) <= 1e-3
    q = pyllm.load(path, n_ctx=128, quant="q8_0")
    assert np.all(np.isfinite(q.logits(ids)))
