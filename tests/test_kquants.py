"""test_kquants.py: the GGUF types pyllm reads but does not write (csrc/types_kquants.c: Q4_1, Q5_0,
Q5_1, IQ4_NL, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS).
  * dequantization is bit-identical to gguf-py's numpy reference (gguf.quants.dequantize) on random
    blocks, on every ISA's table;
  * the matmul (dequantize a row, fixed-order fp32 dot) gives the same value through vec_dot and gemm
    and for any batch, close to the dot of the dequantized values;
  * a GGUF file whose weights are in these types (mixed with F32 / Q8_0 / Q4_0 inside one q/k/v
    group, as llama.cpp's mixes are) runs like the same file with those tensors dequantized to F32.
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
ISAS = ["scalar"] + [isa for isa in ("avx2", "avx512") if _engine.isa_supported(isa)]
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
