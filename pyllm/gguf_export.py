"""gguf_export.py: writes a Hugging Face checkpoint of any family pyllm runs (pyllm.arch: Llama,
Mistral, Mixtral, Qwen2, Qwen3, Phi-3) as a GGUF file (llama.cpp's format) in f32, f16, bf16, q8_0,
q4_0 or one of llama.cpp's K-quant / IQ4 / legacy mixes (q4_k_m, q6_k, iq4_xs, q5_0, ...) — what `pyllm quantize` and tools/quantize.py run. Tensor names, fusions (Phi-3's attn_qkv
and gate+up ffn_up), stacked experts (ffn_*_exps, router ffn_gate_inp kept F32), biases, per-head
norms and the architecture's metadata keys follow llama.cpp's converter for that architecture; for
Phi-3 LongRoPE the rope_factors_long / _short tensors and rope.scaling.attn_factor /
original_context_length. With --lora, adapters are merged into the float weights first. A GPTQ /
AWQ 4-bit folder's quantized layers are written as the Q4_0 / Q4_1 blocks pyllm.load runs
(pyllm/gptq_awq.py; act-order ones dequantized to F16), whatever the requested type, which applies
to the float tensors.

For "llama" models the file follows llama.cpp's convert_hf_to_gguf.py: the same metadata keys,
tensor names (token_embd, blk.N.attn_q, ...), Q/K rows permuted for interleaved RoPE, Llama 3.1
"llama3" rope scaling stored as a `rope_freqs.weight` tensor of frequency factors, linear scaling
as llama.rope.scaling.*, Mistral written as architecture "llama". Which tensor gets which type
is pyllm.quant_mixes.plan_types (norms F32, q4_0's LM head Q8_0, llama.cpp's rules for its mixes
such as q4_k_m), and the bytes come from
pyllm.quantization.convert (C, all threads) with the same scale-choosing method as
pyllm.load(hf_dir, quant=...), i.e. exactly what quant-on-load runs (method "reference" instead gives
ggml's own quantizer: tensor bytes identical to convert_hf_to_gguf.py / llama-quantize).

General metadata (name, size label, general.sampling.* from generation_config.json) comes from
gguf's Metadata heuristics, as in the converter. One addition: `llama.attention.sliding_window`
when the checkpoint has one (Mistral 7B v0.1). The converter drops the window; pyllm records it
so that pyllm's loader reproduces the Hugging Face model exactly. llama.cpp ignores the key for
"llama" models and runs full attention, as it does for converter-made Mistral files; the two only
differ once a sequence is longer than the window.

Writing streams: the header, metadata and tensor infos go first (through gguf's GGUFWriter),
then each tensor is read from the mmapped safetensors in row chunks, converted, written and
dropped, so memory stays at one chunk, never the whole model. The output is written under a
temporary name in the same directory and renamed at the end; on any failure (disk full,
Ctrl-C, a bad checkpoint) the temporary file is removed and nothing named OUT exists."""
from __future__ import annotations

import errno
import math
import os
import secrets
import sys
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .config import ModelConfig, read_json_file
from .errors import ModelLoadError
from .adapters import add_lora_argument, lora_spec
from .arch.family import engine_shapes
from .gptq_awq import (Q4_0 as Q4_0_TYPE, Q4_1 as Q4_1_TYPE, quantized_linears, scheme_of_folder, storage_of,
                       warn_dequantized)
# DEFAULT_METHOD: how q4_0/q8_0 scales are chosen by default, as pyllm.load(hf_dir, quant=...) does
from .quant_mixes import plan_types
from .quantization import DEFAULT_METHOD, METHODS, QUANT_TYPES, TYPE_IDS, check_quant, convert
from .safetensors_file import DTYPES, open_checkpoint

