"""gguf_file.py: a validated, zero-copy reader for GGUF (v2/v3) model files through mmap.

Every count, length, size and offset read from the file is checked against the bytes that are
actually there (and against sane caps) before it is used, so a truncated or corrupt file raises
ModelLoadError naming the file and the problem, and never crashes the process or allocates
memory in proportion to a bogus count. Metadata values are plain Python values (int, float,
bool, str, nested lists); tensors are handed out as (type id, shape in Hugging Face order
[rows, cols], memoryview into the mapping), like safetensors_file.py does.

Alignment: this reader takes what ggml takes, a `general.alignment` that is a power of two (up to
1 MiB; absent, 32), and checks every tensor offset against it; the data section starts on a
multiple of it. The model loader (gguf_loader.py) also requires the GGUF spec's multiple of 8, so
that every tensor it hands the engine is aligned for its element type (see MIN_MODEL_ALIGNMENT)."""
from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass

import numpy as np

from .errors import ModelLoadError
from .mapped_file import map_readonly

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MIN_MODEL_ALIGNMENT = 8  # the spec's rule ("a multiple of 8"); enough for every element type the engine reads
MAX_ALIGNMENT = 1 << 20
MAX_DIMS = 4
MAX_NAME = 64  # the spec's limit for tensor names (bytes)
MAX_KEY = 65535  # keys are ASCII paths; anything longer is corruption
MAX_ARRAY_DEPTH = 4

# ggml type id -> (name, elements per block, bytes per block); the ids are GGML's (gguf-py's GGMLQuantizationType)
GGML_TYPES = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40), 10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
}


def type_name(type_id: int) -> str:
    t = GGML_TYPES.get(type_id)
    return t[0] if t else f"type {type_id}"


# GGUF metadata value types: id -> (name, struct format or None, size in bytes)
_U8, _I8, _U16, _I16, _U32, _I32, _F32, _BOOL, _STR, _ARR, _U64, _I64, _F64 = range(13)
_SCALARS = {
    _U8: ("u8", "<B", 1), _I8: ("i8", "<b", 1), _U16: ("u16", "<H", 2), _I16: ("i16", "<h", 2),
    _U32: ("u32", "<I", 4), _I32: ("i32", "<i", 4), _F32: ("f32", "<f", 4), _BOOL: ("bool", "<B", 1),
    _U64: ("u64", "<Q", 8), _I64: ("i64", "<q", 8), _F64: ("f64", "<d", 8),
}
_NP = {_U8: "<u1", _I8: "<i1", _U16: "<u2", _I16: "<i2", _U32: "<u4", _I32: "<i4", _F32: "<f4", _BOOL: "<u1",
       _U64: "<u8", _I64: "<i8", _F64: "<f8"}
VALUE_TYPE_NAMES = {**{k: v[0] for k, v in _SCALARS.items()}, _STR: "str", _ARR: "array"}


@dataclass(frozen=True)
class GGUFTensorInfo:
    name: str
    type_id: int
    ne: tuple  # GGML order: ne[0] is the row length
    start: int  # absolute byte offset in the file
    nbytes: int

    @property
    def shape(self) -> tuple:
        """Hugging Face / numpy order: [rows, cols] for a matrix."""
        return tuple(reversed(self.ne))

    @property
    def type_name(self) -> str:
        return type_name(self.type_id)

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.ne:
            n *= d
        return n


class _Cursor:
    """Bounds-checked little-endian reads from the mapping."""

    def __init__(self, path: str, buf, size: int, pos: int = 0):
        self.path, self.buf, self.size, self.pos = path, buf, size, pos

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise ModelLoadError(
                f"{self.path}: truncated file: {what} at byte {self.pos} needs {n} bytes but the file has "
                f"{self.size} bytes"
            )

    def remaining(self) -> int:
        return self.size - self.pos

    def scalar(self, vtype: int, what: str):
        _, fmt, n = _SCALARS[vtype]
        self.need(n, what)
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        if vtype == _BOOL:
            return bool(v)
        return v

    def u32(self, what: str) -> int:
        return self.scalar(_U32, what)

    def u64(self, what: str) -> int:
        return self.scalar(_U64, what)

    def raw_string(self, what: str, cap: int | None = None) -> bytes:
        n = self.u64(f"length of {what}")
        if cap is not None and n > cap:
            raise ModelLoadError(f"{self.path}: {what} is {n} bytes long (at most {cap} allowed): corrupt file")
        self.need(n, what)
        s = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return s

    def string(self, what: str, cap: int | None = None) -> str:
        raw = self.raw_string(what, cap)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ModelLoadError(f"{self.path}: {what} is not valid UTF-8: corrupt file") from None


