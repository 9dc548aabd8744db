"""gptq_awq_packing.py: test helpers that write GPTQ- and AWQ-format checkpoints from a float one,
following the formats' published packing rules (written from their description, independent of
pyllm/gptq_awq.py), and the float checkpoint holding exactly the weights those files dequantize to.

GPTQ: qweight int32 [in/8, out] with 8 4-bit values per int32 along the input dimension (lowest bits
first); qzeros int32 [groups, out/8] packed the same way along the output dimension, holding z - 1 in
the classic "gptq" format and z in "gptq_v2"; scales fp16 [groups, out]; g_idx int32 [in]. AWQ (GEMM):
qweight int32 [in, out/8] and qzeros int32 [groups, out/8] packed along the output dimension with the
4-bit fields of an int32 holding output columns 0, 2, 4, 6, 1, 3, 5, 7; scales fp16 [groups, out].
Either way W[o, i] = s[g(i), o] * (q[o, i] - z[g(i), o])."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np

AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def is_linear(name: str) -> bool:
    """The layers GPTQ / AWQ quantize: every projection inside the decoder layers (not the MoE router)."""
    return name.startswith("model.layers.") and name.endswith(".weight") and (
        "_proj." in name or any(name.endswith(f".{w}.weight") for w in ("w1", "w2", "w3")))


def quantize_groups(w: np.ndarray, group_size: int, sym: bool, desc_act: bool, zero_range, rng):
    """GPTQ-style round-to-nearest 4-bit quantization of w [out, in]: returns (q uint8 [out, in],
    scales float16 [groups, out], zeros int [groups, out], g_idx int [in]). desc_act: the columns are
    grouped in a random order (as act-order groups them by activation size). zero_range: (lo, hi) the
    zero points are clipped to (asymmetric), e.g. (1, 16) for the classic GPTQ format, which stores z - 1."""
    out_f, in_f = w.shape
    gs = in_f if group_size == -1 else group_size
    order = rng.permutation(in_f) if desc_act else np.arange(in_f)
    g_idx = np.empty(in_f, dtype=np.int64)
    g_idx[order] = np.arange(in_f) // gs
    n_groups = -(-in_f // gs)
    scales = np.empty((n_groups, out_f), np.float16)
    zeros = np.empty((n_groups, out_f), np.int64)
    q = np.empty((out_f, in_f), np.uint8)
    for g in range(n_groups):
        cols = np.flatnonzero(g_idx == g)
        x = w[:, cols].astype(np.float64)
        if sym:
            s = np.maximum(np.abs(x).max(1), 1e-6) / 7.5
            z = np.full(out_f, 8)
        else:
            lo, hi = np.minimum(x.min(1), 0), np.maximum(x.max(1), 0)
            s = np.maximum(hi - lo, 1e-6) / 15
            z = np.clip(np.round(-lo / s), *zero_range).astype(np.int64)
        s16 = s.astype(np.float16)
        scales[g], zeros[g] = s16, z
        q[:, cols] = np.clip(np.round(x / s16.astype(np.float64)[:, None]) + z[:, None], 0, 15).astype(np.uint8)
    return q, scales, zeros, g_idx


def dequantize(q, scales, zeros, g_idx) -> np.ndarray:
    """W = s * (q - z) per column's group, float32 (exact: an fp16 times an integer below 32)."""
    s = scales.astype(np.float32)[g_idx].T
    return s * (q.astype(np.float32) - zeros[g_idx].T.astype(np.float32))


def _pack_along_rows(v: np.ndarray) -> np.ndarray:
    """[8k, c] 4-bit values -> int32 [k, c]: row 8j + t in bits 4t..4t+3 of row j."""
    v = np.ascontiguousarray(v, dtype=np.uint32).reshape(-1, 8, v.shape[1])
    return np.ascontiguousarray(sum(v[:, t, :] << np.uint32(4 * t) for t in range(8)), dtype=np.uint32).view(np.int32)