EXPORT_TYPES = QUANT_TYPES
# llama.cpp's LlamaFileType (general.file_type)
FILE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9, "q2_k": 10, "q3_k_s": 11,
              "q3_k_m": 12, "q3_k_l": 13, "q4_k_s": 14, "q4_k_m": 15, "q5_k_s": 16, "q5_k_m": 17, "q6_k": 18,
              "iq4_nl": 25, "iq4_xs": 30, "bf16": 32}
_CHUNK_BYTES = 64 << 20  # float32 bytes converted at a time


@dataclass(frozen=True)
class ExportResult:
    path: str
    file_bytes: int
    data_bytes: int
    n_params: int
    n_tensors: int

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.data_bytes / max(1, self.n_params)


@dataclass
class _Entry:
    name: str  # GGUF tensor name
    shape: tuple  # [rows, cols] / [n] / stacked experts [n_expert, rows, cols]
    type_id: int
    hf: Optional[tuple] = None  # source tensors, stacked in order (None: `data`)
    data: Optional[np.ndarray] = None  # float32, for generated tensors (rope_freqs)
    heads: int = 0  # > 0: permute rows for interleaved RoPE with this many heads
    lora: Optional[dict] = None  # HF name -> [LoraFactors] merged into the rows before conversion
    key: Optional[tuple] = None  # (engine name, layer) of the first engine tensor it holds (importance)
    quantized: Optional[tuple] = None  # GPTQ / AWQ layers (pyllm.gptq_awq), written from their 4-bit values

    @property
    def nbytes(self) -> int:
        from . import _engine

        rows = int(np.prod(self.shape[:-1])) if len(self.shape) >= 2 else 1
        return rows * _engine.row_bytes(self.type_id, self.shape[-1])