def _utf8_ok(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


class GGUFFile:
    """An open, validated GGUF file. Attributes: path, version, alignment, metadata (key -> value),
    value_types (key -> type tag: 'u32', 'str', 'f32[]', 'str[]', 'array[]' for nested arrays, ...),
    tensors (name -> GGUFTensorInfo, in file order), data_offset (start of the tensor data section)."""

    def __init__(self, path: str):
        self.path = path = os.fspath(path)
        self._mm, size = map_readonly(path, 24, "truncated file ({size} bytes): too small for a GGUF header")
        self.size = size
        try:
            self._parse()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ parsing
    def _parse(self) -> None:
        path, size = self.path, self.size
        c = _Cursor(path, self._mm, size)
        magic = bytes(self._mm[:4])
        if magic != GGUF_MAGIC:
            raise ModelLoadError(f"{path}: not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")
        c.pos = 4
        version = c.u32("version")
        if version not in SUPPORTED_VERSIONS:
            if version and not version & 0xFFFF:
                raise ModelLoadError(f"{path}: big-endian GGUF files are not supported")
            if version == 1:
                raise ModelLoadError(f"{path}: GGUF version 1 is obsolete and not supported (re-convert the model)")
            raise ModelLoadError(f"{path}: unsupported GGUF version {version} (supported: 2, 3)")
        self.version = version
        n_tensors = c.u64("tensor count")
        n_kv = c.u64("metadata count")
        # each tensor info takes at least 24 bytes (name length, n_dims, type, offset), each KV at least 13
        if n_tensors > c.remaining() // 24:
            raise ModelLoadError(f"{path}: header claims {n_tensors} tensors, more than the file ({size} bytes) can "
                                 f"hold: truncated or corrupt file")
        if n_kv > c.remaining() // 13:
            raise ModelLoadError(f"{path}: header claims {n_kv} metadata entries, more than the file ({size} bytes) "
                                 f"can hold: truncated or corrupt file")

        self.metadata: dict = {}
        self.value_types: dict = {}
        for i in range(n_kv):
            key = c.string(f"metadata key #{i}", MAX_KEY)
            if not key:
                raise ModelLoadError(f"{path}: metadata key #{i} is empty: corrupt file")
            if key in self.metadata:
                raise ModelLoadError(f"{path}: duplicate metadata key {key!r}: corrupt file")
            vtype = c.u32(f"type of metadata {key!r}")
            value, tag = self._value(c, vtype, f"metadata {key!r}", 0)
            self.metadata[key] = value
            self.value_types[key] = tag

        alignment = DEFAULT_ALIGNMENT
        if "general.alignment" in self.metadata:
            if self.value_types["general.alignment"] != "u32":
                raise ModelLoadError(f"{path}: general.alignment must be a u32, got {self.value_types['general.alignment']}")
            alignment = self.metadata["general.alignment"]
            if alignment <= 0 or alignment & (alignment - 1) or alignment > MAX_ALIGNMENT:
                raise ModelLoadError(f"{path}: general.alignment {alignment} is not a power of two up to 1 MiB")
        self.alignment = alignment

        infos = []
        seen = set()
        for i in range(n_tensors):
            name = c.string(f"name of tensor #{i}", MAX_NAME)
            if name in seen:
                raise ModelLoadError(f"{path}: duplicate tensor name {name!r}: corrupt file")
            seen.add(name)
            where = f"{path}: tensor {name!r}"
            n_dims = c.u32(f"dimension count of tensor {name!r}")
            if n_dims > MAX_DIMS:
                raise ModelLoadError(f"{where} has {n_dims} dimensions (at most {MAX_DIMS}): corrupt file")
            ne = tuple(c.u64(f"dimension {j} of tensor {name!r}") for j in range(n_dims))
            type_id = c.u32(f"type of tensor {name!r}")
            offset = c.u64(f"data offset of tensor {name!r}")
            if type_id not in GGML_TYPES:
                raise ModelLoadError(f"{where} has unknown tensor type {type_id}: corrupt file or newer ggml type")
            tname, blck, tsize = GGML_TYPES[type_id]
            n = 1
            for d in ne:
                if d >= 1 << 63:
                    raise ModelLoadError(f"{where}: dimension {d} is out of range: corrupt file")
                n *= d
                if n >= 1 << 63:
                    raise ModelLoadError(f"{where}: shape {list(ne)} has too many elements (overflow): corrupt file")
            row = ne[0] if ne else 1
            if row % blck:
                raise ModelLoadError(f"{where}: row length {row} is not a multiple of the {tname} block size {blck}")
            nbytes = n // blck * tsize
            if offset % alignment:
                raise ModelLoadError(f"{where}: data offset {offset} is not a multiple of the alignment {alignment}")
            infos.append((name, type_id, ne, offset, nbytes))

        data_offset = c.pos + (-c.pos) % alignment
        if n_tensors and data_offset > size:
            raise ModelLoadError(f"{path}: truncated file: tensor data section would start at byte {data_offset} "
                                 f"but the file has {size} bytes")
        self.data_offset = data_offset
        self.tensors: dict = {}
        for name, type_id, ne, offset, nbytes in infos:
            start = data_offset + offset
            if start + nbytes > size:
                raise ModelLoadError(
                    f"{path}: tensor {name!r} ({type_name(type_id)}, {list(ne)}) ends at byte {start + nbytes} but the "
                    f"file has {size} bytes: truncated file or bad offset"
                )
            self.tensors[name] = GGUFTensorInfo(name, type_id, ne, start, nbytes)
        prev = None
        for t in sorted(self.tensors.values(), key=lambda t: (t.start, t.nbytes)):
            if prev is not None and t.start < prev.start + prev.nbytes:
                raise ModelLoadError(f"{path}: tensors {prev.name!r} and {t.name!r} overlap: corrupt file")
            if t.nbytes:
                prev = t

    def _value(self, c: _Cursor, vtype: int, what: str, depth: int):
        """One metadata value of type vtype -> (python value, type tag)."""
        if vtype in _SCALARS:
            return c.scalar(vtype, what), _SCALARS[vtype][0]
        if vtype == _STR:
            return c.string(what), "str"
        if vtype != _ARR:
            raise ModelLoadError(f"{self.path}: {what} has unknown value type {vtype}: corrupt file")
        if depth >= MAX_ARRAY_DEPTH:
            raise ModelLoadError(f"{self.path}: {what} nests arrays more than {MAX_ARRAY_DEPTH} deep: corrupt file")
        etype = c.u32(f"element type of {what}")
        n = c.u64(f"length of {what}")
        if etype in _SCALARS:
            esize = _SCALARS[etype][2]
            if n > c.remaining() // esize:
                raise ModelLoadError(f"{self.path}: truncated file: {what} claims {n} elements of {esize} bytes at byte "
                                     f"{c.pos} but the file has {self.size} bytes")
            arr = np.frombuffer(self._mm, dtype=_NP[etype], count=n, offset=c.pos)
            c.pos += n * esize
            vals = arr.astype(bool).tolist() if etype == _BOOL else arr.tolist()
            return vals, _SCALARS[etype][0] + "[]"
        if etype == _STR:
            if n > c.remaining() // 8:
                raise ModelLoadError(f"{self.path}: truncated file: {what} claims {n} strings at byte {c.pos} but the "
                                     f"file has {self.size} bytes")
            return self._strings(c, n, what), "str[]"
        if etype == _ARR:
            if n > c.remaining() // 12:
                raise ModelLoadError(f"{self.path}: truncated file: {what} claims {n} arrays at byte {c.pos} but the "
                                     f"file has {self.size} bytes")
            return [self._value(c, _ARR, f"{what}[{i}]", depth + 1)[0] for i in range(n)], "array[]"
        raise ModelLoadError(f"{self.path}: {what} has unknown element type {etype}: corrupt file")

    def _strings(self, c: _Cursor, n: int, what: str) -> list:
        """n length-prefixed strings (the hot loop for tokenizer vocabularies and merges)."""
        buf, pos, size = self._mm, c.pos, self.size
        unpack = struct.Struct("<Q").unpack_from
        raw = []
        append = raw.append
        for i in range(n):
            if pos + 8 > size:
                c.pos = pos
                c.need(8, f"length of {what}[{i}]")
            (ln,) = unpack(buf, pos)
            pos += 8
            if ln > size - pos:
                c.pos = pos
                c.need(ln, f"{what}[{i}]")
            append(buf[pos : pos + ln])
            pos += ln
        c.pos = pos
        try:
            return [b.decode("utf-8") for b in raw]
        except UnicodeDecodeError:
            bad = next(i for i, b in enumerate(raw) if not _utf8_ok(b))
            raise ModelLoadError(f"{self.path}: {what}[{bad}] is not valid UTF-8: corrupt file") from None

    # ------------------------------------------------------------------ access
    def tensor(self, name: str):
        """(type id, shape in [rows, cols] order, memoryview of the raw bytes)."""
        t = self.tensors[name]
        return t.type_id, t.shape, memoryview(self._mm)[t.start : t.start + t.nbytes]

    def buffer(self, name: str) -> memoryview:
        t = self.tensors[name]
        return memoryview(self._mm)[t.start : t.start + t.nbytes]

    def get(self, key: str, default=None):
        return self.metadata.get(key, default)

    def close(self) -> None:
        """Unmap the file; fails silently while tensor buffers are still in use (the mapping then lives
        until they are released)."""
        mm = getattr(self, "_mm", None)
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                pass

    def __enter__(self) -> "GGUFFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<GGUFFile {self.path!r} v{self.version} {len(self.metadata)} keys {len(self.tensors)} tensors>"


def open_gguf(path: str) -> GGUFFile:
    return GGUFFile(path)


def is_gguf(path: str) -> bool:
    """True if the file starts with the GGUF magic (no other check)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block the read
            return False
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False
