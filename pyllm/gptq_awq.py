"""gptq_awq.py: Hugging Face checkpoints quantized to 4 bits with GPTQ (auto-gptq / gptqmodel / optimum)
or AWQ (autoawq, GEMM packing): reading config.json's quantization_config (or the quantizer's own
quantize_config.json / quant_config.json in older folders), checking each quantized
linear's tensors, and turning them into engine tensors without a round trip through 16-bit.

Formats (per linear layer `P` = e.g. model.layers.0.self_attn.q_proj, weight W [out, in]):
  * GPTQ: P.qweight int32 [in/8, out] (8 4-bit values per int32 along the input dimension, the lowest
    bits first), P.qzeros int32 [n_groups, out/8] (the same packing along the output dimension),
    P.scales fp16 [n_groups, out], P.g_idx int32 [in] (each input column's group; absent: column // group
    size). W[o, i] = s[g, o] * (q[o, i] - z[g, o]) with g = g_idx[i]. The classic checkpoint format
    ("gptq") stores z - 1 in the 4-bit field (so z = field + 1, 1..16); "gptq_v2" stores z.
  * AWQ GEMM: P.qweight int32 [in, out/8], P.qzeros int32 [in/group, out/8], both packed along the
    output dimension in AWQ's interleaved order (the 4-bit fields of one int32, lowest first, hold
    output columns 0, 2, 4, 6, 1, 3, 5, 7 of its 8), P.scales fp16 [in/group, out];
    W[o, i] = s[i // group, o] * (q[o, i] - z[i // group, o]).
A layer the checkpoint keeps in float (P.weight, e.g. lm_head, AWQ's modules_to_not_convert) loads as
any float tensor does; biases (P.bias) are separate tensors as in float checkpoints.

How they run: every 32 input columns of a row that lie in one group become one ggml 4-bit block, with
d = s exactly and the stored 4-bit values bit for bit:
  * symmetric layers (every zero point 8, GPTQ's sym=true): Q4_0 blocks (value = d (q - 8)), exactly
    the checkpoint's weights, through the engine's fastest 4-bit path (repacked Q4_0 gemm), 4.5 bits;
  * others (AWQ, asymmetric GPTQ): Q4_1 blocks (value = d q + m, fp16 d and m) with m = -s z rounded
    to fp16. That rounding is the only change: per weight |m - (-s z)| <= 2^-11 |s z| (half an fp16
    ulp; 2^-25 absolute when s z is below fp16's normal range), at most 1/128 of the scale s, against a
    quantization step of s; exact when s z is an fp16 number. 5 bits per weight.
A tensor maps this way when every 32-column block lies in one group: group sizes that are multiples
of 32 (32, 64, 128, ...) or -1 (one group per row), without act-order. MoE experts stacked into one
tensor share one type (Q4_1 unless all are symmetric: a Q4_0 block is a Q4_1 one with m = -8 d).

What does not map, and is dequantized instead (exactly, in float32) and stored as F16 (a warning names
the tensors): act-order checkpoints (desc_act: g_idx scatters a group's columns over the row, so a
32-column block holds several groups' scales and zeros), group sizes that are not multiples of 32,
rows whose length is not a multiple of 32, scales that are not fp16 numbers (bf16/f32 scales outside
fp16's range or precision), and s * z beyond fp16's range. F16 keeps each dequantized weight to within
2^-11 of its value (the relative bound of Q4_1's m), where re-quantizing the scattered groups to
a 4-bit or 8-bit block type would add an error of the order of the quantization step itself; it costs
16 bits per weight instead of 4.5 or 5.

Refused with UnsupportedArchitectureError naming the option: other quant_methods (bitsandbytes, exl2,
fp8, ...), bits other than 4, GPTQ formats other than gptq / gptq_v2 (marlin, bitblas) or packed
into other integers than int32 (gptqmodel's pack_dtype), AWQ packings
other than GEMM (gemv, gemv_fast, marlin), AWQ without zero points. Tensors with the wrong dtype,
mismatched shapes, g_idx values outside the groups, non-finite scales or a missing qzeros / scales are
ModelLoadErrors naming the tensor."""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .config import read_json_file, short_repr
from .errors import ModelLoadError, UnsupportedArchitectureError

