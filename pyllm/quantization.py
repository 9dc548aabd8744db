"""quantization.py: which storage type each tensor gets for a requested file/model type, shared
by quantize-on-load (pyllm.load(..., quant=...)) and GGUF export (tools/quantize.py).

Policy: norms stay F32 (tiny, and precision matters). Weight matrices take the requested type.
For q4_0 the output projection (LM head) is stored as Q8_0: it is the single most sensitive
matrix (its error lands directly on the logits), as llama.cpp also keeps it at higher precision
(Q6_K there, a type pyllm does not have). The token embedding takes the requested type: it is a
lookup of one row per token, so its error does not accumulate across a matmul. With tied
embeddings the one shared matrix takes the output's type. A matrix whose row length is not a
multiple of the 32-weight block keeps a 16-bit type (F16) instead of failing.

Methods (how the Q4_0 / Q8_0 blocks' scales are chosen; the blocks are plain ggml Q4_0 / Q8_0 either
way, readable by llama.cpp and any GGUF reader):
  * "reference": ggml's quantize_row_q4_0_ref / q8_0_ref (d = max / -8, d = amax / 127), bit-identical
    to ggml and to gguf-py's numpy quantizer. convert() uses it unless told otherwise.
  * "search": per 32-weight block, the fp16 scale with the least (importance-)weighted squared error
    found by a grid search plus least-squares refinement (csrc/quantize.c, pl_quantize_rows_weighted),
    never worse than the reference's. With an importance vector (pyllm/imatrix.py: mean square of each
    input column over calibration text) the error is weighted per column; without, plain squared error.

DEFAULT_METHOD is what model quantization uses (pyllm.load(..., quant=...), the GGUF writer): "search",
without importance unless calibration is given. Measured on the shipped model over held-out text
(tests/test_quality.py: 33 chunks of 256 tokens, mean KL / top-1 against the unquantized model):
    Q4_0: reference 0.0207 / 88.02%, search 0.0172 / 88.90%, search + imatrix 0.0175 / 88.98%
    Q8_0: reference 0.000203 / 98.85%, search 0.000181 / 98.54%, search + imatrix 0.000179 / 98.57%
(llama.cpp on the same text: Q4_0 0.0208 / 87.78%, Q8_0 0.000200 / 98.64%). On 13k tokens of other
text the search's KL is 13% (Q4_0, Q8_0) below the reference's with top-1 +0.5% / +0.06%. Q8_0's
top-1 is dominated by the engine's Q8_0 activations: with the weights alone (dequantized, F32 matmuls)
the search lowers the held-out KL from 0.000087 to 0.000062 and the argmax flips from 36 to 24; with
Q8_0 activations the ~50 flips in 4191 tokens are a noisy draw (stderr ~0.18%). Importance from calibration text
changes little on this small model (its activations are nearly uniform across columns) and needs a
calibration run, so it is opt-in. Weighting the error by x^2 (ggml's choice without an imatrix),
sqrt(mean(x^2) + x^2) or rms(x) + |x| measured a higher KL than plain squared error on this model
(x^2 even higher than the reference), so the search without importance uses plain squared error."""
from __future__ import annotations

import numpy as np

from . import _engine

TYPE_IDS = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "q2_k": 10, "q3_k": 11,
            "q4_k": 12, "q5_k": 13, "q6_k": 14, "iq4_nl": 20, "iq4_xs": 23, "bf16": 30}
TYPE_NAMES = {v: k for k, v in TYPE_IDS.items()}
# pyllm's own types (tensor_type below) and llama.cpp's mixes (pyllm/quant_mixes.py)
QUANT_TYPES = ("q4_0", "q8_0", "f16", "bf16", "f32", "q4_k_m", "q4_k_s", "q5_k_m", "q5_k_s", "q6_k", "q3_k_m",
               "q3_k_s", "q3_k_l", "q2_k", "iq4_xs", "iq4_nl", "q4_1", "q5_0", "q5_1")


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


METHODS = ("reference", "search")
DEFAULT_METHOD = "search"  # model quantization's method for q4_0 / q8_0 (see the module docstring)
# types whose blocks the search writes (csrc/quantize.c, csrc/quantize_kquants.c)
_SEARCHABLE = tuple(TYPE_IDS[t] for t in ("q4_0", "q8_0", "q4_1", "q5_0", "q5_1", "iq4_nl", "q2_k", "q3_k", "q4_k",
                                          "q5_k", "q6_k", "iq4_xs"))


def check_method(method: str) -> str:
    m = str(method).lower()
    if m not in METHODS:
        raise ValueError(f"unknown quantization method {method!r}: expected one of {', '.join(METHODS)}")
    return m


def convert(x: np.ndarray, type_id: int, n_threads: int = 0, importance=None, method=None) -> np.ndarray:
    """float32 array (rows, n) or (n,) -> raw bytes of type_id as a uint8 array (C, all threads).

    method: "reference" (ggml's reference quantizers, bit-identical to ggml) or "search"
    (error-minimizing scales, see the module docstring); default "reference", or "search" when an
    importance is given. importance: None or n per-column weights (finite, >= 0) for "search".
    q4_1 / q5_0 / q5_1 have both (reference: ggml's, bit-identical to gguf-py's numpy quantizer).
    iq4_nl, q2_k..q6_k, iq4_xs have no short ggml reference: "reference" is the search with plain
    squared error (the same bytes as "search" without importance; csrc/quantize_kquants.c, whose
    docstring gives the error measured against llama.cpp's quantizers). Float types have no scales
    to choose: every method converts them the same way. Rows must be whole blocks (32 weights, or
    256 for the K-quants and iq4_xs): a ValueError otherwise."""
    method = ("search" if importance is not None else "reference") if method is None else check_method(method)
    x = np.ascontiguousarray(x, dtype=np.float32)
    x2 = x.reshape(-1, x.shape[-1])
    if importance is not None:
        imp = np.asarray(importance, dtype=np.float32)
        if imp.shape != (x2.shape[1],):
            raise ValueError(f"importance has shape {imp.shape}; expected ({x2.shape[1]},), one weight per column")
        if not np.all(np.isfinite(imp)) or np.any(imp < 0):
            raise ValueError("importance must be finite and >= 0")
        if method != "search":
            raise ValueError("importance is only used by method='search'")
    else:
        imp = None
    if method == "reference" or type_id not in _SEARCHABLE:
        return _engine.quantize(type_id, x2, n_threads)
    return _engine.quantize_weighted(type_id, x2, imp, n_threads)