def _rope_permutation(rows: int, heads: int) -> np.ndarray:
    """Row order of llama.cpp's permute(): per head, the rotate_half halves are interleaved
    (new row h*hd + 2j + t <- old row h*hd + t*hd/2 + j)."""
    hd = rows // heads
    return np.arange(rows).reshape(heads, 2, hd // 2).swapaxes(1, 2).reshape(-1)


def _llama3_rope_factors(cfg: ModelConfig) -> np.ndarray:
    """Frequency factors as convert_hf_to_gguf.py computes them (float32 arithmetic)."""
    s = cfg.rope_scaling
    f32 = np.float32
    base_cfg = ModelConfig(**{**cfg.__dict__, "rope_scaling": {}})
    freqs = base_cfg.rope_inv_freq()
    factor = float(s.get("factor", 8.0))
    low, high = float(s.get("low_freq_factor", 1.0)), float(s.get("high_freq_factor", 4.0))
    old_ctx = float(s.get("original_max_position_embeddings", 8192))
    # the converter does this with torch float32 scalars; Python numbers meeting them round to float32
    low_wavelen, high_wavelen = f32(old_ctx / low), f32(old_ctx / high)
    out = []
    for freq in freqs:
        wavelen = f32(2 * math.pi) / freq
        if wavelen < high_wavelen:
            out.append(f32(1))
        elif wavelen > low_wavelen:
            out.append(f32(factor))
        else:
            smooth = (f32(old_ctx) / wavelen - f32(low)) / f32(high - low)
            out.append(f32(1) / ((f32(1) - smooth) / f32(factor) + smooth))
    return np.array(out, dtype=np.float32)


def _read_json(path: str) -> dict:
    """A folder's optional JSON file ({} when absent; bad contents raise ModelLoadError)."""
    if not os.path.exists(path):
        return {}
    d = read_json_file(path, object_required=False)
    return d if isinstance(d, dict) else {}


def _chat_template(folder: str) -> Optional[str]:
    """The folder's chat template, looked up as transformers does."""
    p = os.path.join(folder, "chat_template.jinja")
    if os.path.isfile(p):
        with open(p, encoding="utf-8") as f:
            return f.read()
    t = _read_json(os.path.join(folder, "tokenizer_config.json")).get("chat_template")
    if t is None:
        t = _read_json(os.path.join(folder, "chat_template.json")).get("chat_template")
    if isinstance(t, list):
        named = {x.get("name"): x.get("template") for x in t if isinstance(x, dict)}
        t = named.get("default") or next(iter(named.values()), None)
    return t if isinstance(t, str) and t else None


def _plan(folder: str, cfg: ModelConfig, quant: str, tensors: dict, adapters=None, pure: bool = False,
          has_imatrix: bool = False, types: Optional[dict] = None, qlin: Optional[dict] = None) -> list:
    """Every tensor to write, checked against the config, in llama.cpp's order: the family's GGUF
    tensors (pyllm.arch), each made of the Hugging Face tensors its engine tensors come from (a fused
    GGUF tensor from the fused HF one, stacked experts from each expert's). qlin: weight name ->
    GPTQ / AWQ layer (pyllm.gptq_awq), written as Q4_0 / Q4_1 blocks (or dequantized) whatever quant
    says."""
    fam = cfg.family
    expect = engine_shapes(cfg)
    tied = cfg.tie_word_embeddings
    if types is None:
        types = plan_types(cfg, quant, pure, has_imatrix)

    def entry(gguf_name, engs, hf_names, heads=0, layer=-1):
        if qlin and any(hf in qlin for hf in hf_names):
            return quantized_entry(gguf_name, engs, hf_names, heads)
        infos = []
        for hf in hf_names:
            if hf not in tensors:
                raise ModelLoadError(f"{folder}: checkpoint has no tensor {hf!r}")
            sf, info = tensors[hf]
            if info.dtype not in DTYPES:
                raise ModelLoadError(f"{sf.path}: tensor {hf!r} has dtype {info.dtype}; supported: {', '.join(DTYPES)}")
            infos.append((sf, info))
        # a fused tensor holds its engine tensors' rows one after the other
        want = expect[engs[0]] if len(engs) == 1 else (sum(expect[e][0] for e in engs), expect[engs[0]][1])
        for sf, info in infos:
            if tuple(info.shape) != want:
                raise ModelLoadError(f"{sf.path}: tensor {info.name!r} has shape {list(info.shape)}, expected "
                                     f"{list(want)} from config.json")
        shape = want if len(hf_names) == 1 else (len(hf_names), *want)
        tid = types[(engs[0], layer)]
        lora = {n: adapters.factors[n] for n in hf_names if n in adapters.factors} if adapters else None
        return _Entry(gguf_name, tuple(shape), tid, hf=tuple(hf_names), heads=heads, lora=lora or None,
                      key=(engs[0], layer))

    def quantized_entry(gguf_name, engs, hf_names, heads):
        if any(hf not in qlin for hf in hf_names):
            raise ModelLoadError(f"{folder}: {hf_names[0]!r} is stored quantized but "
                                 f"{next(hf for hf in hf_names if hf not in qlin)!r} is not")
        want = expect[engs[0]] if len(engs) == 1 else (sum(expect[e][0] for e in engs), expect[engs[0]][1])
        lins = tuple(qlin[hf] for hf in hf_names)
        for ql in lins:
            if tuple(ql.shape) != want:
                raise ModelLoadError(f"{folder}: {ql.prefix}.qweight holds a weight of shape {list(ql.shape)}, "
                                     f"expected {list(want)} from config.json")
        if adapters and any(hf in adapters.factors for hf in hf_names):
            raise ModelLoadError(f"{folder}: a LoRA adapter cannot be merged into the 4-bit weight {hf_names[0]!r}; "
                                 f"load the folder with lora= instead (kept beside the 4-bit weights)")
        tid, why = storage_of(list(lins))
        if why is not None:
            dequantized.append((hf_names[0], why, tid))
        shape = want if len(hf_names) == 1 else (len(hf_names), *want)
        return _Entry(gguf_name, tuple(shape), tid, hf=tuple(hf_names), heads=heads, quantized=lins)

    dequantized = []
    out = []
    if cfg.rope_scaling.get("rope_type") == "llama3":
        f = _llama3_rope_factors(cfg)
        out.append(_Entry("rope_freqs.weight", f.shape, TYPE_IDS["f32"], data=f))
    if cfg.rope_scaling.get("rope_type") == "longrope":
        for key, name in (("long_factor", "rope_factors_long.weight"), ("short_factor", "rope_factors_short.weight")):
            f = np.asarray(cfg.rope_scaling[key], dtype=np.float32)
            out.append(_Entry(name, f.shape, TYPE_IDS["f32"], data=f))
    out.append(entry("token_embd.weight", ["tok_embd"], ["model.embed_tokens.weight"]))
    for i in range(cfg.num_layers):
        hf_src, g_src = fam.hf_layer(cfg, i), fam.gguf_layer(cfg, i)
        by_name = {}  # GGUF tensor -> the engine tensors it holds, in order
        for eng, src in g_src.items():
            by_name.setdefault(src.name, []).append(eng)
        for gname, engs in by_name.items():
            hf = hf_src[engs[0]]
            out.append(entry(f"blk.{i}.{gname}", engs, hf.names, g_src[engs[0]].permute_heads, i))
    out.append(entry("output_norm.weight", ["output_norm"], ["model.norm.weight"]))
    if not tied:
        out.append(entry("output.weight", ["output"], ["lm_head.weight"]))
    warn_dequantized(folder, dequantized)
    return out


class _Progress:
    def __init__(self, stream, total_bytes: int, n: int):
        self.stream, self.total, self.n, self.done, self.i = stream, max(1, total_bytes), n, 0, 0
        self.tty = stream is not None and hasattr(stream, "isatty") and stream.isatty()
        self.last = -1

    def update(self, name: str, nbytes: int) -> None:
        self.done += nbytes
        self.i += 1
        if self.stream is None:
            return
        frac = self.done / self.total
        if self.tty:
            bar = "#" * int(frac * 30)
            self.stream.write(f"\r[{bar:<30}] {frac * 100:5.1f}% {self.i}/{self.n} {name[:40]:<40}")
        elif int(frac * 4) > self.last:  # a log file gets a line every 25%
            self.last = int(frac * 4)
            self.stream.write(f"{frac * 100:5.1f}% {self.i}/{self.n} tensors\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _float_rows(sf, info, rows) -> np.ndarray:
    """float32 copy of the given rows (a slice or an index array) of a tensor in the mmapped file (a
    vector is a column: one value per row)."""
    dt = {"F32": "<f4", "F16": "<f2", "BF16": "<u2"}[info.dtype]
    a = np.frombuffer(sf.buffer(info.name), dtype=dt)
    a = a.reshape(info.shape[0], -1)
    x = a[rows]
    if info.dtype == "BF16":
        return (x.astype(np.uint32) << 16).view(np.float32)
    return x.astype(np.float32)


def _convert(x, type_id: int, n_threads: int, method: Optional[str], importance=None):
    if method is None and importance is None:
        return convert(x, type_id, n_threads)
    return convert(x, type_id, n_threads, importance=importance, method=method)


def _write_tensor(fout, e: _Entry, tensors: dict, n_threads: int, method: Optional[str] = None,
                  importance: Optional[dict] = None) -> int:
    imp = importance.get(e.key) if importance and e.key is not None and len(e.shape) >= 2 else None
    if e.data is not None:
        b = _convert(e.data.reshape(1, -1), e.type_id, n_threads, method)
        fout.write(memoryview(b))
        return b.nbytes
    written = 0
    for ql in e.quantized or ():  # GPTQ / AWQ: the 4-bit blocks the loader makes, rows permuted as below
        b = ql.engine_rows(e.type_id, _rope_permutation(ql.shape[0], e.heads) if e.heads else None)
        fout.write(memoryview(b))
        written += b.nbytes
    if e.quantized:
        return written
    for k, hf in enumerate(e.hf):  # stacked experts: one after the other
        sf, info = tensors[hf]
        imp_k = imp[k] if imp is not None and np.ndim(imp) == 2 else imp  # a MoE weight: per expert
        rows = info.shape[0]
        cols = info.shape[-1] if len(info.shape) == 2 else 1
        perm = _rope_permutation(rows, e.heads) if e.heads else None
        step = max(1, _CHUNK_BYTES // (4 * cols))
        delta = None
        if e.lora and hf in e.lora:  # pyllm quantize --lora: merged before quantizing
            delta = sum(f.delta() for f in e.lora[hf])
        for r0 in range(0, rows, step):
            sel = perm[r0 : r0 + step] if perm is not None else slice(r0, min(rows, r0 + step))
            x = _float_rows(sf, info, sel)
            if delta is not None:
                x = x + delta[sel]
            if len(info.shape) == 1:
                x = x.reshape(1, -1)  # a vector is one row of the file
            b = _convert(x, e.type_id, n_threads, method, imp_k)
            fout.write(memoryview(b))
            written += b.nbytes
            del b
    return written


def _add_value(writer, key: str, value, tag: Optional[str]) -> None:
    from gguf import GGUFValueType as V

    scalar = {"u8": V.UINT8, "i8": V.INT8, "u16": V.UINT16, "i16": V.INT16, "u32": V.UINT32, "i32": V.INT32,
              "u64": V.UINT64, "i64": V.INT64, "f32": V.FLOAT32, "f64": V.FLOAT64, "bool": V.BOOL, "str": V.STRING}
    if tag and tag.endswith("[]") and tag[:-2] in scalar:
        if len(value) == 0:
            return
        sub = scalar[tag[:-2]]
        if sub == V.FLOAT32:
            value = [float(v) for v in value]
        writer.add_key_value(key, list(value), V.ARRAY, sub_type=sub)
    elif tag in scalar:
        writer.add_key_value(key, value, scalar[tag])
    elif isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value) if value >= 0 else writer.add_int32(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    elif isinstance(value, (list, tuple)):
        writer.add_array(key, list(value))
    else:
        raise ValueError(f"tokenizer metadata {key!r} has a value of type {type(value).__name__}")


def _add_metadata(writer, folder: str, cfg: ModelConfig, raw: dict, quant: str, tok_md: dict, tok_types: dict,
                  n_params: int, file_type: Optional[int] = None) -> None:
    import gguf

    writer.add_type("model")
    name = os.path.basename(os.path.normpath(folder)) or "model"
    try:  # name, size label, sampling defaults, ... from the model card and generation_config.json, as the converter
        from pathlib import Path

        meta = gguf.Metadata.load(None, Path(folder), None, n_params)
        if meta.name is None:
            meta.name = name
        if meta.size_label is None and n_params > 0:
            meta.size_label = gguf.size_label(n_params, 0, 0, 0)
        meta.set_gguf_meta_model(writer)
    except Exception:  # a model card the heuristics cannot parse: the folder's name is enough
        writer.add_name(name)
    writer.add_block_count(cfg.num_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_heads)
    writer.add_head_count_kv(cfg.num_kv_heads)
    if cfg.rope_scaling.get("rope_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(cfg.rope_scaling["factor"]))
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    if raw.get("head_dim") is not None:
        writer.add_key_length(cfg.head_dim)
        writer.add_value_length(cfg.head_dim)
    writer.add_file_type(FILE_TYPES[quant] if file_type is None else file_type)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_rope_dimension_count(cfg.head_dim)
    if cfg.sliding_window or cfg.family.name == "phi3":  # llama.cpp's converter writes phi3's, 0 for none
        writer.add_sliding_window(cfg.sliding_window)
    if cfg.rope_scaling.get("rope_type") == "longrope":
        writer.add_rope_scaling_attn_factors(cfg.rope_attention_factor())
        writer.add_rope_scaling_orig_ctx_len(cfg.rope_long_after())
    elif cfg.family.name == "phi3":
        writer.add_rope_scaling_orig_ctx_len(cfg.max_position_embeddings)
    for key, value, tag in cfg.family.gguf_metadata(cfg):
        _add_value(writer, f"{cfg.family.gguf_arch}.{key}", value, tag)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for key, value in tok_md.items():
        if key == "tokenizer.chat_template" and not value:
            continue
        _add_value(writer, key, value, tok_types.get(key))
    if "tokenizer.chat_template" not in tok_md:
        t = _chat_template(folder)
        if t:
            writer.add_chat_template(t)


def _writer_class():
    """GGUFWriter with a fast path for long metadata arrays (a 128k-token vocabulary packed one value
    at a time takes seconds); the bytes are the same as GGUFWriter's own."""
    import struct

    import gguf
    from gguf import GGUFValueType as V

    numeric = {V.UINT8: "<u1", V.INT8: "<i1", V.UINT16: "<u2", V.INT16: "<i2", V.UINT32: "<u4", V.INT32: "<i4",
               V.FLOAT32: "<f4", V.UINT64: "<u8", V.INT64: "<i8", V.FLOAT64: "<f8"}

    class Writer(gguf.GGUFWriter):
        def _pack_val(self, val, vtype, add_vtype, sub_type=None):
            if (vtype == V.ARRAY and sub_type is not None and self.endianess == gguf.GGUFEndian.LITTLE
                    and isinstance(val, (list, tuple)) and len(val) > 0):
                head = (struct.pack("<I", vtype) if add_vtype else b"") + struct.pack("<IQ", sub_type, len(val))
                if sub_type == V.STRING:
                    enc = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in val]
                    lens = np.array([len(e) for e in enc], dtype="<u8")
                    parts = [b""] * (2 * len(enc))
                    parts[0::2] = [x.tobytes() for x in lens]
                    parts[1::2] = enc
                    return head + b"".join(parts)
                if sub_type in numeric:
                    return head + np.asarray(val, dtype=numeric[sub_type]).tobytes()
            return super()._pack_val(val, vtype, add_vtype, sub_type)

    return Writer


def _temp_name(out_path: str) -> str:
    d, base = os.path.split(os.path.abspath(out_path))
    return os.path.join(d, f".{base}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def export_gguf(hf_dir: str, out_path: str, quant: str = "q8_0", n_threads: int = 0, progress=None,
                method: Optional[str] = None, lora=None, pure: bool = False, calibration=None,
                allocate: bool = False) -> ExportResult:
    """Write the checkpoint folder hf_dir as the GGUF file out_path with weights in `quant` (q4_0, q8_0,
    f16, bf16, f32, or one of llama.cpp's mixes q4_k_m, q5_k_m, q6_k, iq4_xs, ... with its tensor
    types: pyllm/quant_mixes.py; pure: the mix's base type for every matrix, as llama-quantize --pure).
    calibration: as pyllm.load's (a text file the unquantized model is run over, a .npz of
    pyllm.imatrix.save_importance, or llama.cpp's imatrix file .gguf / .dat): the quantizers weight
    each column's error by it. allocate (a mix, with calibration text): the mix's bytes re-spent
    where the measured error is largest (pyllm/quant_allocation.py), never a larger file. progress: a text stream (e.g. sys.stderr) for a progress bar and the final size
    line, or None for silence. method: how q4_0/q8_0 block scales are chosen (pyllm.quantization:
    "reference" = ggml's quantizer, byte-identical to llama.cpp's files; "search" = error-minimizing
    scales); default: what pyllm.load(hf_dir, quant=...) uses, so the file runs exactly like it. lora:
    PEFT adapters (as pyllm.load's lora=) merged into the weights before they are converted. Raises ModelLoadError/UnsupportedArchitectureError for a bad or
    unsupported checkpoint, ValueError for a bad type, OSError when the file cannot be written; in
    every failure case no file named out_path is created (an existing one is left untouched)."""
    import gguf

    from .gguf_tokenizer import GGUF_VALUE_TYPES, tokenizer_metadata

    hf_dir, out_path = os.fspath(hf_dir), os.fspath(out_path)
    quant = check_quant(quant)
    if method is None:
        method = DEFAULT_METHOD
    elif method not in METHODS:
        raise ValueError(f"unknown quantization method {method!r}: expected one of {', '.join(METHODS)}")
    if calibration is not None and method != "search":
        raise ValueError("calibration is only used by method 'search'")
    if allocate:
        from .quant_allocation import check_allocate

        check_allocate(quant, calibration, pure)
    if not os.path.isdir(hf_dir):
        raise ModelLoadError(f"{hf_dir}: no such folder (expected a Hugging Face checkpoint folder)")
    if not os.path.isfile(os.path.join(hf_dir, "config.json")):
        raise ModelLoadError(f"{hf_dir}: not a Hugging Face checkpoint folder (no config.json)")
    if os.path.isdir(out_path):
        raise ValueError(f"{out_path}: is a folder; give the output file name (e.g. model-{quant}.gguf)")
    out_dir = os.path.dirname(os.path.abspath(out_path))
    if not os.path.isdir(out_dir):
        raise OSError(errno.ENOENT, f"{out_dir}: output folder does not exist")

    cfg = ModelConfig.from_file(os.path.join(hf_dir, "config.json"))
    raw = _read_json(os.path.join(hf_dir, "config.json"))
    tensors = open_checkpoint(hf_dir)
    qlin = quantized_linears(scheme_of_folder(hf_dir), tensors)  # GPTQ / AWQ layers
    adapters = None
    if lora is not None:
        from .adapters import AdapterSet

        shapes = {n: tuple(i.shape) for n, (_, i) in tensors.items() if len(i.shape) == 2}
        shapes.update({n: ql.shape for n, ql in qlin.items()})
        adapters = AdapterSet(cfg, lora, hf_dir, shapes) or None
    importance = None
    if calibration is not None:
        from .imatrix import resolve_importance

        importance = resolve_importance(hf_dir, calibration, n_threads=n_threads or None, cfg=cfg)
    types = None
    if allocate:
        from .quant_allocation import allocate_from_file

        def report(i, n, name, kl):
            if progress is not None:
                progress.write(f"\rallocating bits: {i}/{n} {name[:40]:<40}")
                progress.flush()

        types = allocate_from_file(hf_dir, cfg, quant, calibration, importance, n_threads, progress=report)
        if progress is not None:
            progress.write("\n")
    plan = _plan(hf_dir, cfg, quant, tensors, adapters, pure=pure, has_imatrix=importance is not None, types=types,
                 qlin=qlin)
    try:
        tok_md = tokenizer_metadata(hf_dir)
    except ModelLoadError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelLoadError(f"{hf_dir}: cannot read the tokenizer: {e}") from None

    writer = _writer_class()(None, cfg.family.gguf_arch)
    n_params = sum(int(np.prod(e.shape)) for e in plan if e.hf is not None)
    # a GPTQ / AWQ folder's file is mostly its 4-bit layers: llama.cpp's MOSTLY_Q4_1 (3) or MOSTLY_Q4_0 (2)
    four_bit = {e.type_id for e in plan if e.quantized} & {Q4_0_TYPE, Q4_1_TYPE}
    file_type = (3 if Q4_1_TYPE in four_bit else 2) if four_bit else None
    _add_metadata(writer, hf_dir, cfg, raw, quant, tok_md, dict(GGUF_VALUE_TYPES), n_params, file_type)
    for e in plan:
        writer.add_tensor_info(e.name, e.shape, np.dtype(np.float32), e.nbytes,
                               raw_dtype=gguf.GGMLQuantizationType(e.type_id))

    tmp = _temp_name(out_path)
    total = sum(e.nbytes for e in plan)
    bar = _Progress(progress, total, len(plan))
    try:
        with open(tmp, "xb"):  # claim the name (fails if it exists), then let the writer reopen it
            pass
        from pathlib import Path

        writer.write_header_to_file(path=Path(tmp))
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        fout = writer.fout[0]
        for e in plan:
            writer.write_padding(fout, fout.tell())
            n = _write_tensor(fout, e, tensors, n_threads, method, importance)
            if n != e.nbytes:  # cannot happen unless convert() and row_bytes() disagree
                raise RuntimeError(f"tensor {e.name}: wrote {n} bytes, expected {e.nbytes}")
            writer.write_padding(fout, n)
            bar.update(e.name, n)
        fout.flush()
        os.fsync(fout.fileno())
        writer.close()
        os.replace(tmp, out_path)
    except BaseException as exc:
        try:
            writer.close()
        except Exception:
            pass
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if progress is not None:
            bar.finish()
        if isinstance(exc, OSError) and not isinstance(exc, FileExistsError):
            raise OSError(exc.errno, f"cannot write {out_path}: {exc.strerror or exc}; nothing was written") from None
        raise
    bar.finish()
    res = ExportResult(out_path, os.path.getsize(out_path), total, n_params, len(plan))
    if progress is not None:
        progress.write(f"wrote {out_path}: {res.file_bytes / 2**20:.2f} MiB, {res.n_tensors} tensors, "
                       f"{n_params / 1e6:.2f} M weights, {res.bits_per_weight:.2f} bits per weight ({quant})\n")
        progress.flush()
    return res


def main(argv=None, prog: str = "quantize") -> int:
    """Command line: PROG HF_DIR OUT.gguf --type q4_0|q8_0|f16|bf16 [--threads N]."""
    import argparse

    p = argparse.ArgumentParser(prog=prog, description="Write a Hugging Face Llama/Mistral checkpoint as GGUF")
    add_arguments(p)
    return run(p.parse_args(argv), prog)


def add_arguments(p) -> None:
    p.add_argument("hf_dir", help="Hugging Face checkpoint folder (config.json, *.safetensors, tokenizer files)")
    p.add_argument("out", help="output .gguf file")
    p.add_argument("--type", dest="qtype", default="q8_0", type=str.lower, choices=EXPORT_TYPES,
                   help="weight type or llama.cpp mix (default q8_0)")
    p.add_argument("--pure", action="store_true", help="the type's base type for every matrix (no mix)")
    p.add_argument("--calibration", "--imatrix", dest="calibration", default=None, metavar="FILE",
                   help="importance for the quantizer: a text file (the model is run over it), a .npz "
                        "from pyllm, or llama.cpp's imatrix file (.gguf or .dat)")
    p.add_argument("--allocate", action="store_true",
                   help="with a mix and --calibration TEXT: spend the mix's bits where measurement says they "
                        "lower the error most (same file size or smaller)")
    p.add_argument("-t", "--threads", type=int, default=0, help="threads for quantization (default: all)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_lora_argument(p, "merged into the weights before quantizing")
    p.add_argument("--method", choices=METHODS, default=None,
                   help=f"how q4_0/q8_0 block scales are chosen: 'reference' is ggml's quantizer (files "
                        f"byte-identical to llama.cpp's), 'search' minimizes the error (default: {DEFAULT_METHOD}, "
                        f"as pyllm.load(..., quant=...))")


def run(args, prog: str = "pyllm quantize") -> int:
    if args.threads < 0:
        print(f"{prog}: error: --threads must be >= 0", file=sys.stderr)
        return 2
    try:
        export_gguf(args.hf_dir, args.out, args.qtype, n_threads=args.threads,
                    progress=None if args.quiet else sys.stderr, method=getattr(args, "method", None),
                    lora=lora_spec(getattr(args, "lora", None)), pure=getattr(args, "pure", False),
                    calibration=getattr(args, "calibration", None), allocate=getattr(args, "allocate", False))
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted; no file written", file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:
        msg = e.strerror if isinstance(e, OSError) and e.strerror and e.filename is None else e
        print(f"{prog}: error: {msg}", file=sys.stderr)
        return 1
    return 0