Q4_0 = 2  # engine / ggml type ids
Q4_1 = 3
F16 = 1
F32 = 0
BLOCK = 32  # weights per Q4_0 / Q4_1 block
BLOCK_BYTES = {Q4_0: 18, Q4_1: 20}  # fp16 d, (Q4_1: fp16 m,) 16 bytes of 4-bit values
SYMMETRIC_ZERO = 8  # the zero point of symmetric 4-bit quantization: value = s (q - 8), i.e. Q4_0
AWQ_PACK_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # output column held by each 4-bit field of an AWQ int32
_INT_DTYPES = {"I32": "<i4", "U32": "<u4"}
_INDEX_DTYPES = {"I32": "<i4", "I64": "<i8"}
_SCALE_DTYPES = ("F16", "BF16", "F32")
_FP16_MAX = 65504.0
_CHUNK_WEIGHTS = 1 << 22  # weights unpacked at a time (bounds temporary memory; smaller stays in cache)


@dataclass(frozen=True)
class QuantScheme:
    """config.json's quantization_config, checked."""

    method: str  # "gptq" or "awq"
    group_size: int  # input columns per group; -1: one group per row
    zero_offset: int  # added to each stored zero point: 1 for GPTQ's classic format, else 0
    desc_act: bool  # GPTQ act-order (g_idx then decides the groups)
    source: str  # the config.json path, for messages

    @property
    def label(self) -> str:
        return "GPTQ" if self.method == "gptq" else "AWQ"


def _opt(qc: dict, keys, default=None):
    """The first of keys that qc has (not None), else default."""
    for k in keys:
        if qc.get(k) is not None:
            return k, qc[k]
    return keys[0], default


