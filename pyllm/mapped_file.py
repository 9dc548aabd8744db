"""mapped_file.py: opening a model file as a read-only mmap, shared by the GGUF and safetensors
readers (each then checks every offset it reads against the size)."""
from __future__ import annotations

import mmap
import os

from .errors import ModelLoadError


def map_readonly(path: str, min_size: int, too_small: str) -> tuple[mmap.mmap, int]:
    """(mapping, size) of the file at path. A file that cannot be opened, or is shorter than
    min_size bytes (too_small, formatted with size=, names the problem), raises ModelLoadError."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot open ({e.strerror})") from None
    try:
        size = os.fstat(fd).st_size
        if size < min_size:
            raise ModelLoadError(f"{path}: " + too_small.format(size=size))
        return mmap.mmap(fd, 0, access=mmap.ACCESS_READ), size
    finally:
        os.close(fd)
