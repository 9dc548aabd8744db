"""imatrix.py: activation statistics ("importance matrix") for quantization.

collect_importance(model, text) runs the model over calibration text with the engine's stats hook
on (Runner.collect_stats) and returns, for every weight matrix that multiplies a per-layer
activation, the mean square of each input column over all calibration tokens:

    importance[(name, layer)][j] = E[a_j^2],  a = the matmul's input vector

For a weight row w and its quantized version w', the expected squared error of that row's output
is sum_j E[a_j^2] (w_j - w'_j)^2 when the activation columns are uncorrelated, so these are the
per-column weights an error-minimizing quantizer should use (pyllm.quantization.convert(...,
importance=...)). The engine keeps the statistics per weight (csrc/forward.c tensor_stats, called
by each matmul's caller): keys are the engine's names of every per-layer matmul weight of the
model's family (wq, wk, wv, wo, ffn_gate, ffn_up, ffn_down; a mixture of experts' ffn_gate_inp and
its stacked ffn_gate_exps / ffn_up_exps / ffn_down_exps, whose value is [n_expert, columns]: each
expert's own statistics over the tokens routed to it; an expert no calibration token reached gets
the mean of the others'). The embedding and the LM head have no entry (a lookup; the LM head keeps
the type pyllm.quantization gives it).

The text is split like llama.cpp's imatrix tool: tokenized once, cut into chunks of n_ctx tokens
whose first token is replaced by BOS (when the tokenizer adds one), each run in a fresh sequence.
Calibrate on text like what the model will see, never on the text it is evaluated on."""
from __future__ import annotations

import os
from typing import Dict, Optional, Tuple

import numpy as np

from . import _engine

Key = Tuple[str, int]

def matmul_weights(cfg) -> list:
    """The engine names of the per-layer matmul weights of cfg's family (those with statistics)."""
    from .arch.family import engine_shapes

    shapes = engine_shapes(cfg)
    return [n for n in cfg.family.hf_layer(cfg, 0) if len(shapes[n]) == 2]


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
            stats = np.array(stats, dtype=np.float64)  # a copy: the runner's array is reused next time
        finally:
            runner.collect_stats(False)

    from .arch.family import engine_shapes

    shapes = engine_shapes(cfg)
    out: Dict[Key, np.ndarray] = {}
    for layer in range(cfg.num_layers):
        for name in matmul_weights(cfg):
            off = model._cmodel.stats_offset(name, layer)
            if off < 0:
                raise RuntimeError(f"the engine keeps no statistics for {name} (layer {layer})")
            cols = shapes[name][1]
            units = cfg.n_experts if name.endswith("_exps") else 1
            block = stats[off : off + units * (cols + 1)].reshape(units, cols + 1)
            sums, counts = block[:, :cols], block[:, cols]
            seen = counts > 0
            mean = np.zeros((units, cols), np.float64)
            mean[seen] = sums[seen] / counts[seen, None]
            if not seen.all():  # an expert no token was routed to: the others' mean
                mean[~seen] = mean[seen].mean(axis=0) if seen.any() else 1.0
            out[(name, layer)] = (mean if units > 1 else mean[0]).astype(np.float32)
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


def read_calibration_text(path) -> str:
    """The text of a calibration file, or ValueError naming the file if it is missing or not UTF-8."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such calibration file")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: calibration text is not UTF-8 ({e.reason} at byte {e.start})") from None


def resolve_importance(model_path: str, calibration, n_threads: Optional[int] = None, n_ctx: int = 512,
                       max_tokens: Optional[int] = None, cfg=None) -> Dict[Key, np.ndarray]:
    """What pyllm.load(..., calibration=...) quantizes with: calibration is an importance dict, a .npz
    written by save_importance, llama.cpp's imatrix file (.gguf or .dat, pyllm/imatrix_files.py), or
    a UTF-8 text file that the unquantized model at model_path is run over (collect_importance)."""
    if isinstance(calibration, dict):
        return calibration
    calibration = os.fspath(calibration)
    if calibration.endswith(".npz"):
        return load_importance(calibration)
    from .imatrix_files import is_imatrix_file, read_imatrix

    if is_imatrix_file(calibration):
        if cfg is None:
            from .config import ModelConfig

            cfg = ModelConfig.from_file(os.path.join(model_path, "config.json"))
        return read_imatrix(calibration, cfg)
    text = read_calibration_text(calibration)
    from .loader import load

    return collect_importance(load(model_path, n_threads=n_threads), text, n_ctx=n_ctx, max_tokens=max_tokens)
