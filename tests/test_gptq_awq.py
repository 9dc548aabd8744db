"""test_gptq_awq.py: GPTQ and AWQ 4-bit Hugging Face checkpoints (pyllm/gptq_awq.py). The checkpoints
are made here from conftest's random models by the formats' published packing rules
(tests/gptq_awq_packing.py), next to a float32 copy holding exactly the weights they dequantize to.
  * the engine tensors: each 32-column block in one group is a Q4_0 block (symmetric layers: exactly
    the checkpoint's weights) or a Q4_1 block whose d and 4-bit values are the checkpoint's bit for bit
    and whose m is -s z rounded to fp16 (within the bound that rounding implies, and moving the logits
    of a float engine by little); act-order tensors are the exact values rounded to F16;
  * logits against transformers running the dequantized copy, for GPTQ (both formats, sym/asym,
    group sizes 32/64/128/-1, desc_act on/off) and AWQ, on Llama, Qwen2 (biases), Phi-3 (fused
    q/k/v: row ranges of one quantized layer) and Mixtral (stacked experts);
  * `pyllm quantize` writes those blocks into the GGUF unchanged and the file runs identically;
  * bad input (other methods, bits, packings, shapes, indices, missing tensors) is a clear error."""
from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest

import pyllm
from pyllm.errors import ModelLoadError, UnsupportedArchitectureError
from pyllm.gptq_awq import F16, F32, Q4_0, Q4_1, engine_tensor, quantized_linears, scheme_of_folder
from pyllm.safetensors_file import open_checkpoint

from conftest import build_checkpoint, hf_model
from gptq_awq_packing import write_quantized

gguf = pytest.importorskip("gguf")

THREADS = 1  # tiny models: one thread is fastest on a loaded machine, and results do not depend on it
SIZES = {"llama2": dict(hidden_size=128, intermediate_size=256), "qwen2": dict(hidden_size=128, intermediate_size=256),
         "phi3": dict(hidden_size=128, intermediate_size=256), "mixtral": dict(hidden_size=128, intermediate_size=96)}

# (method, checkpoint format, group size, sym, desc_act)
CASES = [
    ("gptq", "gptq", 128, False, False),
    ("gptq", "gptq", 64, True, False),
    ("gptq", "gptq_v2", 32, False, False),
    ("gptq", "gptq_v2", -1, True, False),
    ("gptq", "gptq", 128, False, True),
    ("gptq", "gptq_v2", 32, True, True),
    ("awq", "gemm", 128, False, False),
    ("awq", "gemm", 64, False, False),
    ("awq", "gemm", 32, False, False),
    ("awq", "gemm", -1, False, False),
]


def case_id(c):
    method, fmt, gs, sym, act = c
    return f"{fmt if method == 'gptq' else 'awq'}-g{gs}-{'sym' if sym else 'asym'}{'-act' if act else ''}"


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """quantized(arch, case) -> (checkpoint folder, dequantized float32 folder, packer's integers)."""
    sources, cache = {}, {}

    def get(arch, case):
        if arch not in sources:
            sources[arch] = build_checkpoint(arch, "float32", str(tmp_path_factory.mktemp(f"{arch}-src")),
                                             **SIZES[arch])
        if (arch, case) not in cache:
            method, fmt, gs, sym, act = case
            base = tmp_path_factory.mktemp(f"{arch}-{case_id(case)}")
            cache[(arch, case)] = write_quantized(sources[arch], str(base / "q"), str(base / "ref"), method, fmt, gs,
                                                  sym, act)
        return cache[(arch, case)]

    return get


def _ids(vocab, n=40, seed=0):
    return np.random.default_rng(seed).integers(3, vocab, n).tolist()


