"""quantization.py: which storage type each tensor gets for a requested file/model type, shared
by quantize-on-load (pyllm.load(..., quant=...)) and GGUF export (tools/quantize.py).

Policy: norms stay F32 (tiny, and precision matters). Weight matrices take the requested type.
For q4_0 the output projection (LM head) is stored as Q8_0: it is the single most sensitive
matrix (its error lands directly on the logits), as llama.cpp also keeps it at higher precision
(Q6_K there, a type pyllm does not have). The token embedding takes the requested type: it is a
lookup of one row per token, so its error does not accumulate across a matmul. With tied
embeddings the one shared matrix takes the output's type. A matrix whose row length is not a
multiple of the 32-weight block keeps a 16-bit type (F16) instead of failing."""
from __future__ import annotations

import numpy as np

from . import _engine

TYPE_IDS = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 8, "bf16": 30}
TYPE_NAMES = {v: k for k, v in TYPE_IDS.items()}
QUANT_TYPES = ("q4_0", "q8_0", "f16", "bf16", "f32")


def check_quant(quant: str) -> str:
    q = str(quant).lower()
    if q not in QUANT_TYPES:
        raise ValueError(f"unknown quantization type {quant!r}: expected one of {', '.join(QUANT_TYPES)}")
    return q


def tensor_type(role: str, quant: str, shape: tuple, tied: bool = False) -> int:
    """Storage type id for a tensor. role: 'norm', 'tok_embd', 'output' or 'weight'."""
    if role == "norm" or len(shape) == 1:
        return TYPE_IDS["f32"]
    q = quant
    if quant == "q4_0" and (role == "output" or (role == "tok_embd" and tied)):
        q = "q8_0"
    tid = TYPE_IDS[q]
    if q in ("q4_0", "q8_0") and shape[-1] % 32:
        tid = TYPE_IDS["f16"]
    return tid


def convert(x: np.ndarray, type_id: int, n_threads: int = 0) -> np.ndarray:
    """float32 array (rows, n) or (n,) -> raw bytes of type_id as a uint8 array (C, all threads)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    return _engine.quantize(type_id, x.reshape(-1, x.shape[-1]), n_threads)
