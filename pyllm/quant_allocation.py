"""quant_allocation.py: which tensor gets how many bits, chosen by measurement ("allocate"): the
bits llama.cpp's mix spends on a model, spent where they lower the output error most.

llama.cpp's mixes pick types by tensor name and layer (pyllm/quant_mixes.py). Measured on the
shipped model, the KL-divergence each tensor adds when it alone is quantized varies 300-fold between
tensors of the same mix (the token embedding and the attention V / FFN gate and up of the first
layers cost the most; attention Q and K of late layers almost nothing), and the error of the
whole model is the sum of these (within a few per cent). So:

  1. every matrix is quantized at the mix's type (with the importance weights, if any) and
     dequantized; the model is run once per matrix with only that matrix replaced (float32
     copy, the rest unquantized) over a sample of the calibration text, giving the KL it adds, m;
  2. for every candidate type t of that matrix (Q3_K .. Q8_0 and the 32-block fallbacks of a
     row length the K-quants do not divide) its relative (importance-weighted) squared error
     e(t) is measured; the KL it would add is predicted as m * e(t) / e(mix type) (on the shipped
     model this predicts the measured value within ~15% for every tensor and type);
  3. the types minimizing the predicted sum under the byte budget of the mix's own plan are found
     with a Lagrange multiplier (bisection on the price per byte), so the file is never larger
     than the mix's.

It needs the unquantized checkpoint and calibration text, and costs one forward over the sample per
matrix (the shipped model: ~40 matrices, seconds; a 1.1B model with 156 matrices: minutes per 256
sample tokens; the default sample is 512 tokens). On the shipped model q4_k_m allocated this way measures a mean KL of ~0.005 on
held-out text where llama.cpp's Q4_K_M file measures 0.0118 at the same size (README)."""
from __future__ import annotations

import os
from typing import Dict, Optional, Tuple

import numpy as np

from . import _engine
from .quant_mixes import MIX_BASE, _fallback, plan_types
from .quantization import TYPE_IDS, TYPE_NAMES, convert

