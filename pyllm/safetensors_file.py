"""safetensors_file.py: zero-copy, validated reading of .safetensors files through mmap. Each
tensor is handed to the engine as a memoryview into the mapping, in its stored dtype, so a
bf16 checkpoint costs its file size in (shared, evictable) page cache and nothing more."""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass

import numpy as np

from .errors import ModelLoadError
from .mapped_file import map_readonly

# safetensors dtype -> (engine type id, bytes per element); only float types are runnable
DTYPES = {"F32": (0, 4), "F16": (1, 2), "BF16": (30, 2)}
_OTHER_SIZES = {"F64": 8, "I64": 8, "U64": 8, "I32": 4, "U32": 4, "I16": 2, "U16": 2, "I8": 1, "U8": 1, "BOOL": 1,
                "F8_E4M3": 1, "F8_E5M2": 1}
_MAX_HEADER = 100 << 20


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple
    start: int  # absolute byte offset in the file
    nbytes: int


class SafetensorsFile:
    def __init__(self, path: str):
        self.path = path
        self._mm, size = map_readonly(path, 8, "truncated safetensors file ({size} bytes)")
        (hlen,) = struct.unpack("<Q", self._mm[:8])
        if hlen > min(size - 8, _MAX_HEADER):
            raise ModelLoadError(f"{path}: header length {hlen} exceeds the file ({size} bytes): truncated or not safetensors")
        try:
            header = json.loads(bytes(self._mm[8 : 8 + hlen]).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelLoadError(f"{path}: corrupt safetensors header ({e})") from None
        if not isinstance(header, dict):
            raise ModelLoadError(f"{path}: corrupt safetensors header (not an object)")
        base = 8 + hlen
        self.metadata = header.pop("__metadata__", None) or {}
        self.tensors: dict[str, TensorInfo] = {}
        for name, info in header.items():
            self.tensors[name] = self._check(name, info, base, size)

    def _check(self, name, info, base, size) -> TensorInfo:
        where = f"{self.path}: tensor {name!r}"
        try:
            dtype, shape, (b, e) = info["dtype"], info["shape"], info["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise ModelLoadError(f"{where}: malformed header entry") from None
        if dtype in DTYPES:
            itemsize = DTYPES[dtype][1]
        elif dtype in _OTHER_SIZES:
            itemsize = _OTHER_SIZES[dtype]
        else:
            raise ModelLoadError(f"{where}: unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
            raise ModelLoadError(f"{where}: bad shape {shape!r}")
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in (b, e)) or not 0 <= b <= e:
            raise ModelLoadError(f"{where}: bad data offsets {[b, e]!r}")
        n = 1
        for s in shape:
            n *= s
        if e - b != n * itemsize:
            raise ModelLoadError(f"{where}: {e - b} bytes of data for shape {shape} of {dtype} (needs {n * itemsize})")
        if base + e > size:
            raise ModelLoadError(f"{where}: data ends at byte {base + e} but the file has {size} bytes: truncated file")
        return TensorInfo(name, dtype, tuple(shape), base + b, e - b)

    def buffer(self, name: str) -> memoryview:
        t = self.tensors[name]
        return memoryview(self._mm)[t.start : t.start + t.nbytes]

    def numpy(self, name: str) -> np.ndarray:
        """float32 copy of a tensor (small tensors, tests, conversion)."""
        t = self.tensors[name]
        raw = np.frombuffer(self.buffer(name), dtype=np.uint8)
        if t.dtype == "F32":
            a = raw.view(np.float32)
        elif t.dtype == "F16":
            a = raw.view(np.float16).astype(np.float32)
        elif t.dtype == "BF16":
            a = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            raise ModelLoadError(f"{self.path}: tensor {name!r} has non-float dtype {t.dtype}")
        return a.reshape(t.shape).astype(np.float32, copy=False)


def open_checkpoint(folder: str) -> dict[str, tuple[SafetensorsFile, TensorInfo]]:
    """All tensors of a (possibly sharded) checkpoint folder: name -> (file, info)."""
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        try:
            with open(index, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
            files = sorted(set(weight_map.values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise ModelLoadError(f"{index}: malformed index ({e})") from None
        for fn in files:
            if os.path.basename(fn) != fn:
                raise ModelLoadError(f"{index}: shard name {fn!r} must be a plain file name")
    else:
        files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
        if not files:
            raise ModelLoadError(f"{folder}: no *.safetensors weights found")
    out = {}
    for fn in files:
        sf = SafetensorsFile(os.path.join(folder, fn))
        for name, info in sf.tensors.items():
            out[name] = (sf, info)
    return out