def _bool(qc: dict, key: str, default: bool, source: str) -> bool:
    v = qc.get(key, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise ModelLoadError(f"{source}: quantization_config.{key} must be true or false, got {short_repr(v)}")
    return v


def read_scheme(config: dict, source: str) -> Optional[QuantScheme]:
    """The quantization scheme config.json (parsed: config) declares, None for a float checkpoint.
    Unsupported methods and options raise UnsupportedArchitectureError naming them; malformed values
    ModelLoadError."""
    qc = config.get("quantization_config")
    if qc is None:
        return None
    if not isinstance(qc, dict):
        raise ModelLoadError(f"{source}: quantization_config must be an object, got {short_repr(qc)}")
    method = qc.get("quant_method")
    if not isinstance(method, str) or method.lower() not in ("gptq", "awq"):
        raise UnsupportedArchitectureError(
            f"{source}: quantization_config.quant_method {short_repr(method)} is not supported; pyllm reads 4-bit "
            f"'gptq' and 'awq' checkpoints (other quantized checkpoints: load the original float model, "
            f"optionally with quant=...)")
    method = method.lower()
    bkey, bits = _opt(qc, ("bits", "w_bit"))
    if bits != 4 or isinstance(bits, bool):
        raise UnsupportedArchitectureError(f"{source}: quantization_config.{bkey} = {short_repr(bits)} is not "
                                           f"supported: pyllm runs 4-bit {method.upper()} checkpoints only")
    gkey, gs = _opt(qc, ("group_size", "q_group_size"), 128)
    if not isinstance(gs, int) or isinstance(gs, bool) or not (gs == -1 or gs > 0):
        raise ModelLoadError(f"{source}: quantization_config.{gkey} must be -1 or a positive integer, "
                             f"got {short_repr(gs)}")
    if method == "gptq":
        fkey, fmt = _opt(qc, ("checkpoint_format", "format"), "gptq")
        if not isinstance(fmt, str) or fmt.lower() not in ("gptq", "gptq_v2"):
            raise UnsupportedArchitectureError(f"{source}: quantization_config.{fkey} {short_repr(fmt)} is not "
                                               f"supported (GPTQ formats pyllm reads: 'gptq', 'gptq_v2')")
        pack = qc.get("pack_dtype", "int32")  # gptqmodel can pack into other integer widths
        if pack not in (None, "int32", "torch.int32"):
            raise UnsupportedArchitectureError(f"{source}: quantization_config.pack_dtype {short_repr(pack)} is not "
                                               f"supported (pyllm reads GPTQ values packed into int32)")
        _bool(qc, "sym", True, source)  # symmetric or not, the zero points are stored either way
        return QuantScheme("gptq", gs, 1 if fmt.lower() == "gptq" else 0, _bool(qc, "desc_act", False, source),
                           source)
    vkey, version = _opt(qc, ("version", "format"), "gemm")
    if not isinstance(version, str) or version.lower() != "gemm":
        raise UnsupportedArchitectureError(f"{source}: quantization_config.{vkey} {short_repr(version)} is not "
                                           f"supported: pyllm reads AWQ's 'gemm' packing only")
    if not _bool(qc, "zero_point", True, source):
        raise UnsupportedArchitectureError(f"{source}: quantization_config.zero_point = false is not supported "
                                           f"(pyllm reads AWQ checkpoints with zero points)")
    return QuantScheme("awq", gs, 0, False, source)


# the quantizers' own config files, which older checkpoints have instead of config.json's
# quantization_config: auto-gptq's quantize_config.json, autoawq's quant_config.json
_QUANTIZER_FILES = (("quantize_config.json", "gptq"), ("quant_config.json", "awq"))


def scheme_of_folder(folder: str) -> Optional[QuantScheme]:
    """read_scheme of the folder's config.json, or of the quantizer's own file when config.json has no
    quantization_config (older auto-gptq / autoawq checkpoints)."""
    path = os.path.join(folder, "config.json")
    config = read_json_file(path)
    if config.get("quantization_config") is None:
        for name, method in _QUANTIZER_FILES:
            qpath = os.path.join(folder, name)
            if os.path.isfile(qpath):
                qc = read_json_file(qpath)
                return read_scheme({"quantization_config": {"quant_method": method, **qc}}, qpath)
    return read_scheme(config, path)


def _raw(sf, info, dtypes: dict) -> np.ndarray:
    return np.frombuffer(sf.buffer(info.name), dtype=dtypes[info.dtype]).reshape(info.shape)


def _nibbles(packed: np.ndarray, axis: int, order=range(8)) -> np.ndarray:
    """int32 array -> uint8 4-bit fields, each int32 expanded into 8 along axis, field t (bits 4t..4t+3)
    going to position order[t] of its 8."""
    u = packed.view(np.uint32) if packed.dtype.itemsize == 4 else packed.astype(np.uint32)
    r, c = u.shape
    out = np.empty((r, 8, c) if axis == 0 else (r, c, 8), dtype=np.uint8)
    tmp = np.empty_like(u)
    for t in range(8):
        np.right_shift(u, np.uint32(4 * t), out=tmp)
        np.bitwise_and(tmp, np.uint32(0xF), out=tmp)
        if axis == 0:
            out[:, order[t], :] = tmp
        else:
            out[:, :, order[t]] = tmp
    return out.reshape(r * 8, c) if axis == 0 else out.reshape(r, c * 8)


def _spread(w: np.ndarray) -> np.ndarray:
    """uint32 words -> uint64 with 4-bit field t of each word in the low half of byte t."""
    x = w.astype(np.uint64)
    x = (x | (x << np.uint64(16))) & np.uint64(0x0000FFFF0000FFFF)
    x = (x | (x << np.uint64(8))) & np.uint64(0x00FF00FF00FF00FF)
    return (x | (x << np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)


_AWQ_FIELD_OF_ROW = np.argsort(AWQ_PACK_ORDER)  # the 4-bit field of an AWQ int32 holding its output row k


class QuantizedLinear:
    """One GPTQ/AWQ linear layer of a checkpoint (its tensors checked when made; values read on use).
    shape: (out, in) as the float weight's."""

    def __init__(self, prefix: str, scheme: QuantScheme, tensors: dict):
        self.prefix, self.scheme = prefix, scheme

        def get(suffix, dtypes, required=True):
            name = f"{prefix}.{suffix}"
            if name not in tensors:
                if required:
                    raise ModelLoadError(f"{scheme.source}: {scheme.label} checkpoint has {prefix}.qweight but no "
                                         f"tensor {name!r}")
                return None
            sf, info = tensors[name]
            if info.dtype not in dtypes:
                raise ModelLoadError(f"{sf.path}: {scheme.label} tensor {name!r} has dtype {info.dtype}, expected "
                                     f"{' or '.join(dtypes)}")
            if len(info.shape) != (1 if suffix == "g_idx" else 2):
                raise ModelLoadError(f"{sf.path}: {scheme.label} tensor {name!r} has shape {list(info.shape)}, "
                                     f"expected {'a vector' if suffix == 'g_idx' else 'a matrix'}")
            return sf, info

        self.qweight = get("qweight", _INT_DTYPES)
        self.qzeros = get("qzeros", _INT_DTYPES)
        self.scales = get("scales", _SCALE_DTYPES)
        self.g_idx = get("g_idx", _INDEX_DTYPES, required=False) if scheme.method == "gptq" else None
        qw, qz, sc = (t[1].shape for t in (self.qweight, self.qzeros, self.scales))
        if scheme.method == "gptq":
            n_in, n_out = qw[0] * 8, qw[1]
        else:
            n_in, n_out = qw[0], qw[1] * 8
        self.shape = (n_out, n_in)
        gs = scheme.group_size
        if scheme.method == "awq" and gs != -1 and n_in % gs:
            raise ModelLoadError(f"{self._path('qweight')}: {prefix}.qweight has {n_in} input rows, not a multiple "
                                 f"of group_size {gs} (AWQ groups whole rows)")
        n_groups = 1 if gs == -1 else -(-n_in // gs)  # also with act-order: g_idx then spreads the groups
        if sc != (n_groups, n_out):
            raise ModelLoadError(f"{self._path('scales')}: {prefix}.scales has shape {list(sc)}, expected "
                                 f"[{n_groups}, {n_out}] ({prefix}.qweight {list(qw)} with group_size {gs})")
        if n_out % 8 or qz != (n_groups, n_out // 8):
            raise ModelLoadError(f"{self._path('qzeros')}: {prefix}.qzeros has shape {list(qz)}, expected "
                                 f"[{n_groups}, {n_out // 8}] ({prefix}.scales {list(sc)}, 8 zero points per int32)")
        if self.g_idx is not None and self.g_idx[1].shape != (n_in,):
            raise ModelLoadError(f"{self._path('g_idx')}: {prefix}.g_idx has shape {list(self.g_idx[1].shape)}, "
                                 f"expected [{n_in}] (one group per input column)")
        self.n_groups = n_groups
        self._groups = None

    def _path(self, suffix: str) -> str:
        t = getattr(self, suffix, None)
        return t[0].path if t else self.scheme.source

    # --- values ------------------------------------------------------------------------------------
    def groups(self) -> np.ndarray:
        """Each input column's group (int64 [in]), checked against the groups the scales hold."""
        if self._groups is None:
            n_in = self.shape[1]
            if self.g_idx is None:
                gs = n_in if self.scheme.group_size == -1 else self.scheme.group_size
                g = np.arange(n_in, dtype=np.int64) // gs
            else:
                g = _raw(*self.g_idx, _INDEX_DTYPES).astype(np.int64)
                bad = np.flatnonzero((g < 0) | (g >= self.n_groups))
                if bad.size:
                    raise ModelLoadError(f"{self._path('g_idx')}: {self.prefix}.g_idx[{bad[0]}] = {g[bad[0]]} is "
                                         f"outside the {self.n_groups} groups of {self.prefix}.scales")
            self._groups = g
        return self._groups

    def scale_values(self) -> np.ndarray:
        """scales as float32 [n_groups, out] (exact), checked finite."""
        sf, info = self.scales
        s = sf.numpy(info.name)
        if not np.all(np.isfinite(s)):
            raise ModelLoadError(f"{sf.path}: {self.prefix}.scales holds non-finite values (corrupt file)")
        return s

    def zero_values(self) -> np.ndarray:
        """zero points z as int32 [n_groups, out] (stored field + the format's offset)."""
        z = _nibbles(_raw(*self.qzeros, _INT_DTYPES), axis=1,
                     order=AWQ_PACK_ORDER if self.scheme.method == "awq" else range(8))
        return z.astype(np.int32) + self.scheme.zero_offset

    def q_values(self, rows) -> np.ndarray:
        """The 4-bit values of the given output rows (slice or index array): uint8 [n_rows, in]."""
        packed = _raw(*self.qweight, _INT_DTYPES)
        if self.scheme.method == "gptq":
            return np.ascontiguousarray(_nibbles(packed[:, rows], axis=0).T)
        return np.ascontiguousarray(self._awq_values(rows).T)

    def _awq_values(self, rows) -> np.ndarray:
        """AWQ's 4-bit values of the given output rows in the file's orientation: uint8 [in, n_rows]."""
        packed = _raw(*self.qweight, _INT_DTYPES)
        if isinstance(rows, slice):  # rows are packed 8 to an int32: unpack the int32 columns they touch
            r0, r1, _ = rows.indices(self.shape[0])
            c0, c1 = r0 // 8, -(-r1 // 8)
            return _nibbles(packed[:, c0:c1], axis=1, order=AWQ_PACK_ORDER)[:, r0 - 8 * c0 : r1 - 8 * c0]
        rows = np.asarray(rows)
        cols = np.unique(rows // 8)
        q = _nibbles(packed[:, cols], axis=1, order=AWQ_PACK_ORDER)
        return q[:, np.searchsorted(cols, rows // 8) * 8 + rows % 8]

    def dequantized(self, rows=slice(None)) -> np.ndarray:
        """W[rows], float32 [n_rows, in]: with fp16 / bf16 scales (at most 11 significant bits) times q - z
        (at most 5 bits) the product has at most 16 significant bits, so the float32 value is exact (f32
        scales: rounded once to float32)."""
        g = self.groups()
        s, z = self.scale_values()[:, rows], self.zero_values()[:, rows]
        q = self.q_values(rows).astype(np.float32)
        return s.T[:, g] * (q - z.T[:, g].astype(np.float32))

    # --- engine storage ------------------------------------------------------------------------------
    def storage(self) -> tuple:
        """(engine type id, None) when the tensor maps onto 4-bit blocks: Q4_0 when every zero point is
        8 (symmetric), else Q4_1; otherwise (F16 or F32, the reason)."""
        n_in = self.shape[1]
        why = None
        if n_in % BLOCK:
            why = f"its rows ({n_in} weights) are not whole 32-weight blocks"
        else:
            g = self.groups().reshape(-1, BLOCK)
            if np.any(g != g[:, :1]):
                why = ("act-order (desc_act): its g_idx puts some 32-column blocks in several groups"
                       if self.scheme.desc_act else "its g_idx puts some 32-column blocks in several groups")
            else:
                s, z = self.scale_values(), self.zero_values()
                with np.errstate(over="ignore"):
                    s16 = s.astype(np.float16)
                    m = (s * z).astype(np.float16)
                if np.any(s16.astype(np.float32) != s):
                    why = "its scales are not fp16 numbers"
                elif not np.all(np.isfinite(m)):
                    why = "scale x zero point exceeds fp16's range"
        if why is None:
            return (Q4_0 if np.all(z == SYMMETRIC_ZERO) else Q4_1), None
        s = self.scale_values()
        limit = float(np.abs(s).max()) * 16 if s.size else 0.0  # |q - z| <= 16
        return (F16 if limit <= _FP16_MAX else F32), why

    def engine_rows(self, type_id: int, rows=None) -> np.ndarray:
        """The given output rows (None: all; a slice or an index array) as type_id bytes: uint8
        [n_rows, row bytes]. type_id: Q4_0 / Q4_1 (as storage() allows), F16 or F32 (dequantized)."""
        n_out, n_in = self.shape
        idx = np.arange(n_out)[rows if rows is not None else slice(None)]
        step = max(1, _CHUNK_WEIGHTS // max(1, n_in))
        parts = []
        for c0 in range(0, len(idx), step):
            sel = idx[c0 : c0 + step]
            sel = slice(int(sel[0]), int(sel[-1]) + 1) if np.all(np.diff(sel) == 1) else sel
            if type_id in BLOCK_BYTES:
                parts.append(self._blocks(sel, type_id))
            elif type_id in (F16, F32):
                w = self.dequantized(sel)
                w = np.ascontiguousarray(w, dtype=np.float16 if type_id == F16 else np.float32)
                parts.append(w.view(np.uint8).reshape(w.shape[0], -1))
            else:
                raise ValueError(f"{self.prefix}: cannot store a {self.scheme.label} tensor as type {type_id}")
        if not parts:
            return np.zeros((0, 0), dtype=np.uint8)
        return np.concatenate(parts)

    def _blocks(self, rows, type_id: int) -> np.ndarray:
        """Q4_0 blocks (d = s; symmetric layers only, z = 8: exact) or Q4_1 blocks (d = s, m = -s z)."""
        n_in = self.shape[1]
        nb = n_in // BLOCK
        gb = self.groups()[::BLOCK]  # the group of each block (storage() checked they are whole)
        s = self.scale_values()[:, rows]
        z = self.zero_values()[:, rows]
        d = np.ascontiguousarray(s.T[:, gb], dtype=np.float16)  # exact (storage() checked)
        n, size = d.shape[0], BLOCK_BYTES[type_id]
        out = np.empty((n, nb, size), dtype=np.uint8)
        out[:, :, 0:2] = d.view(np.uint8).reshape(n, nb, 2)
        if type_id == Q4_1:  # the one rounding: -s z (exact in float32) to fp16
            m = np.ascontiguousarray((-(s * z)).T[:, gb], dtype=np.float16)
            out[:, :, 2:4] = m.view(np.uint8).reshape(n, nb, 2)
        elif np.any(z != SYMMETRIC_ZERO):
            raise ValueError(f"{self.prefix}: Q4_0 holds symmetric layers only (zero point 8)")
        out[:, :, size - 16 :] = self._block_nibbles(rows, nb)
        return out.reshape(n, nb * size)

    def _block_nibbles(self, rows, nb: int) -> np.ndarray:
        """The Q4_0 / Q4_1 value bytes of the given rows: uint8 [n_rows, nb, 16], byte j of a block holding
        its weight j (low 4 bits) and weight j + 16 (high), as ggml lays them out."""
        if self.scheme.method == "gptq":  # 4 int32 per block and row, weights 0-7, 8-15, 16-23, 24-31
            w = _raw(*self.qweight, _INT_DTYPES)[:, rows].view(np.uint32)
            w = w.reshape(nb, 4, w.shape[1])
            lo = _spread(w[:, 0]) | (_spread(w[:, 2]) << np.uint64(4))  # bytes 0-7
            hi = _spread(w[:, 1]) | (_spread(w[:, 3]) << np.uint64(4))  # bytes 8-15
            both = np.ascontiguousarray(np.stack([lo, hi], axis=-1).transpose(1, 0, 2), dtype="<u8")
            return both.view(np.uint8).reshape(w.shape[2], nb, 16)
        # AWQ: an int32 holds 8 output rows of one input column; pair input columns 32b + j and
        # 32b + 16 + j field by field in the packed words, then move the bytes to row-major order
        packed = _raw(*self.qweight, _INT_DTYPES)
        if isinstance(rows, slice):
            r0, r1, _ = rows.indices(self.shape[0])
            cols = np.arange(r0 // 8, -(-r1 // 8))
            where = slice(r0 - 8 * (r0 // 8), r1 - 8 * (r0 // 8))
        else:
            rows = np.asarray(rows)
            cols = np.unique(rows // 8)
            where = np.searchsorted(cols, rows // 8) * 8 + rows % 8
        w = packed[:, cols].view(np.uint32).reshape(nb, 2, 16, len(cols))
        pairs = _spread(w[:, 0]) | (_spread(w[:, 1]) << np.uint64(4))  # byte t: output AWQ_PACK_ORDER[t]
        by = np.ascontiguousarray(pairs, dtype="<u8").view(np.uint8).reshape(nb, 16, len(cols), 8)
        by = by[:, :, :, _AWQ_FIELD_OF_ROW].transpose(2, 3, 0, 1).reshape(len(cols) * 8, nb, 16)
        return by[where]


def quantized_linears(scheme: Optional[QuantScheme], tensors: dict) -> dict:
    """float weight name ("<prefix>.weight") -> QuantizedLinear, for every "<prefix>.qweight" in the
    checkpoint's tensors (name -> (file, info)); {} without a scheme. A checkpoint without a scheme
    but with qweight tensors, or with a scheme and both forms of one layer, is a ModelLoadError."""
    prefixes = sorted(n[: -len(".qweight")] for n in tensors if n.endswith(".qweight"))
    if scheme is None:
        if prefixes:
            raise ModelLoadError(f"{tensors[prefixes[0] + '.qweight'][0].path}: tensor {prefixes[0] + '.qweight'!r} "
                                 f"is a quantized weight but config.json has no quantization_config")
        return {}
    out = {}
    for p in prefixes:
        if f"{p}.weight" in tensors:
            raise ModelLoadError(f"{scheme.source}: the checkpoint has both {p}.weight and {p}.qweight")
        out[f"{p}.weight"] = QuantizedLinear(p, scheme, tensors)
    return out


def storage_of(linears: list) -> tuple:
    """(type id, reason) of one engine tensor made of these layers (stacked experts share one type):
    (Q4_0, None) when every one is symmetric, (Q4_1, None) when each maps onto 4-bit blocks (a Q4_0
    block is a Q4_1 one with m = -8 d, exactly), else F16 (or F32) for all and the first reason."""
    plans = [ql.storage() for ql in linears]
    why = next((why for _, why in plans if why), None)
    if why is None:
        return (Q4_0 if all(t == Q4_0 for t, _ in plans) else Q4_1), None
    return (F32 if any(t == F32 for t, _ in plans) else F16), why


def engine_tensor(linears: list, rows=None) -> tuple:
    """The engine type and bytes (uint8 array) of a tensor made of these quantized layers stacked
    (MoE experts) or of a row range (start, stop) of one (a fused Phi-3 weight). Returns
    (type_id, data, reason) where reason says why the tensor is dequantized (None: Q4_0 / Q4_1)."""
    tid, why = storage_of(linears)
    sel = None if rows is None else slice(rows[0], rows[1])
    data = np.concatenate([ql.engine_rows(tid, sel).reshape(-1) for ql in linears])
    return tid, data, why


def warn_dequantized(where: str, dequantized: list) -> None:
    """One warning for a load: which quantized layers were dequantized (list of (name, reason, type))."""
    layers = list(dict.fromkeys(n for n, _, _ in dequantized))  # a fused layer's row ranges: once
    if not layers:
        return
    names = ", ".join(layers[:4]) + (f" and {len(layers) - 4} more" if len(layers) > 4 else "")
    kinds = {"F16" if t == F16 else "F32" for _, _, t in dequantized}
    warnings.warn(f"{where}: {len(layers)} 4-bit layers cannot map onto 4-bit blocks and were dequantized to "
                  f"{'/'.join(sorted(kinds))} ({dequantized[0][1]}): {names}", stacklevel=3)
