"""mapped_file.py: opening a model file as a read-only mmap, shared by the GGUF and safetensors
readers (each then checks every offset it reads against the size), and reading small files
(JSON configs) with the same checks: a path that is not a regular file (a folder, a FIFO that
would block, a device) or cannot be read is a ModelLoadError naming it."""
from __future__ import annotations

import mmap
import os
import stat

from .errors import ModelLoadError

MAX_SMALL_FILE = 1 << 30  # read_small_file's limit: a config or tokenizer file is megabytes, not gigabytes


def _open_regular(path: str) -> tuple[int, int]:
    """(fd, size) of the regular file at path, opened read-only without blocking on a FIFO."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: not found") from None
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot open ({e.strerror or e})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ModelLoadError(f"{path}: not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size


def map_readonly(path: str, min_size: int, too_small: str) -> tuple[mmap.mmap, int]:
    """(mapping, size) of the file at path. A file that cannot be opened or mapped, is not a regular
    file, or is shorter than min_size bytes (too_small, formatted with size=, names the problem),
    raises ModelLoadError."""
    fd, size = _open_regular(path)
    try:
        if size < min_size:
            raise ModelLoadError(f"{path}: " + too_small.format(size=size))
        try:
            return mmap.mmap(fd, 0, access=mmap.ACCESS_READ), size
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"{path}: cannot map the file ({e})") from None
    finally:
        os.close(fd)


def read_small_file(path: str, limit: int = MAX_SMALL_FILE) -> bytes:
    """The bytes of the regular file at path (at most limit of them), or ModelLoadError naming it."""
    fd, size = _open_regular(path)
    try:
        if size > limit:
            raise ModelLoadError(f"{path}: {size} bytes is too large for this kind of file (at most {limit})")
        chunks, total = [], 0
        while True:
            try:
                b = os.read(fd, 1 << 20)
            except OSError as e:
                raise ModelLoadError(f"{path}: cannot read ({e.strerror or e})") from None
            if not b:
                return b"".join(chunks)
            total += len(b)
            if total > limit:  # the file grew while being read
                raise ModelLoadError(f"{path}: more than {limit} bytes: too large for this kind of file")
            chunks.append(b)
    finally:
        os.close(fd)
