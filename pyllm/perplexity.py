"""perplexity.py: perplexity of a model over a text, and the quality of a quantized model against a
reference (mean KL-divergence, top-1 agreement), measured the way llama.cpp's perplexity tool
(llama-perplexity, and its --kl-divergence mode) does.

Method (llama.cpp's `perplexity()`): the whole text is tokenized once (with BOS if the tokenizer adds
one) and cut into non-overlapping chunks of n_ctx tokens (a trailing partial chunk is dropped). The
first token of every chunk is replaced by BOS (when the tokenizer adds BOS), each chunk is
evaluated in a fresh sequence, and only the second half is scored: the logits at positions
first = n_ctx // 2 .. n_ctx - 2 predict tokens first + 1 .. n_ctx - 1, so every scored token has at
least n_ctx / 2 tokens of context. Log-softmax, negative log-likelihood and KL are computed in
float64. Uncertainties are llama.cpp's: stderr of the mean = sqrt((E[x^2] - E[x]^2) / (n - 1)),
PPL's stderr = PPL * stderr(NLL), top-1's = sqrt(p (1 - p) / (n - 1)).

Unlike llama.cpp the reference's log-probabilities are kept exact (llama.cpp stores them as
16-bit values in its logits file), and one chunk of text is enough (llama.cpp asks for two)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence as Seq, Union

import numpy as np

from . import _engine
from .generation.logprobs import log_softmax
from .model import KV_TYPES

DEFAULT_MAX_CTX = 512  # default chunk length: the model's context, capped here (llama.cpp's usual -c 512)
MIN_CTX = 4


@dataclass
class PerplexityResult:
    """What perplexity() measured. Fractions are in [0, 1]; NLL/KL are in nats per token."""

    ppl: float
    ppl_stderr: float
    nll: float                 # mean negative log-likelihood per scored token (ln ppl)
    nll_stderr: float
    n_tokens: int              # tokens scored (n_chunks * (n_ctx - n_ctx // 2 - 1))
    n_chunks: int
    n_ctx: int                 # chunk length
    chunk_ppl: List[float] = field(default_factory=list)  # each chunk's own perplexity
    # only when a reference model was given:
    ref_ppl: Optional[float] = None
    ref_ppl_stderr: Optional[float] = None
    kl_mean: Optional[float] = None       # mean KL(ref || model) per token
    kl_stderr: Optional[float] = None
    kl_median: Optional[float] = None
    kl_p99: Optional[float] = None        # 99th percentile of the per-token KL
    kl_max: Optional[float] = None
    top1: Optional[float] = None          # fraction of tokens where argmax(model) == argmax(ref)
    top1_stderr: Optional[float] = None

    @property
    def uncertainty(self) -> float:
        """Same as ppl_stderr."""
        return self.ppl_stderr

    def summary(self) -> str:
        """The final report as text, in the style of llama-perplexity."""
        lines = [
            f"Final estimate: PPL = {self.ppl:.4f} +/- {self.ppl_stderr:.5f}",
            f"  mean NLL {self.nll:.5f} +/- {self.nll_stderr:.5f} nats/token over {self.n_tokens} tokens "
            f"({self.n_chunks} chunks of {self.n_ctx}, second half of each scored)",
        ]
        if self.kl_mean is not None:
            lines += [
                f"Reference PPL  : {self.ref_ppl:.4f} +/- {self.ref_ppl_stderr:.5f}",
                f"Mean KLD       : {self.kl_mean:.6f} +/- {self.kl_stderr:.6f}",
                f"Median KLD     : {self.kl_median:.6f}",
                f"99.0% KLD      : {self.kl_p99:.6f}",
                f"Maximum KLD    : {self.kl_max:.6f}",
                f"Top-1 agreement: {100 * self.top1:.3f} +/- {100 * self.top1_stderr:.3f} %",
            ]
        return "\n".join(lines)


def _mean_stderr(x: np.ndarray) -> tuple:
    n = x.size
    mean = float(x.mean())
    if n < 2:
        return mean, float("nan")
    var = float(np.mean(x * x)) - mean * mean
    return mean, math.sqrt(var / (n - 1)) if var > 0 else 0.0


def _check_int(name: str, v, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    return int(v)


def _tokens(model, text_or_ids) -> list:
    if isinstance(text_or_ids, str):
        return model.tokenize(text_or_ids)
    if isinstance(text_or_ids, (bytes, bytearray)):
        raise TypeError("expected a str or a sequence of token ids, got bytes: decode the text first")
    return model._check_ids(text_or_ids)


class _ChunkRunner:
    """Evaluates chunks of n_ctx tokens for one model: up to n_seq chunks per engine call (each with
    its own KV cache), or, when a chunk is longer than the batch, one chunk in several calls.
    Returns the float32 logits of positions first .. n_ctx - 2 of each chunk."""

    def __init__(self, model, n_ctx: int, first: int, batch: int, n_seq: int):
        self.model, self.n_ctx, self.first, self.batch = model, n_ctx, first, batch
        self.caches = [_engine.KVCache(model._cmodel, n_ctx, KV_TYPES[model.kv_type]) for _ in range(n_seq)]

    def run(self, chunks: list) -> np.ndarray:
        n_ctx, first, m = self.n_ctx, self.first, self.model
        n_score = n_ctx - 1 - first
        if len(chunks) > 1 or n_ctx <= self.batch:
            tokens = np.concatenate(chunks)
            pos = np.tile(np.arange(n_ctx), len(chunks))
            seqs = np.repeat(np.arange(len(chunks)), n_ctx)
            rows = np.flatnonzero((pos >= first) & (pos < n_ctx - 1))
            out = m._forward(self.caches[: len(chunks)], tokens, pos, seqs, rows)
            return out.reshape(len(chunks), n_score, -1)
        chunk, parts = chunks[0], []
        for s in range(0, n_ctx, self.batch):
            pos = np.arange(s, min(s + self.batch, n_ctx))
            rows = np.flatnonzero((pos >= first) & (pos < n_ctx - 1))
            out = m._forward(self.caches[:1], chunk[s : s + len(pos)], pos, np.zeros(len(pos), np.int32), rows)
            if len(rows):
                parts.append(out)
        return np.concatenate(parts).reshape(1, n_score, -1)


def perplexity(model, text_or_ids: Union[str, Seq[int]], n_ctx: Optional[int] = None, ref=None,
               batch: Optional[int] = None, n_chunks: Optional[int] = None,
               progress: Optional[Callable[[int, int, PerplexityResult], None]] = None) -> PerplexityResult:
    """Perplexity of `model` over a text (or token ids), llama.cpp's way (see the module docstring).

    n_ctx: chunk length (default: the model's context capped at 512; at most the context the model
    (and ref) were loaded with). ref: a reference Model with the same vocabulary and tokenizer, for
    example the unquantized model; then KL(ref || model) per token and top-1 agreement are measured
    too. batch: tokens per engine call (default: the model's n_batch, 512); chunks no longer than
    batch are evaluated batch // n_ctx at a time. n_chunks: score at most this many chunks.
    progress(done, total, partial_result) is called after each chunk.

    Raises ValueError if the vocabularies differ, or if the text is shorter than one chunk."""
    if ref is not None:
        if ref.vocab_size != model.vocab_size:
            raise ValueError(f"vocabulary mismatch: the model has {model.vocab_size} tokens but the reference "
                             f"model has {ref.vocab_size}; KL-divergence needs the same vocabulary")
    tokens = _tokens(model, text_or_ids)
    if ref is not None and isinstance(text_or_ids, str) and ref.tokenize(text_or_ids) != tokens:
        raise ValueError("vocabulary mismatch: the model's and the reference model's tokenizers split the text "
                         "differently; KL-divergence needs the same vocabulary")

    max_ctx = min(model.n_ctx, ref.n_ctx) if ref is not None else model.n_ctx
    if n_ctx is None:
        n_ctx = min(max_ctx, DEFAULT_MAX_CTX)
    n_ctx = _check_int("n_ctx", n_ctx, MIN_CTX)
    if n_ctx > max_ctx:
        who = "the model and the reference were" if ref is not None else "the model was"
        raise ValueError(f"n_ctx {n_ctx} is larger than the context {who} loaded with ({max_ctx}); "
                         f"load with a larger n_ctx")
    batch = _check_int("batch", model.n_batch if batch is None else batch, 1)
    available = len(tokens) // n_ctx
    if available == 0:
        raise ValueError(f"the text has {len(tokens)} tokens but perplexity with n_ctx={n_ctx} needs at least "
                         f"{n_ctx} tokens (one chunk); use a longer text or a smaller n_ctx")
    total = available if n_chunks is None else min(_check_int("n_chunks", n_chunks, 1), available)

    first = n_ctx // 2
    n_score = n_ctx - 1 - first
    n_seq = max(1, min(batch // n_ctx, total))
    tok = model.tokenizer
    bos = tok.bos_id if getattr(tok, "add_bos", False) and tok.bos_id is not None else None
    arr = np.asarray(tokens[: total * n_ctx], dtype=np.int32).reshape(total, n_ctx).copy()
    if bos is not None:
        arr[:, 0] = bos
    targets = arr[:, first + 1 :]

    runner = _ChunkRunner(model, n_ctx, first, batch, n_seq)
    ref_runner = _ChunkRunner(ref, n_ctx, first, batch, n_seq) if ref is not None else None
    vocab = model.vocab_size
    block = max(1, (1 << 22) // vocab)  # rows per float64 block (~32 MB)

    nll = np.empty((total, n_score))
    ref_nll = np.empty((total, n_score)) if ref is not None else None
    kl = np.empty((total, n_score)) if ref is not None else None
    same = np.empty((total, n_score), dtype=bool) if ref is not None else None

    result = None
    for c0 in range(0, total, n_seq):
        group = list(arr[c0 : c0 + n_seq])
        logits = runner.run(group)
        ref_logits = ref_runner.run(group) if ref_runner is not None else None
        for j in range(len(group)):
            c = c0 + j
            for r0 in range(0, n_score, block):
                r1 = min(r0 + block, n_score)
                tgt = targets[c, r0:r1]
                lp = log_softmax(logits[j, r0:r1])
                idx = np.arange(r1 - r0)
                nll[c, r0:r1] = -lp[idx, tgt]
                if ref_logits is not None:
                    rl = ref_logits[j, r0:r1]
                    lpr = log_softmax(rl)
                    ref_nll[c, r0:r1] = -lpr[idx, tgt]
                    kl[c, r0:r1] = np.sum(np.exp(lpr) * (lpr - lp), axis=-1)
                    same[c, r0:r1] = np.argmax(logits[j, r0:r1], axis=-1) == np.argmax(rl, axis=-1)
            if progress is not None:
                result = _result(nll, ref_nll, kl, same, c + 1, n_ctx)
                progress(c + 1, total, result)
    if result is None or result.n_chunks != total:
        result = _result(nll, ref_nll, kl, same, total, n_ctx)
    return result


def _result(nll, ref_nll, kl, same, done: int, n_ctx: int) -> PerplexityResult:
    x = nll[:done].ravel()
    mean, err = _mean_stderr(x)
    ppl = math.exp(mean)
    r = PerplexityResult(ppl=ppl, ppl_stderr=ppl * err, nll=mean, nll_stderr=err, n_tokens=int(x.size),
                         n_chunks=done, n_ctx=n_ctx, chunk_ppl=[math.exp(float(v)) for v in nll[:done].mean(axis=1)])
    if kl is not None:
        rm, re_ = _mean_stderr(ref_nll[:done].ravel())
        k = kl[:done].ravel()
        km, ke = _mean_stderr(k)
        p = float(same[:done].mean())
        n = k.size
        r.ref_ppl = math.exp(rm)
        r.ref_ppl_stderr = r.ref_ppl * re_
        r.kl_mean, r.kl_stderr = km, ke
        r.kl_median = float(np.median(k))
        r.kl_p99 = float(np.percentile(k, 99))
        r.kl_max = float(k.max())
        r.top1 = p
        r.top1_stderr = math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else float("nan")
    return r
