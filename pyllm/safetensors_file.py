"""safetensors_file.py: zero-copy, validated reading of .safetensors files through mmap. Each
tensor is handed to the engine as a memoryview into the mapping, in its stored dtype, so a
bf16 checkpoint costs its file size in (shared, evictable) page cache and nothing more.

Alignment: the format does not require tensor data to be aligned (the header length, and each
tensor's offset, may be any number of bytes), but the C kernels read 16/32-bit elements through
typed pointers, which must be aligned to the element size. A tensor whose data is not is copied
into an aligned buffer (once, with a warning naming the file), so such a file runs correctly."""
from __future__ import annotations

import os
import struct
import warnings
from dataclasses import dataclass

import numpy as np

from .config import parse_json, read_json_file, short_repr
from .errors import ModelLoadError
from .mapped_file import map_readonly

# safetensors dtype -> (engine type id, bytes per element); only float types are runnable
DTYPES = {"F32": (0, 4), "F16": (1, 2), "BF16": (30, 2)}
_OTHER_SIZES = {"F64": 8, "I64": 8, "U64": 8, "I32": 4, "U32": 4, "I16": 2, "U16": 2, "I8": 1, "U8": 1, "BOOL": 1,
                "F8_E4M3": 1, "F8_E5M2": 1}
_MAX_HEADER = 100 << 20
_MAX_DIM = 1 << 62  # a larger dimension cannot describe bytes in a file (and overflows the engine's int64)
_COPY_ALIGN = 64  # alignment of the copies made for misaligned tensors


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
        header = parse_json(self._mm[8 : 8 + hlen], f"{path}: corrupt safetensors header")
        if not isinstance(header, dict):
            raise ModelLoadError(f"{path}: corrupt safetensors header (not an object)")
        base = 8 + hlen
        self.metadata = header.pop("__metadata__", None) or {}
        if not isinstance(self.metadata, dict):
            raise ModelLoadError(f"{path}: safetensors __metadata__ must be an object, got {short_repr(self.metadata)}")
        self.tensors: dict[str, TensorInfo] = {}
        self._copies: dict[str, np.ndarray] = {}
        for name, info in header.items():
            self.tensors[name] = self._check(name, info, base, size)

    def _check(self, name, info, base, size) -> TensorInfo:
        where = f"{self.path}: tensor {name!r}"
        try:
            dtype, shape, (b, e) = info["dtype"], info["shape"], info["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise ModelLoadError(f"{where}: malformed header entry") from None
        if not isinstance(dtype, str) or dtype not in DTYPES and dtype not in _OTHER_SIZES:
            raise ModelLoadError(f"{where}: unknown dtype {short_repr(dtype)}")
        itemsize = _itemsize(dtype)
        if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= _MAX_DIM
                                                  for s in shape):
            raise ModelLoadError(f"{where}: bad shape {short_repr(shape)}")
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in (b, e)) or not 0 <= b <= e:
            raise ModelLoadError(f"{where}: bad data offsets {short_repr([b, e])}")
        n = 1
        for s in shape:
            n *= s
        if e - b != n * itemsize:
            raise ModelLoadError(f"{where}: {e - b} bytes of data for shape {shape} of {dtype} (needs {n * itemsize})")
        if base + e > size:
            raise ModelLoadError(f"{where}: data ends at byte {base + e} but the file has {size} bytes: truncated file")
        return TensorInfo(name, dtype, tuple(shape), base + b, e - b)

    def buffer(self, name: str):
        """The tensor's bytes: a memoryview into the mapping, or, where the data is not aligned to its
        element size, an aligned copy (made once per tensor)."""
        t = self.tensors[name]
        view = memoryview(self._mm)[t.start : t.start + t.nbytes]
        if t.start % _itemsize(t.dtype) == 0:  # the mapping starts on a page boundary
            return view
        if name not in self._copies:
            if not self._copies:
                warnings.warn(f"{self.path}: tensor data is not aligned to its element size (tensor {name!r} "
                              f"starts at byte {t.start}); misaligned tensors are copied into memory",
                              RuntimeWarning, stacklevel=2)
            raw = np.empty(t.nbytes + _COPY_ALIGN, dtype=np.uint8)
            skip = -raw.ctypes.data % _COPY_ALIGN
            copy = raw[skip : skip + t.nbytes]
            copy[:] = np.frombuffer(view, dtype=np.uint8)
            copy.flags.writeable = False
            self._copies[name] = copy
        return memoryview(self._copies[name])

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


def _itemsize(dtype: str) -> int:
    return DTYPES[dtype][1] if dtype in DTYPES else _OTHER_SIZES[dtype]


def open_checkpoint(folder: str) -> dict[str, tuple[SafetensorsFile, TensorInfo]]:
    """All tensors of a (possibly sharded) checkpoint folder: name -> (file, info)."""
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        weight_map = read_json_file(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelLoadError(f"{index}: malformed index (no weight_map object)")
        for name, fn in weight_map.items():
            if not isinstance(fn, str) or os.path.basename(fn) != fn or fn in ("", ".", ".."):
                raise ModelLoadError(f"{index}: shard name {short_repr(fn)} (of tensor {short_repr(name)}) must be a "
                                     f"plain file name")
        files = sorted(set(weight_map.values()))
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