Key = Tuple[str, int]
# what a matrix may get, in increasing size; each is mapped through the block fallback
LADDER = ("q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "q8_0")


def check_allocate(quant, calibration, pure: bool = False) -> str:
    """The mix name allocation works on, or ValueError saying what is missing."""
    q = str(quant).lower() if quant is not None else None
    if q not in MIX_BASE or pure:
        raise ValueError(f"allocate re-spends the bits of one of llama.cpp's mixes ({', '.join(MIX_BASE)}), not "
                         f"{quant!r}{' with pure' if pure else ''}")
    if not isinstance(calibration, (str, os.PathLike)) or os.fspath(calibration).endswith((".npz", ".gguf", ".dat")):
        raise ValueError("allocate needs calibration text (a UTF-8 text file the model is run over)")
    if not os.path.isfile(calibration):
        raise ValueError(f"{calibration}: no such calibration file")
    return q


def allocate_from_file(folder: str, cfg, mix: str, calibration, importance: Optional[dict] = None,
                       n_threads: int = 0, progress=None) -> Dict[Key, int]:
    """allocate() over the text of the calibration file (what pyllm.load and pyllm quantize call with
    allocate=True)."""
    from .imatrix import read_calibration_text

    return allocate(folder, cfg, mix, read_calibration_text(calibration), importance, n_threads, progress=progress)


def _kl(ref_logp: np.ndarray, logits: np.ndarray) -> float:
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    logq = x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
    p = np.exp(ref_logp)
    return float(np.mean(np.sum(p * (ref_logp - logq), axis=-1)))


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _rel_error(x: np.ndarray, type_id: int, importance, n_threads: int) -> Tuple[float, np.ndarray]:
    """(importance-weighted relative squared error, dequantized copy) of x stored as type_id."""
    if type_id in (TYPE_IDS["f32"],):
        return 0.0, x
    q = convert(x, type_id, n_threads, importance=importance, method="search") if importance is not None else \
        convert(x, type_id, n_threads, method="search")
    d = _engine.to_float(type_id, np.frombuffer(q, dtype=np.uint8), x.shape[-1]).reshape(x.shape)
    w = np.ones(x.shape[-1], np.float64) if importance is None else np.asarray(importance, np.float64)
    num = float(np.sum(((d - x).astype(np.float64) ** 2) * w))
    den = float(np.sum((x.astype(np.float64) ** 2) * w)) or 1.0
    return num / den, d


def allocate(folder: str, cfg, mix: str, text, importance: Optional[dict] = None, n_threads: int = 0,
             n_ctx: int = 256, max_tokens: int = 512, progress=None) -> Dict[Key, int]:
    """(engine name, layer) -> type id for `mix` re-allocated by measurement (see the module
    docstring). text: calibration text (or token ids), of which the first max_tokens are run in
    chunks of n_ctx. importance: the quantizers' column weights (pyllm/imatrix.py), if any."""
    from .arch.family import engine_shapes
    from .hf_loader import load_hf_folder
    from .model import Model
    from .safetensors_file import open_checkpoint
    from .tokenizer import Tokenizer

    if mix not in MIX_BASE:
        raise ValueError(f"allocation works on llama.cpp's mixes ({', '.join(MIX_BASE)}), not {mix!r}")
    from .gptq_awq import scheme_of_folder

    if scheme_of_folder(folder) is not None:
        raise ValueError(f"{folder}: allocation re-plans a float checkpoint's types; this GPTQ / AWQ checkpoint's "
                         f"4-bit layers keep their values (quantize it without allocate)")
    base_plan = plan_types(cfg, mix, has_imatrix=importance is not None)
    shapes = engine_shapes(cfg)
    # matrices at GGUF granularity: one decision per file tensor (Phi-3's fused qkv: one)
    groups: Dict[str, list] = {}
    for key, src in cfg.family.gguf_tensors(cfg).items():
        if len(shapes[key[0]]) == 2 and key[0] != "ffn_gate_inp" and base_plan[key] not in (0, 1, 30):
            if cfg.tie_word_embeddings and key == ("output", -1):
                continue  # the same matrix as tok_embd
            groups.setdefault(src.name, []).append(key)
    tensors = open_checkpoint(folder)
    names = cfg.family.hf_tensors(cfg)

    def weight(key) -> np.ndarray:
        src = names[key]
        parts = []
        for hf in src.names:
            sf, info = tensors[hf]
            a = sf.numpy(hf).astype(np.float32).reshape(info.shape[0], -1)
            parts.append(a if src.rows is None else a[src.rows[0]: src.rows[1]])
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    n_ctx = max(4, min(int(n_ctx), cfg.max_position_embeddings))
    tok = Tokenizer.from_dir(folder)
    tokens = tok.encode(text) if isinstance(text, str) else list(text)
    tokens = tokens[: max(2, int(max_tokens))]
    chunks = [list(tokens[i: i + n_ctx]) for i in range(0, len(tokens) - 1, n_ctx)]
    chunks = [c for c in chunks if len(c) >= 2]
    if not chunks:
        raise ValueError("allocation needs calibration text of at least 2 tokens")

    def run(override=None) -> list:
        _, cm, _ = load_hf_folder(folder, n_ctx, n_threads=n_threads, override=override)
        m = Model(cm, cfg, tok, n_ctx=n_ctx, n_threads=n_threads or None)
        return [m.logits(c) for c in chunks]

    ref = [_log_softmax(x) for x in run()]
    choices: Dict[str, dict] = {}
    sizes: Dict[str, dict] = {}
    measured: Dict[str, float] = {}
    for i, (gname, keys) in enumerate(groups.items()):
        xs = {k: weight(k) for k in keys}
        cols = xs[keys[0]].shape[-1]
        rows = sum(x.shape[0] for x in xs.values())
        base_t = base_plan[keys[0]]
        cand = sorted({TYPE_IDS[_fallback(t, cols)] for t in LADDER} | {base_t},
                      key=lambda t: _engine.row_bytes(t, cols))
        errs, deq = {}, {}
        for t in cand:
            total = 0.0
            for k in keys:
                imp = importance.get(k) if importance else None
                if imp is not None and np.ndim(imp) == 2:  # stacked experts: one importance per expert
                    imp = None
                e, d = _rel_error(xs[k], t, imp, n_threads)
                total += e * xs[k].size
                if t == base_t:
                    deq[k] = d
            errs[t] = total / sum(x.size for x in xs.values())
        override = dict(deq)
        if keys[0] == ("tok_embd", -1) and cfg.tie_word_embeddings:
            override[("output", -1)] = deq[keys[0]]
        trial = run(override)
        m = float(np.mean([_kl(r, x) for r, x in zip(ref, trial)]))
        measured[gname] = m
        eb = errs[base_t] or 1e-30
        choices[gname] = {t: m * errs[t] / eb for t in cand}
        sizes[gname] = {t: rows * _engine.row_bytes(t, cols) for t in cand}
        if progress is not None:
            progress(i + 1, len(groups), gname, m)
    budget = sum(sizes[g][base_plan[keys[0]]] for g, keys in groups.items())

    def solve(price: float) -> Tuple[dict, int]:
        pick = {g: min(c, key=lambda t: c[t] + price * sizes[g][t]) for g, c in choices.items()}
        return pick, sum(sizes[g][pick[g]] for g in pick)

    lo, hi = 0.0, 1e-12
    while solve(hi)[1] > budget:
        hi *= 4
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if solve(mid)[1] > budget:
            lo = mid
        else:
            hi = mid
    pick, _ = solve(hi)
    plan = dict(base_plan)
    for g, keys in groups.items():
        for k in keys:
            plan[k] = pick[g]
    if cfg.tie_word_embeddings:
        plan[("output", -1)] = plan[("tok_embd", -1)]
    return plan


def describe(plan: Dict[Key, int], cfg) -> str:
    """One line per type: how many matrices got it."""
    from collections import Counter

    c = Counter(TYPE_NAMES[t] for (n, _), t in plan.items() if not n.endswith("norm") and t not in (0,))
    return ", ".join(f"{k} x{v}" for k, v in sorted(c.items()))