# ------------------------------------------------------------------------------------------ tensors
def _block_bound(s, z):
    """|m - (-s z)| after rounding -s z to fp16: half an ulp, 2^-11 of |s z| in fp16's normal range and
    2^-25 below it; plus gguf-py's float32 d * q + m (2^-24 of the result, at most 16 |s|)."""
    sz = np.abs(s.astype(np.float64) * z)
    return np.maximum(sz * 2.0 ** -11, 2.0 ** -25) + 16 * np.abs(s.astype(np.float64)) * 2.0 ** -24


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_engine_tensors_hold_the_checkpoints_values(quantized, case):
    method, fmt, gs, sym, act = case
    dst, _, parts = quantized("llama2", case)
    lins = quantized_linears(scheme_of_folder(dst), open_checkpoint(dst))
    assert sorted(lins) == sorted(p + ".weight" for p in parts)
    n_f16 = 0
    for prefix, (q, s, z, g) in parts.items():
        out_f, in_f = q.shape
        tid, data, why = engine_tensor([lins[prefix + ".weight"]])
        exact = s.astype(np.float32)[g].T * (q.astype(np.float32) - z[g].T.astype(np.float32))
        blocks_of = g.reshape(-1, 32)
        if np.any(blocks_of != blocks_of[:, :1]):  # act-order: a 32-column block spans groups
            assert act and tid == F16 and "desc_act" in why
            n_f16 += 1  # the exact values, rounded once to F16
            np.testing.assert_array_equal(data.view(np.float16).reshape(out_f, in_f), exact.astype(np.float16))
            continue
        # symmetric (z = 8): Q4_0, d (q - 8); else Q4_1, d q + m
        assert tid == (Q4_0 if sym else Q4_1) and why is None
        # any rows (GGUF's Q/K permutation, a fused tensor's range not on an int32 boundary) are those rows
        lin, full = lins[prefix + ".weight"], data.reshape(out_f, -1)
        perm = np.random.default_rng(1).permutation(out_f)
        np.testing.assert_array_equal(lin.engine_rows(tid, perm), full[perm])
        np.testing.assert_array_equal(lin.engine_rows(tid, slice(3, 45)), full[3:45])
        blocks = data.reshape(out_f, in_f // 32, 18 if sym else 20)
        gb = g[::32]
        # d and the 4-bit values are the checkpoint's, bit for bit
        np.testing.assert_array_equal(blocks[:, :, 0:2].copy().view(np.float16)[..., 0], s[gb].T)
        nib = np.concatenate([blocks[:, :, -16:] & 0xF, blocks[:, :, -16:] >> 4], axis=-1)
        np.testing.assert_array_equal(nib.reshape(out_f, in_f), q)
        # gguf-py decodes the blocks independently of pyllm
        got = gguf.quants.dequantize(data, gguf.GGMLQuantizationType(tid)).reshape(out_f, in_f)
        if sym:  # exactly the checkpoint's weights
            np.testing.assert_array_equal(got, exact)
        else:
            # m = -s z rounded to fp16
            bound = np.repeat(_block_bound(s[gb].T, z[gb].T), 32, axis=1)
            assert np.all(np.abs(got.astype(np.float64) - exact) <= bound)
            assert not np.array_equal(got, exact)  # the asymmetric zero points do need the rounding here
    assert n_f16 > 0 if act else n_f16 == 0  # (act-order with one group per row, e.g. 128 inputs at g128, maps)


def test_classic_gptq_zero_field_15_means_16(small_source, tmp_path):
    """The classic format stores z - 1 in 4 bits and GPTQ's kernels read field + 1, so a field of 15 is
    z = 16 (a quantizer's z = 0, wrapped): -16 s is an fp16 number, so the block is still exact."""
    def edit(t):
        t[f"{Q}.qzeros"][0, 0] |= 0xF  # group 0, output row 0

    dst, _, parts = write_quantized(small_source, str(tmp_path / "q"), str(tmp_path / "ref"), "gptq", "gptq", 32,
                                    False, False, edit=edit)
    q, s, _, g = parts[Q]
    lin = quantized_linears(scheme_of_folder(dst), open_checkpoint(dst))[Q + ".weight"]
    tid, data, _ = engine_tensor([lin])
    got = gguf.quants.dequantize(data, gguf.GGMLQuantizationType.Q4_1).reshape(q.shape)
    cols = np.flatnonzero(g == 0)
    np.testing.assert_array_equal(got[0, cols], s[0, 0].astype(np.float32) * (q[0, cols].astype(np.float32) - 16))


# ------------------------------------------------------------------------------------------- logits
def _kl(want, got):
    from pyllm.generation.logprobs import log_softmax

    p, q = log_softmax(want), log_softmax(got)
    return float((np.exp(p) * (p - q)).sum(-1).mean())


def _check_logits(dst, ref, case, vocab):
    import torch

    ids = _ids(vocab)
    m = pyllm.load(dst, n_ctx=64, n_threads=THREADS)
    got = m.logits(ids)
    with torch.no_grad():
        want = hf_model(ref)(torch.tensor([ids])).logits[0].numpy()
    scale = float(np.abs(want).max())
    diff = float(np.abs(got - want).max())
    types = {ql.storage()[0] for ql in quantized_linears(scheme_of_folder(dst), open_checkpoint(dst)).values()}
    if types == {F16}:
        # act-order, every layer: F16 weights (each within 2^-11 of its exact value), float32
        # activations: measured 1.0e-3 of max |logit| on Llama (mean KL 2e-7); bound 4x
        assert diff <= 4e-3 * scale, f"max |logit diff| {diff} (scale {scale})"
    else:
        # Q4_0 / Q4_1 layers quantize their inputs to Q8_0 blocks, which dominates Q4_1's m rounding
        # (<= 1/128 of a step, see above): measured 1.6e-2..2.8e-2 of max |logit| and mean KL
        # 0.8e-4..1.8e-4 over these cases; bounds as test_kquants' for quantized activations (2.5x, 5x)
        assert diff <= 7e-2 * scale, f"max |logit diff| {diff} (scale {scale})"
        assert _kl(want, got) <= 1e-3
    return m, got


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_llama_logits_match_transformers_on_the_dequantized_weights(quantized, case):
    dst, ref, _ = quantized("llama2", case)
    if case[4]:
        with pytest.warns(UserWarning, match=r"dequantized to F16 \(act-order"):
            _check_logits(dst, ref, case, 32000)
    else:
        _check_logits(dst, ref, case, 32000)


@pytest.mark.parametrize("arch,case", [("qwen2", CASES[2]), ("qwen2", CASES[7]), ("phi3", CASES[1]),
                                       ("mixtral", CASES[8])], ids=lambda x: x if isinstance(x, str) else case_id(x))
def test_other_families(quantized, arch, case):
    dst, ref, _ = quantized(arch, case)
    _check_logits(dst, ref, case, 128256 if arch == "qwen2" else 32000)


@pytest.mark.parametrize("quant", ["q8_0", "q4_k_m"])
def test_quant_converts_only_the_float_tensors(quantized, tmp_path, quant):
    """quant= / --type (a type or one of llama.cpp's mixes) picks the types of the tensors the checkpoint
    keeps in float (embeddings, LM head); the 4-bit layers keep their blocks."""
    from pyllm.gguf_export import export_gguf

    dst, _, _ = quantized("qwen2", CASES[0])
    out = str(tmp_path / "m.gguf")
    export_gguf(dst, out, quant)
    types = {name: t[0] for name, t in _tensor_bytes(out).items()}
    assert all(types[f"blk.{i}.{k}.weight"] == Q4_1 for i in (0, 1) for k in ("attn_q", "attn_v", "ffn_down"))
    assert types["token_embd.weight"] not in (F32, F16)  # converted as the type / mix says
    ids = _ids(128256)
    plain = pyllm.load(dst, n_ctx=64, n_threads=THREADS).logits(ids)
    converted = pyllm.load(dst, n_ctx=64, n_threads=THREADS, quant=quant).logits(ids)
    assert not np.array_equal(plain, converted)
    # the file runs what quant-on-load runs (Qwen2: no Q/K permutation, the same arithmetic)
    np.testing.assert_array_equal(pyllm.load(out, n_ctx=64, n_threads=THREADS).logits(ids), converted)


def test_allocation_is_refused(small_source, tmp_path):
    dst = _bad(small_source, tmp_path)
    text = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "heldout_shakespeare.txt")
    with pytest.raises(ValueError, match="allocation re-plans a float checkpoint's types; this GPTQ / AWQ"):
        pyllm.load(dst, n_ctx=32, quant="q4_k_m", calibration=text, allocate=True)


