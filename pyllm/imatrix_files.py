"""imatrix_files.py: llama.cpp's importance-matrix files, read into pyllm's importance dict (and
pyllm's written in llama.cpp's format), so `pyllm quantize --calibration imatrix.gguf` uses an
imatrix made by llama-imatrix and llama-quantize --imatrix uses one pyllm collected.

Two formats, both keyed by GGUF tensor names ("blk.3.attn_q.weight"):
  * GGUF (llama-imatrix's default since 2025): general.type = "imatrix", metadata imatrix.datasets /
    imatrix.chunk_count / imatrix.chunk_size, and per weight two F32 tensors: "<name>.in_sum2"
    [n_mat, cols] (the sums of the squared input of each column, one row per expert) and
    "<name>.counts" [n_mat, 1] (tokens seen). Importance = in_sum2 / counts (1 where a count is 0),
    as llama-quantize reads it.
  * legacy .dat: int32 n_entries; per entry int32 name length, the name, int32 ncall, int32 nval,
    float32 values[nval] (the mean square times ncall); then int32 chunk count and optionally a
    dataset name. Importance = values / ncall.
Both give E[a_j^2] per column, the quantity pyllm.imatrix.collect_importance computes, so the two
are interchangeable. A weight the file does not cover is quantized without importance; a weight of
the wrong size, a truncated file or a tensor name that is not the model's is an error."""
from __future__ import annotations

import os
import struct
from typing import Dict, Tuple

import numpy as np

from .errors import ModelLoadError

Key = Tuple[str, int]
_MAX_ENTRIES = 1 << 20
_MAX_NAME = 1 << 12


def _engine_keys(cfg) -> Dict[str, list]:
    """GGUF tensor name -> the (engine name, layer) keys it feeds (a fused tensor: several)."""
    from .imatrix import matmul_weights

    weights = set(matmul_weights(cfg))
    out: Dict[str, list] = {}
    for (eng, layer), src in cfg.family.gguf_tensors(cfg).items():
        if eng in weights:
            out.setdefault(src.name, []).append((eng, layer))
    return out


def _read_legacy(path: str) -> Dict[str, np.ndarray]:
    size = os.path.getsize(path)
    out: Dict[str, np.ndarray] = {}
    with open(path, "rb") as f:
        def take(n, what):
            b = f.read(n)
            if len(b) != n:
                raise ModelLoadError(f"{path}: truncated imatrix file (reading {what})")
            return b

        (n,) = struct.unpack("<i", take(4, "the entry count"))
        if not 1 <= n <= _MAX_ENTRIES:
            raise ModelLoadError(f"{path}: not an imatrix file (entry count {n})")
        for i in range(n):
            (ln,) = struct.unpack("<i", take(4, f"entry {i}'s name length"))
            if not 1 <= ln <= _MAX_NAME:
                raise ModelLoadError(f"{path}: entry {i} has a name length of {ln}")
            try:
                name = take(ln, f"entry {i}'s name").decode("utf-8")
            except UnicodeDecodeError:
                raise ModelLoadError(f"{path}: entry {i}'s name is not UTF-8") from None
            ncall, nval = struct.unpack("<ii", take(8, f"{name}'s sizes"))
            if nval < 1:
                raise ModelLoadError(f"{path}: {name} has {nval} values")
            if 4 * nval > size - f.tell():
                raise ModelLoadError(f"{path}: truncated imatrix file ({name}'s {nval} values run past its end)")
            vals = np.frombuffer(take(4 * nval, f"{name}'s values"), dtype="<f4").astype(np.float32)
            out[name] = vals / ncall if ncall > 0 else vals
    return out