def _pack_along_cols(v: np.ndarray, order=range(8)) -> np.ndarray:
    """[r, 8k] 4-bit values -> int32 [r, k]: bits 4t..4t+3 of column j hold column 8j + order[t]."""
    v = np.ascontiguousarray(v, dtype=np.uint32).reshape(v.shape[0], -1, 8)
    packed = sum(v[:, :, o] << np.uint32(4 * t) for t, o in enumerate(order))
    return np.ascontiguousarray(packed, dtype=np.uint32).view(np.int32)


def pack_linear(method: str, fmt: str, q, scales, zeros, g_idx) -> dict:
    """The checkpoint tensors of one quantized linear (suffix -> array)."""
    if method == "gptq":
        stored = (zeros - 1) & 0xF if fmt == "gptq" else zeros  # classic GPTQ stores z - 1
        return {"qweight": _pack_along_rows(q.T), "qzeros": _pack_along_cols(stored), "scales": scales,
                "g_idx": g_idx.astype(np.int32)}
    return {"qweight": _pack_along_cols(q.T, AWQ_ORDER), "qzeros": _pack_along_cols(zeros, AWQ_ORDER),
            "scales": scales}


def write_quantized(src: str, dst: str, ref: str, method: str = "gptq", fmt: str = "gptq", group_size: int = 128,
                    sym: bool = False, desc_act: bool = False, seed: int = 0, quant_config: dict | None = None,
                    edit=None, also=()) -> tuple:
    """From the float checkpoint folder src, writes dst (the GPTQ / AWQ checkpoint: quantized linears,
    other tensors fp16 as quantizers save them) and ref (a float32 checkpoint of the same model: the
    exactly dequantized weights, the fp16 tensors widened). Returns (dst, ref, {linear prefix: (q,
    scales, zeros, g_idx)}). also: more weights to quantize (e.g. "lm_head.weight", as gptqmodel's
    lm_head option). edit(tensors) may change dst's tensors before they are written (bad input)."""
    from safetensors.numpy import load_file, save_file

    rng = np.random.default_rng(seed)
    tensors = load_file(os.path.join(src, "model.safetensors"))
    out, dense, parts = {}, {}, {}
    zero_range = (1, 16) if method == "gptq" and fmt == "gptq" else (0, 15)
    for name in sorted(tensors):
        w = tensors[name]
        if is_linear(name) or name in also:
            prefix = name[: -len(".weight")]
            q, s, z, g = quantize_groups(w, group_size, sym, desc_act, zero_range, rng)
            parts[prefix] = (q, s, z, g)
            for k, v in pack_linear(method, fmt, q, s, z, g).items():
                out[f"{prefix}.{k}"] = v
            dense[name] = dequantize(q, s, z, g)
        else:
            out[name] = w.astype(np.float16)
            dense[name] = out[name].astype(np.float32)
    if edit is not None:
        edit(out)
    for folder in (dst, ref):
        os.makedirs(folder, exist_ok=True)
        for f in os.listdir(src):
            if f not in ("model.safetensors", "config.json"):
                shutil.copy(os.path.join(src, f), folder)
    out = {k: np.ascontiguousarray(v) for k, v in out.items()}  # safetensors writes the raw buffer
    save_file(out, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    save_file(dense, os.path.join(ref, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(src, "config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(ref, "config.json"), "w") as f:
        json.dump(cfg, f)
    if quant_config is None:
        quant_config = ({"quant_method": "gptq", "bits": 4, "group_size": group_size, "desc_act": desc_act,
                         "sym": sym, "checkpoint_format": fmt} if method == "gptq" else
                        {"quant_method": "awq", "bits": 4, "group_size": group_size, "zero_point": True,
                         "version": "gemm"})
    cfg["quantization_config"] = quant_config
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(cfg, f)
    return dst, ref, parts