# ------------------------------------------------------------------------------------------- export
def _tensor_bytes(path):
    from pyllm.gguf_file import GGUFFile

    gf = GGUFFile(path)
    return {name: gf.tensor(name) for name in gf.tensors}


@pytest.mark.parametrize("arch,case", [("qwen2", CASES[0]), ("llama2", CASES[0]), ("qwen2", CASES[1]),
                                       ("llama2", CASES[5])],
                         ids=["qwen2-asym", "llama2-asym", "qwen2-sym", "llama2-act-order"])
def test_quantize_writes_the_4_bit_blocks_and_runs_identically(quantized, tmp_path, arch, case):
    from pyllm.cli import main
    from pyllm.gguf_export import _rope_permutation

    dst, _, parts = quantized(arch, case)
    out = str(tmp_path / "m.gguf")
    if case[4]:
        with pytest.warns(UserWarning, match="dequantized to F16"):
            assert main(["quantize", dst, out, "--type", "f16", "-q"]) == 0
    else:
        assert main(["quantize", dst, out, "--type", "f16", "-q"]) == 0
    lins = quantized_linears(scheme_of_folder(dst), open_checkpoint(dst))
    kinds = {ql.storage()[0] for ql in lins.values()}
    assert kinds == ({F16} if case[4] else {Q4_0} if case[3] else {Q4_1})
    from pyllm.gguf_file import GGUFFile

    # llama.cpp's MOSTLY_Q4_1 / MOSTLY_Q4_0, or --type's (f16: 1) when no layer is 4-bit
    assert GGUFFile(out).metadata["general.file_type"] == (3 if Q4_1 in kinds else 2 if Q4_0 in kinds else 1)
    tensors = _tensor_bytes(out)
    hf_to_gguf = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                  "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                  "mlp.down_proj": "ffn_down"}
    heads = {"attn_q": 4, "attn_k": 4 if arch == "llama2" else 2}
    for prefix in parts:
        layer, kind = prefix.split(".")[2], prefix.split(".", 3)[3]
        gname = f"blk.{layer}.{hf_to_gguf[kind]}.weight"
        tid, shape, buf = tensors[gname]
        etid, data, _ = engine_tensor([lins[prefix + ".weight"]])
        rows = data.reshape(shape[0], -1)
        if arch == "llama2" and hf_to_gguf[kind] in heads:  # llama.cpp's Q/K row order for interleaved RoPE
            rows = rows[_rope_permutation(shape[0], heads[hf_to_gguf[kind]])]
        assert tid == etid
        np.testing.assert_array_equal(np.frombuffer(buf, np.uint8), rows.reshape(-1))
    ids = _ids(128256 if arch == "qwen2" else 32000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # act-order: the dequantization warning again
        want = pyllm.load(dst, n_ctx=64, n_threads=THREADS).logits(ids)
    got = pyllm.load(out, n_ctx=64, n_threads=THREADS).logits(ids)
    if arch == "qwen2":  # same tensors, same rope layout: the same arithmetic
        np.testing.assert_array_equal(got, want)
    else:
        # Llama's GGUF permutes Q/K rows (interleaved RoPE): q.k sums in another order, which Q8_0
        # activations usually absorb; test_gguf's bounds for quantized and for f16 files
        bound = 1e-4 if kinds == {F16} else 5e-2
        assert np.abs(got - want).max() <= bound * np.abs(want).max()


@pytest.mark.parametrize("arch,case", [("phi3", CASES[1]), ("mixtral", CASES[8])], ids=["phi3", "mixtral"])
def test_quantize_fused_and_expert_layers(quantized, tmp_path, arch, case):
    """Phi-3's fused attn_qkv / ffn_up and Mixtral's stacked experts written from their 4-bit layers."""
    from pyllm.gguf_export import export_gguf

    dst, _, _ = quantized(arch, case)
    out = str(tmp_path / "m.gguf")
    export_gguf(dst, out, "f16")
    tensors = _tensor_bytes(out)
    four_bit = Q4_0 if case[3] else Q4_1
    assert tensors["blk.0.attn_qkv.weight" if arch == "phi3" else "blk.0.ffn_gate_exps.weight"][0] == four_bit
    ids = _ids(32000)
    want = pyllm.load(dst, n_ctx=64, n_threads=THREADS).logits(ids)
    got = pyllm.load(out, n_ctx=64, n_threads=THREADS).logits(ids)
    if arch == "phi3":  # same tensors, same rope layout: the same arithmetic
        np.testing.assert_array_equal(got, want)
    else:  # "llama" GGUF: Q/K rows permuted, as in test_quantize_writes_the_4_bit_blocks_and_runs_identically
        assert np.abs(got - want).max() <= 5e-2 * np.abs(want).max()


# ---------------------------------------------------------------------------------------- bad input
def _with_config(folder, **changes):
    path = os.path.join(folder, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    cfg["quantization_config"].update(changes)
    with open(path, "w") as f:
        json.dump(cfg, f)
    return folder


@pytest.fixture(scope="module")
def small_source(tmp_path_factory):
    return build_checkpoint("llama2", "float32", str(tmp_path_factory.mktemp("small-src")), hidden_size=64,
                            intermediate_size=128)


def _bad(small_source, tmp_path, method="gptq", fmt="gptq", edit=None, **config):
    dst, _, _ = write_quantized(small_source, str(tmp_path / "q"), str(tmp_path / "ref"), method, fmt, 32, False,
                                False, edit=edit)
    return _with_config(dst, **config) if config else dst


@pytest.mark.parametrize("changes,match", [
    (dict(bits=8), r"quantization_config\.bits = 8.*4-bit"),
    (dict(bits=3), r"quantization_config\.bits = 3"),
    (dict(quant_method="bitsandbytes"), r"quant_method 'bitsandbytes' is not supported"),
    (dict(quant_method="exl2"), r"quant_method 'exl2' is not supported"),
    (dict(checkpoint_format="marlin"), r"checkpoint_format 'marlin' is not supported"),
    (dict(pack_dtype="int16"), r"pack_dtype 'int16' is not supported"),
    (dict(quant_method="awq", version="gemv"), r"version 'gemv' is not supported.*'gemm'"),
    (dict(quant_method="awq", version="gemm", zero_point=False), r"zero_point = false"),
])
def test_unsupported_options_are_refused(small_source, tmp_path, changes, match):
    dst = _bad(small_source, tmp_path, **changes)
    with pytest.raises(UnsupportedArchitectureError, match=match):
        pyllm.load(dst, n_ctx=32)
    from pyllm.gguf_export import export_gguf

    with pytest.raises(UnsupportedArchitectureError, match=match):
        export_gguf(dst, str(tmp_path / "x.gguf"), "f16")
    assert not os.path.exists(tmp_path / "x.gguf")


Q = "model.layers.0.self_attn.q_proj"


def _drop(name):
    return lambda t: t.pop(name)


def _set(name, fn):
    def edit(t):
        t[name] = fn(t[name])
    return edit


def _g_idx_out_of_range(g):
    g = g.copy()
    g[5] = 99
    return g


@pytest.mark.parametrize("method,edit,match", [
    ("gptq", _drop(f"{Q}.qzeros"), rf"has {Q}\.qweight but no tensor '{Q}\.qzeros'"),
    ("gptq", _drop(f"{Q}.scales"), rf"no tensor '{Q}\.scales'"),
    ("awq", _drop(f"{Q}.qzeros"), rf"no tensor '{Q}\.qzeros'"),
    ("gptq", _set(f"{Q}.scales", lambda s: s[:, :-8]), rf"{Q}\.scales has shape \[2, 56\], expected \[2, 64\]"),
    ("gptq", _set(f"{Q}.qzeros", lambda z: z[:1]), rf"{Q}\.qzeros has shape \[1, 8\], expected \[2, 8\]"),
    ("awq", _set(f"{Q}.scales", lambda s: s[:1]), rf"{Q}\.scales has shape \[1, 64\], expected \[2, 64\]"),
    ("gptq", _set(f"{Q}.g_idx", _g_idx_out_of_range), rf"{Q}\.g_idx\[5\] = 99 is outside the 2 groups"),
    ("gptq", _set(f"{Q}.g_idx", lambda g: g[:-1]), rf"{Q}\.g_idx has shape \[63\], expected \[64\]"),
    ("gptq", _set(f"{Q}.qweight", lambda w: w.astype(np.float32)), rf"{Q}\.qweight' has dtype F32, expected I32"),
    ("gptq", _set(f"{Q}.scales", lambda s: np.where(s == s.max(), np.float16(np.inf), s)),
     rf"{Q}\.scales holds non-finite values"),
    ("gptq", _set(f"{Q}.qweight", lambda w: w[:, :-8]), r"q_proj"),  # 56 output rows: not the config's 64
    ("gptq", lambda t: t.update({f"{Q}.weight": np.zeros((64, 64), np.float16)}), rf"both {Q}\.weight and"),
])
def test_bad_tensors_are_named(small_source, tmp_path, method, edit, match):
    dst = _bad(small_source, tmp_path, method, "gptq" if method == "gptq" else "gemm", edit=edit)
    with pytest.raises(ModelLoadError, match=match):
        pyllm.load(dst, n_ctx=32)


def test_missing_layer_and_stray_qweight(small_source, tmp_path):
    dst = _bad(small_source, tmp_path, edit=lambda t: [t.pop(f"{Q}.{k}") for k in ("qweight", "qzeros", "scales",
                                                                                     "g_idx")])
    with pytest.raises(ModelLoadError, match=rf"no tensor '{Q}\.weight'"):
        pyllm.load(dst, n_ctx=32)
    # qweight tensors in a checkpoint whose config.json does not say how they are quantized
    dst = _bad(small_source, tmp_path / "b")
    path = os.path.join(dst, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    del cfg["quantization_config"]
    with open(path, "w") as f:
        json.dump(cfg, f)
    with pytest.raises(ModelLoadError, match=r"qweight'? is a quantized weight but config.json has no "
                                             r"quantization_config"):
        pyllm.load(dst, n_ctx=32)


def test_quantize_cli_reports_bad_input(small_source, tmp_path, capsys):
    from pyllm.cli import main

    dst = _bad(small_source, tmp_path, quant_method="awq", version="gemv_fast")
    assert main(["quantize", dst, str(tmp_path / "x.gguf"), "-q"]) != 0
    assert "version 'gemv_fast' is not supported" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x.gguf")


# --------------------------------------------------------------------------------------------- LoRA
def test_lora_stays_beside_the_4_bit_layers(quantized, tmp_path):
    """An adapter trained on the float model runs unmerged beside the 4-bit layers (as beside any
    quantized weight): logits against PEFT on the dequantized weights, with the 4-bit bounds above."""
    from test_lora import make_adapter, peft_logits

    dst, ref, _ = quantized("llama2", CASES[0])
    adapter = make_adapter(ref, str(tmp_path / "adapter"), ["q_proj", "v_proj", "down_proj"])
    ids = _ids(32000)
    m = pyllm.load(dst, n_ctx=64, n_threads=THREADS, lora=adapter)
    assert m._cmodel.lora_count() == 2 * 3
    got, want = m.logits(ids), peft_logits(ref, [(adapter, 1.0)], ids)
    assert np.abs(got - want).max() <= 7e-2 * np.abs(want).max()
    assert _kl(want, got) <= 1e-3
    assert _kl(want, pyllm.load(dst, n_ctx=64, n_threads=THREADS).logits(ids)) > 10 * _kl(want, got)
    # pyllm quantize --lora would have to requantize the 4-bit values: refused, no file written
    from pyllm.gguf_export import export_gguf

    with pytest.raises(ModelLoadError, match=r"cannot be merged into the 4-bit weight .*q_proj"):
        export_gguf(dst, str(tmp_path / "x.gguf"), "f16", lora=adapter)
    assert not os.path.exists(tmp_path / "x.gguf")


def test_scales_in_other_float_types(small_source, tmp_path):
    """Scales saved as bf16 / f32: a value that is an fp16 number still makes an exact d; one that is
    not (here f32 scales nudged off fp16's grid) makes the layer dequantize (exactly, then F16)."""
    import torch
    from safetensors.torch import load_file, save_file

    k_name = "model.layers.0.self_attn.k_proj"

    def edit(t):
        t[f"{k_name}.scales"] = t[f"{k_name}.scales"].astype(np.float32) * np.float32(1 + 2 ** -15)

    dst, _, _ = write_quantized(small_source, str(tmp_path / "q"), str(tmp_path / "ref"), "gptq", "gptq", 32,
                                False, False, edit=edit)
    path = os.path.join(dst, "model.safetensors")
    t = load_file(path)
    t[f"{Q}.scales"] = t[f"{Q}.scales"].to(torch.bfloat16)  # bf16's 8-bit significands: fp16 numbers still
    save_file(t, path, metadata={"format": "pt"})
    lins = quantized_linears(scheme_of_folder(dst), open_checkpoint(dst))
    q, k = lins[Q + ".weight"], lins[k_name + ".weight"]
    assert q.scales[1].dtype == "BF16" and q.storage() == (Q4_1, None)
    tid, data, _ = engine_tensor([q])
    d = data.reshape(64, 2, 20)[:, :, 0:2].copy().view(np.float16)[..., 0]
    np.testing.assert_array_equal(d.astype(np.float32), q.scale_values().T)
    assert k.scales[1].dtype == "F32" and k.storage() == (F16, "its scales are not fp16 numbers")
    tid, data, _ = engine_tensor([k])
    np.testing.assert_array_equal(data.view(np.float16).reshape(64, 64), k.dequantized().astype(np.float16))


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_quantizer_config_file_without_quantization_config(small_source, tmp_path, method):
    """Older auto-gptq / autoawq folders describe the quantization in quantize_config.json /
    quant_config.json (autoawq's own keys: w_bit, q_group_size, version "GEMM") instead of config.json."""
    dst, _, _ = write_quantized(small_source, str(tmp_path / "q"), str(tmp_path / "ref"), method,
                                "gptq" if method == "gptq" else "gemm", 32, False, False)
    ids = _ids(32000)
    want = pyllm.load(dst, n_ctx=64, n_threads=THREADS).logits(ids)
    path = os.path.join(dst, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    qc = cfg.pop("quantization_config")
    del qc["quant_method"]
    if method == "awq":
        qc = {"w_bit": qc["bits"], "q_group_size": qc["group_size"], "zero_point": True, "version": "GEMM"}
    with open(path, "w") as f:
        json.dump(cfg, f)
    with open(os.path.join(dst, "quantize_config.json" if method == "gptq" else "quant_config.json"), "w") as f:
        json.dump(qc, f)
    np.testing.assert_array_equal(pyllm.load(dst, n_ctx=64, n_threads=THREADS).logits(ids), want)


def test_weights_beyond_fp16_stay_float32(small_source, tmp_path):
    """A layer whose s * z (and so its weights) can exceed fp16's range maps neither onto Q4_1 (m would
    overflow) nor onto F16: it is stored as the exact float32 values, never as inf."""
    def edit(t):
        s = t[f"{Q}.scales"].astype(np.float32)
        s[0, 0] = 5000.0  # an fp16 number, but 5000 * z > 65504 for z >= 14
        t[f"{Q}.scales"] = s
        z = t[f"{Q}.qzeros"]
        z[0, 0] = (z[0, 0] & ~0xF) | 14  # output row 0's zero field in group 0: z = 15 (classic format)

    dst, _, parts = write_quantized(small_source, str(tmp_path / "q"), str(tmp_path / "ref"), "gptq", "gptq", 32,
                                    False, False, edit=edit)
    q = parts[Q][0]
    lin = quantized_linears(scheme_of_folder(dst), open_checkpoint(dst))[Q + ".weight"]
    assert lin.storage() == (F32, "scale x zero point exceeds fp16's range")
    tid, data, _ = engine_tensor([lin])
    w = data.view(np.float32).reshape(64, 64)
    np.testing.assert_array_equal(w, lin.dequantized())
    np.testing.assert_array_equal(w[0, :32], np.float32(5000) * (q[0, :32].astype(np.float32) - 15))
    with pytest.warns(UserWarning, match=r"dequantized to F32 \(scale x zero point exceeds fp16's range\)"):
        m = pyllm.load(dst, n_ctx=32, n_threads=THREADS)
    assert np.all(np.isfinite(m.logits(_ids(32000, n=8))))


def test_quantized_lm_head(tmp_path, small_source):
    """gptqmodel's lm_head option quantizes the LM head too: the engine's output tensor is then 4-bit."""
    dst, ref, parts = write_quantized(small_source, str(tmp_path / "q"), str(tmp_path / "ref"), "gptq", "gptq_v2",
                                      64, False, False, also=("lm_head.weight",))
    assert "lm_head" in parts
    lins = quantized_linears(scheme_of_folder(dst), open_checkpoint(dst))
    assert lins["lm_head.weight"].storage() == (Q4_1, None)
    _check_logits(dst, ref, CASES[2], 32000)
    out = str(tmp_path / "m.gguf")
    from pyllm.gguf_export import export_gguf

    export_gguf(dst, out, "f16")
    tid, _, buf = _tensor_bytes(out)["output.weight"]
    assert tid == Q4_1 and np.array_equal(np.frombuffer(buf, np.uint8), engine_tensor([lins["lm_head.weight"]])[1])


@pytest.mark.parametrize("case", [CASES[0], CASES[7]], ids=case_id)
def test_m_rounding_alone_barely_moves_the_logits(quantized, tmp_path, case):
    """The one change Q4_1 makes (m = -s z rounded to fp16), seen without the engine's Q8_0 activations:
    the float engine on the blocks' decoded values against it on the exact ones. Measured 1.6e-3 / 2.0e-3
    of max |logit|, mean KL 8e-7 / 1e-6 (the Q8_0 activations: 2.2e-2 / 2.7e-2, KL 1.6e-4); bounds 3x / 10x."""
    import shutil

    from safetensors.numpy import load_file, save_file

    dst, ref, _ = quantized("llama2", case)
    decoded = str(tmp_path / "decoded")
    shutil.copytree(ref, decoded)
    tensors = load_file(os.path.join(ref, "model.safetensors"))
    for name, lin in quantized_linears(scheme_of_folder(dst), open_checkpoint(dst)).items():
        tid, data, _ = engine_tensor([lin])
        assert tid == Q4_1
        tensors[name] = gguf.quants.dequantize(data, gguf.GGMLQuantizationType.Q4_1).reshape(lin.shape)
    save_file(tensors, os.path.join(decoded, "model.safetensors"))
    ids = _ids(32000)
    want = pyllm.load(ref, n_ctx=64, n_threads=THREADS).logits(ids)
    got = pyllm.load(decoded, n_ctx=64, n_threads=THREADS).logits(ids)
    assert 0 < np.abs(got - want).max() <= 6e-3 * np.abs(want).max()
    assert _kl(want, got) <= 1e-5


def test_sharded_checkpoint(small_source, tmp_path):
    """A layer's qweight, qzeros and scales may sit in different shards of model.safetensors.index.json."""
    from safetensors.numpy import load_file, save_file

    dst, _, _ = write_quantized(small_source, str(tmp_path / "q"), str(tmp_path / "ref"), "awq", "gemm", 32,
                                False, False)
    ids = _ids(32000)
    want = pyllm.load(dst, n_ctx=64, n_threads=THREADS).logits(ids)
    path = os.path.join(dst, "model.safetensors")
    tensors = load_file(path)
    os.remove(path)
    shards = {"model-00001-of-00002.safetensors": {}, "model-00002-of-00002.safetensors": {}}
    weight_map = {}
    for i, name in enumerate(sorted(tensors)):  # alternate: qweight / qzeros / scales of a layer split up
        shard = sorted(shards)[i % 2]
        shards[shard][name] = tensors[name]
        weight_map[name] = shard
    for shard, part in shards.items():
        save_file(part, os.path.join(dst, shard))
    with open(os.path.join(dst, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    assert weight_map[f"{Q}.qweight"] != weight_map[f"{Q}.qzeros"]
    np.testing.assert_array_equal(pyllm.load(dst, n_ctx=64, n_threads=THREADS).logits(ids), want)