def _read_gguf(path: str) -> Dict[str, np.ndarray]:
    from .gguf_file import GGUFFile

    out: Dict[str, np.ndarray] = {}
    with GGUFFile(path) as gf:
        if gf.metadata.get("general.type") != "imatrix":
            raise ModelLoadError(f"{path}: a GGUF file but not an imatrix (general.type is "
                                 f"{gf.metadata.get('general.type')!r})")
        for tname, info in gf.tensors.items():
            if not tname.endswith(".in_sum2"):
                continue
            name = tname[: -len(".in_sum2")]
            cname = name + ".counts"
            if cname not in gf.tensors:
                raise ModelLoadError(f"{path}: {tname} has no {cname}")
            cinfo = gf.tensors[cname]
            if info.type_id != 0 or cinfo.type_id != 0:
                raise ModelLoadError(f"{path}: {name}'s imatrix tensors are not F32")
            shape = info.shape  # [n_mat, cols] (a vector: [cols])
            n_mat = shape[0] if len(shape) == 2 else 1
            if int(np.prod(cinfo.shape)) != n_mat:
                raise ModelLoadError(f"{path}: {cname} has {int(np.prod(cinfo.shape))} counts for {n_mat} matrices")
            sums = np.frombuffer(gf.buffer(tname), dtype="<f4").reshape(n_mat, -1).astype(np.float32)
            counts = np.frombuffer(gf.buffer(cname), dtype="<f4").astype(np.float32)
            imp = np.ones_like(sums)
            seen = counts > 0
            imp[seen] = sums[seen] / counts[seen, None]
            out[name] = imp.reshape(-1)
    return out


def is_imatrix_file(path: str) -> bool:
    return str(path).endswith((".gguf", ".dat"))


def read_imatrix(path: str, cfg) -> Dict[Key, np.ndarray]:
    """llama.cpp's imatrix file -> pyllm's importance dict for the model of cfg (keys (engine name,
    layer); a MoE weight's value is [n_expert, cols])."""
    from .arch.family import engine_shapes

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such imatrix file")
    with open(path, "rb") as f:
        magic = f.read(4)
    raw = _read_gguf(path) if magic == b"GGUF" else _read_legacy(path)
    keys = _engine_keys(cfg)
    shapes = engine_shapes(cfg)
    out: Dict[Key, np.ndarray] = {}
    for name, vals in raw.items():
        if name not in keys:
            if name == "output.weight" or name.endswith(".ffn_gate_inp.weight"):
                continue  # recorded by llama.cpp; the LM head and the router keep their own types
            raise ModelLoadError(f"{path}: imatrix entry {name!r} is not a weight of this {cfg.family.name} model "
                                 f"({cfg.num_layers} layers)")
        for eng, layer in keys[name]:
            cols = shapes[eng][1]
            units = cfg.n_experts if eng.endswith("_exps") else 1
            if vals.size != units * cols or not np.all(np.isfinite(vals)) or np.any(vals < 0):
                raise ModelLoadError(f"{path}: imatrix entry {name!r} has {vals.size} values; the model's "
                                     f"{eng} (layer {layer}) needs {units * cols} finite values >= 0")
            out[(eng, layer)] = vals.reshape(units, cols) if units > 1 else vals.copy()
    if not out:
        raise ModelLoadError(f"{path}: the imatrix has no entry for any weight of this model")
    return out


def write_imatrix_gguf(path: str, importance: Dict[Key, np.ndarray], cfg, n_tokens: int = 1,
                       dataset: str = "") -> None:
    """pyllm's importance dict -> llama.cpp's GGUF imatrix file (in_sum2 = importance * n_tokens,
    counts = n_tokens), which llama-quantize --imatrix reads. A fused GGUF tensor (Phi-3 attn_qkv)
    takes its first engine tensor's statistics (they share one input)."""
    import gguf

    keys = _engine_keys(cfg)
    w = gguf.GGUFWriter(os.fspath(path), arch=None)
    w.add_type("imatrix")
    w.add_array("imatrix.datasets", [dataset] if dataset else [])
    w.add_uint32("imatrix.chunk_count", 1)
    w.add_uint32("imatrix.chunk_size", int(n_tokens))
    for name, eks in keys.items():
        imp = importance.get(eks[0])
        if imp is None:
            continue
        imp = np.asarray(imp, dtype=np.float32).reshape(-1, np.shape(imp)[-1])
        w.add_tensor(name + ".in_sum2", imp * np.float32(n_tokens))
        w.add_tensor(name + ".counts", np.full((imp.shape[0], 1), n_tokens, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
