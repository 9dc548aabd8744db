"""imatrix.py: activation statistics ("importance matrix") for quantization.

collect_importance(model, text) runs the model over calibration text with the engine's stats hook
on (Runner.collect_stats) and returns, for every weight matrix that multiplies a per-layer
activation, the mean square of each input column over all calibration tokens:

    importance[(name, layer)][j] = E[a_j^2],  a = the matmul's input vector

For a weight row w and its quantized version w', the expected squared error of that row's output
is sum_j E[a_j^2] (w_j - w'_j)^2 when the activation columns are uncorrelated, so these are the
per-column weights an error-minimizing quantizer should use (pyllm.quantization.convert(...,
importance=...)). Keys are the engine's tensor names: wq, wk, wv (all three read the attention
norm's output), wo (attention output), ffn_gate, ffn_up (the MLP norm's output) and ffn_down
(the SwiGLU output); for a mixture of experts ffn_gate_inp, ffn_gate_exps, ffn_up_exps (the MLP
norm's output over all tokens) and ffn_down_exps (every expert's SwiGLU output, summed over the
experts: one vector shared by all of them, not one per expert). The embedding and the LM head have no entry: the hook does not see the LM
head's input, and the embedding is a lookup.

The text is split like llama.cpp's imatrix tool: tokenized once, cut into chunks of n_ctx tokens
whose first token is replaced by BOS (when the tokenizer adds one), each run in a fresh sequence.
Calibrate on text like what the model will see, never on the text it is evaluated on."""
from __future__ import annotations

import os
from typing import Dict, Optional, Tuple

import numpy as np

from . import _engine

Key = Tuple[str, int]

#: engine tensor name -> which of the four per-layer statistics is its input
INPUTS = {"wq": 0, "wk": 0, "wv": 0, "wo": 1, "ffn_gate": 2, "ffn_up": 2, "ffn_down": 3,
          "ffn_gate_inp": 2, "ffn_gate_exps": 2, "ffn_up_exps": 2, "ffn_down_exps": 3}


def _layout(cfg) -> list:
    """(offset, length) of the four per-layer statistics within one layer's stats."""
    dim, qd, hid = cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.intermediate_size
    lens = [dim, qd, dim, hid]
    offs = np.cumsum([0] + lens[:-1]).tolist()
    return list(zip(offs, lens))


def collect_importance(model, text, n_ctx: int = 512, max_tokens: Optional[int] = None) -> Dict[Key, np.ndarray]:
    """Per-(tensor name, layer) column importance (mean square of the matmul's input) from running
    `model` over `text` (a str or token ids). n_ctx: chunk length (capped at the model's context);
    max_tokens: use at most this many tokens of the text (default: all). Returns float32 arrays,
    one per (name, layer) for name in INPUTS; a trailing partial chunk of >= 2 tokens is used too."""
    ids = model.tokenize(text) if isinstance(text, str) else model._check_ids(text)
    if max_tokens is not None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, (int, np.integer)) or max_tokens < 2:
            raise ValueError(f"max_tokens must be an integer >= 2, got {max_tokens!r}")
        ids = ids[: int(max_tokens)]
    if isinstance(n_ctx, bool) or not isinstance(n_ctx, (int, np.integer)) or n_ctx < 2:
        raise ValueError(f"n_ctx must be an integer >= 2, got {n_ctx!r}")
    n_ctx = min(int(n_ctx), model.n_ctx)
    if len(ids) < 2:
        raise ValueError(f"calibration text has {len(ids)} tokens; need at least 2")
    tok = model.tokenizer
    bos = tok.bos_id if getattr(tok, "add_bos", False) and tok.bos_id is not None else None

    cfg = model.config
    runner = model._runner
    cache = _engine.KVCache(model._cmodel, n_ctx)
    n_tokens = 0
    with model._lock:
        stats = runner.collect_stats(True)
        try:
            for c0 in range(0, len(ids), n_ctx):
                chunk = np.asarray(ids[c0 : c0 + n_ctx], dtype=np.int32)
                if len(chunk) < 2:
                    break
                if bos is not None:
                    chunk[0] = bos
                for s in range(0, len(chunk), model.n_batch):
                    part = chunk[s : s + model.n_batch]
                    pos = np.arange(s, s + len(part), dtype=np.int32)
                    runner.forward([cache], part, pos, np.zeros(len(part), np.int32), np.zeros(0, np.int32),
                                   model.n_threads)
                n_tokens += len(chunk)
            stats = np.array(stats, dtype=np.float64)  # a copy: the runner's array is reused next time
        finally:
            runner.collect_stats(False)

    per_layer = stats.reshape(cfg.num_layers, -1)
    lay = _layout(cfg)
    if per_layer.shape[1] != sum(n for _, n in lay):
        raise RuntimeError("engine statistics do not match the model's configuration")
    out: Dict[Key, np.ndarray] = {}
    present = set(cfg.family.hf_layer(cfg, 0))  # the matmul weights this family's layers have
    for layer in range(cfg.num_layers):
        for name, which in INPUTS.items():
            if name not in present:
                continue
            o, n = lay[which]
            out[(name, layer)] = (per_layer[layer, o : o + n] / n_tokens).astype(np.float32)
    return out


def save_importance(path: str, importance: Dict[Key, np.ndarray]) -> None:
    """Write an importance dict as .npz (keys 'name.layer')."""
    arrays = {f"{name}.{layer}": np.asarray(v, dtype=np.float32) for (name, layer), v in importance.items()}
    with open(os.fspath(path), "wb") as f:
        np.savez(f, **arrays)


def load_importance(path: str) -> Dict[Key, np.ndarray]:
    """Read what save_importance wrote."""
    out: Dict[Key, np.ndarray] = {}
    with np.load(os.fspath(path)) as z:
        for k in z.files:
            name, _, layer = k.rpartition(".")
            if not name:
                raise ValueError(f"{path}: bad importance key {k!r}")
            out[(name, int(layer))] = z[k].astype(np.float32)
    return out


def resolve_importance(model_path: str, calibration, n_threads: Optional[int] = None, n_ctx: int = 512,
                       max_tokens: Optional[int] = None) -> Dict[Key, np.ndarray]:
    """What pyllm.load(..., calibration=...) quantizes with: calibration is an importance dict, a .npz
    written by save_importance, or a UTF-8 text file that the unquantized model at model_path is run
    over (collect_importance)."""
    if isinstance(calibration, dict):
        return calibration
    calibration = os.fspath(calibration)
    if calibration.endswith(".npz"):
        return load_importance(calibration)
    if not os.path.isfile(calibration):
        raise ValueError(f"{calibration}: no such calibration file")
    with open(calibration, encoding="utf-8") as f:
        text = f.read()
    from .loader import load

    return collect_importance(load(model_path, n_threads=n_threads), text, n_ctx=n_ctx, max_tokens=max_tokens)
