# Token sampling for pyllm: turns one step's logits into the next token id.
#
# Pipeline (same order and semantics as transformers' logits processors / llama.cpp):
#   repetition penalty -> (temperature == 0: argmax) -> temperature -> top-k -> top-p -> min-p
#   -> renormalize -> one draw from a seeded numpy Generator.
# Pure Python + numpy, O(vocab) per step: no full sort of the vocabulary (top-k via chunk maxima, top-p via
# value buckets when there is no top-k), and reused work buffers.
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["SamplingParams", "Sampler", "apply_repetition_penalty"]


def _is_int(v: object) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def _is_real(v: object) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


@dataclass(frozen=True)
class SamplingParams:
    """Sampling configuration. Every field is validated in __post_init__ (ValueError naming the field)."""

    temperature: float = 0.8  # 0 => greedy (argmax, ties -> lowest index)
    top_k: int = 40  # 0 => disabled
    top_p: float = 0.95  # 1.0 => disabled; must be in (0, 1]
    min_p: float = 0.05  # 0.0 => disabled; must be in [0, 1]
    repeat_penalty: float = 1.0  # 1.0 => disabled; must be > 0 and finite
    repeat_last_n: int = 64  # recent tokens the penalty looks at (-1 = whole history, 0 = none)
    seed: int | None = None  # None => fresh OS entropy

    def __post_init__(self) -> None:
        def bad(name: str, value: object, why: str) -> ValueError:
            return ValueError(f"SamplingParams.{name} {why}, got {value!r}")

        def real(name: str, value: object) -> float:
            if not _is_real(value):
                raise bad(name, value, "must be a real number")
            f = float(value)  # type: ignore[arg-type]
            if math.isnan(f):
                raise bad(name, value, "must not be NaN")
            return f

        def integer(name: str, value: object) -> int:
            if not _is_int(value):
                raise bad(name, value, "must be an int (bool is not accepted)")
            return int(value)  # type: ignore[call-overload]

        t = real("temperature", self.temperature)
        if not (math.isfinite(t) and t >= 0.0):
            raise bad("temperature", self.temperature, "must be finite and >= 0")
        k = integer("top_k", self.top_k)
        if k < 0:
            raise bad("top_k", self.top_k, "must be >= 0 (0 disables top-k)")
        p = real("top_p", self.top_p)
        if not (0.0 < p <= 1.0):
            raise bad("top_p", self.top_p, "must be in (0, 1] (1.0 disables top-p)")
        mp = real("min_p", self.min_p)
        if not (0.0 <= mp <= 1.0):
            raise bad("min_p", self.min_p, "must be in [0, 1] (0.0 disables min-p)")
        rp = real("repeat_penalty", self.repeat_penalty)
        if not (math.isfinite(rp) and rp > 0.0):
            raise bad("repeat_penalty", self.repeat_penalty, "must be finite and > 0 (1.0 disables it)")
        rn = integer("repeat_last_n", self.repeat_last_n)
        if rn < -1:
            raise bad("repeat_last_n", self.repeat_last_n, "must be >= -1 (-1 = whole history, 0 = none)")
        seed = self.seed
        if seed is not None:
            seed = integer("seed", seed)
            if seed < 0:
                raise bad("seed", self.seed, "must be None or a non-negative int")
        # Normalize numpy scalars etc. to plain Python types.
        for name, value in (
            ("temperature", t),
            ("top_k", k),
            ("top_p", p),
            ("min_p", mp),
            ("repeat_penalty", rp),
            ("repeat_last_n", rn),
            ("seed", seed),
        ):
            object.__setattr__(self, name, value)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def _check_logits(logits: object) -> np.ndarray:
    if not isinstance(logits, np.ndarray):
        raise ValueError(f"logits must be a 1-D numpy float array, got {type(logits).__name__}")
    if logits.ndim != 1:
        raise ValueError(f"logits must be 1-D, got shape {logits.shape}")
    if logits.dtype.kind != "f":
        raise ValueError(f"logits must have a floating dtype, got {logits.dtype}")
    if logits.shape[0] == 0:
        raise ValueError("logits must not be empty")
    return logits


def _history_ids(history: Sequence[int], last_n: int, vocab: int) -> np.ndarray:
    """Distinct token ids among the last `last_n` history entries that fall inside the vocab."""
    if last_n == 0 or len(history) == 0:
        return np.empty(0, dtype=np.int64)
    if last_n < 0:
        recent = history
    else:
        try:
            recent = history[-last_n:]
        except TypeError:  # e.g. a deque
            recent = list(history)[-last_n:]
    ids = np.asarray(recent)
    if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
        raise ValueError("history must be a flat sequence of int token ids")
    ids = ids.astype(np.int64, copy=False)
    if ids.size and ids.min() < 0:
        raise ValueError(f"history contains a negative token id ({int(ids.min())})")
    # Like transformers: ids beyond the logits' vocab cannot be generated and are ignored.
    return np.unique(ids[ids < vocab])


def apply_repetition_penalty(
    logits: np.ndarray, history: Sequence[int], penalty: float, last_n: int = -1
) -> np.ndarray:
    """Return a float64 copy of `logits` with transformers' RepetitionPenaltyLogitsProcessor applied to the
    distinct tokens among the last `last_n` history ids (-1 = all, 0 = none): logit<0 -> logit*penalty,
    else logit/penalty. The input is never modified."""
    x = np.array(_check_logits(logits), dtype=np.float64, copy=True)
    _penalize(x, history, penalty, last_n)
    return x


def _penalize(x: np.ndarray, history: Sequence[int], penalty: float, last_n: int) -> None:
    if penalty == 1.0:
        return
    ids = _history_ids(history, last_n, x.shape[0])
    if ids.size:
        v = x[ids]
        x[ids] = np.where(v < 0, v * penalty, v / penalty)


# Below this many candidates, thresholds are found exactly (np.partition) instead of via chunk maxima.
_SMALL = 4096
_MAX_CHUNK = 64
# Top-p over more candidates than this (no top-k) uses value buckets instead of sorting them all.
_BUCKETS = 4096


def _at_least_k_threshold(x: np.ndarray, k: int) -> float:
    """A value t such that at least k entries of x are >= t (and t is not much below the k-th largest).

    Uses the k-th largest of the chunk maxima: those k chunks each hold a distinct element >= t.
    O(n) with a small constant; much cheaper than argpartition over the full vocabulary."""
    n = x.shape[0]
    chunk = min(_MAX_CHUNK, n // (4 * k))
    if n <= _SMALL or chunk < 2:
        return float(np.partition(x, n - k)[n - k])
    nchunks = n // chunk
    main = nchunks * chunk
    maxima = x[:main].reshape(nchunks, chunk).max(axis=1)
    if main < n:
        maxima = np.append(maxima, x[main:].max())
    m = maxima.shape[0]
    return float(np.partition(maxima, m - k)[m - k])


def _top_k_ids(x: np.ndarray, k: int) -> np.ndarray:
    """Ascending ids of tokens with x >= k-th largest value (ties at the boundary kept, as in transformers'
    TopKLogitsWarper), excluding -inf."""
    t = _at_least_k_threshold(x, k)
    cand = np.flatnonzero(x >= t)
    vals = x[cand]
    if cand.shape[0] > k:
        kth = np.partition(vals, cand.shape[0] - k)[cand.shape[0] - k]
        keep = vals >= kth
        if kth == -np.inf:
            keep &= vals > -np.inf
        cand = cand[keep]
    elif t == -np.inf:
        cand = cand[vals > -np.inf]
    return cand


def _top_p_cut(z: np.ndarray, ids: np.ndarray | None, log_norm: float, top_p: float) -> np.ndarray:
    """Nucleus cut restricted to a value-closed candidate set `ids` (all tokens above some value; None = all).

    z: temperature-scaled logits shifted so max(z) == 0; log_norm = log(sum(exp(z))) over the whole (top-k
    filtered) distribution. Keeps, in descending order, every token whose preceding mass is < top_p, which is
    the set transformers' TopPLogitsWarper leaves (it removes ascending-cumulative mass <= 1 - top_p). Tied
    values at the boundary are kept highest-index first, which is what TopPLogitsWarper does wherever
    torch.sort is stable (the order among ties is otherwise unspecified there).
    Returns the kept ids, ascending (all of `ids` if together they hold less than top_p)."""
    vals = z if ids is None else z[ids]
    s = np.sort(vals)[::-1]
    ps = np.exp(s - log_norm)
    cum = np.cumsum(ps)
    before = np.empty_like(cum)
    before[0] = 0.0
    before[1:] = cum[:-1]
    n_keep = int(np.searchsorted(before, top_p, side="left"))  # before is non-decreasing; n_keep >= 1
    if ids is None:
        ids = np.arange(vals.shape[0])
    if n_keep >= ids.shape[0]:
        return ids
    boundary = s[n_keep - 1]
    keep = vals > boundary
    n_ties = n_keep - int(np.count_nonzero(keep))
    if n_ties > 0:
        tied = np.flatnonzero(vals == boundary)
        keep[tied[tied.shape[0] - n_ties :]] = True
    return ids[keep]


def _top_p_cut_bucketed(z: np.ndarray, w: np.ndarray, total: float, top_p: float, scratch: np.ndarray) -> np.ndarray:
    """Same result as _top_p_cut(z, all finite ids, log(total), top_p), in O(n) instead of a full sort.

    w = exp(z) for every token (0 for -inf), total = w.sum(). Tokens are bucketed by value (a monotone map,
    so buckets are value-ordered and ties share a bucket); bucket masses locate the bucket where the
    cumulative mass crosses top_p; only that bucket is sorted."""
    lo = max(float(z.min()), -746.0)  # exp(z) == 0 below about -745: all of those share bucket 0
    if not lo < 0.0:  # every token has the same value
        return _top_p_cut(z, np.flatnonzero(z > -np.inf), math.log(total), top_p)
    nb = _BUCKETS
    np.subtract(z, lo, out=scratch)
    np.multiply(scratch, nb / -lo, out=scratch)
    np.clip(scratch, 0, nb - 1, out=scratch)
    idx = scratch.astype(np.intp)
    above = np.cumsum(np.bincount(idx, weights=w, minlength=nb)[::-1]) / total  # mass of buckets >= nb-1-i
    i = min(int(np.searchsorted(above, top_p, side="left")), nb - 1)
    j = nb - 1 - i  # the crossing bucket
    base = float(above[i - 1]) if i > 0 else 0.0  # mass strictly above bucket j (< top_p)
    keep = idx > j
    ids = np.flatnonzero(idx == j)
    if ids.shape[0] == 0:  # only when rounding put top_p above the total mass: everything is kept
        return np.flatnonzero(keep | (z > -np.inf))
    vals = z[ids]
    s = np.sort(vals)[::-1]
    ps = np.exp(s) / total
    before = np.empty_like(ps)
    before[0] = base
    np.cumsum(ps[:-1], out=before[1:])
    before[1:] += base
    n_keep = max(1, int(np.searchsorted(before, top_p, side="left")))
    if n_keep >= ids.shape[0]:
        keep[ids] = True
    else:
        boundary = s[n_keep - 1]
        in_j = vals > boundary
        n_ties = n_keep - int(np.count_nonzero(in_j))
        if n_ties > 0:
            tied = np.flatnonzero(vals == boundary)
            in_j[tied[tied.shape[0] - n_ties :]] = True
        keep[ids[in_j]] = True
    if j == 0:
        keep &= z > -np.inf
    return np.flatnonzero(keep)


class Sampler:
    """Stateful sampler: owns a numpy Generator seeded from params.seed (None => fresh entropy).

    Each non-greedy sample() consumes exactly one uniform draw, so the same seed and the same sequence of
    logits/histories give the same tokens. Greedy sampling consumes no randomness.
    Not thread-safe (the Generator and the vocab-sized work buffers are per instance)."""

    def __init__(self, params: SamplingParams | None = None):
        if params is None:
            params = SamplingParams()
        if not isinstance(params, SamplingParams):
            raise TypeError(f"params must be a SamplingParams, got {type(params).__name__}")
        self.params = params
        self.rng = np.random.default_rng(params.seed)
        self._bufs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def _buffers(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # Reused float64 work arrays: fresh vocab-sized allocations cost page faults on every step.
        if self._bufs is None or self._bufs[0].shape[0] != n:
            self._bufs = (np.empty(n), np.empty(n), np.empty(n))
        return self._bufs

    def _filter(self, logits: np.ndarray, history: Sequence[int]) -> tuple[np.ndarray | None, np.ndarray]:
        """(ids, weights): surviving token ids ascending (None = every token, in order) and their unnormalized
        probabilities. `weights` may be a view of a work buffer, valid until the next call."""
        p = self.params
        _check_logits(logits)
        n = logits.shape[0]
        z, w, scratch = self._buffers(n)
        np.copyto(z, logits)  # never touch the caller's array
        _penalize(z, history, p.repeat_penalty, p.repeat_last_n)

        m = float(z.max())
        if math.isnan(m):  # NaN logits can never be picked
            z[np.isnan(z)] = -np.inf
            m = float(z.max())
        if m == -np.inf:
            raise ValueError("logits are all -inf/NaN: nothing can be sampled")
        if m == np.inf:  # only the +inf tokens remain, equally likely
            inf = z == np.inf
            z.fill(-np.inf)
            z[inf] = 0.0
            m = 0.0

        if p.temperature == 0.0:
            return np.array([int(np.argmax(z))], dtype=np.int64), np.ones(1)

        # z = (logits - max) / T, so max(z) == 0 and exp(z) never overflows; ordering (and ties) as in
        # transformers, which applies top-k/top-p/min-p to the temperature-scaled scores.
        z -= m
        z /= p.temperature

        support: np.ndarray | None = None  # ids left by top-k (None => all tokens)
        if 0 < p.top_k < n:
            support = _top_k_ids(z, p.top_k)

        # min-p keeps prob >= min_p * max prob, i.e. z >= log(min_p). Relative to the max, which every filter
        # keeps, so it gives the same set before or after top-k/top-p renormalization.
        min_p_z = math.log(p.min_p) if p.min_p > 0.0 else -np.inf
        if support is not None:
            kept = support[z[support] >= min_p_z] if p.min_p > 0.0 else support
        elif p.min_p > 0.0:
            kept = np.flatnonzero(z >= min_p_z)
        elif float(z.min()) > -np.inf:
            kept = None
        else:
            kept = np.flatnonzero(z > -np.inf)

        full_w = False  # whether w holds exp(z) for every token
        if p.top_p < 1.0 and (kept is None or kept.shape[0] > 1):
            # Every candidate set here is value-closed (all tokens above some value), so cutting it is the
            # same as cutting the whole top-k distribution, then applying min-p (transformers' order): if the
            # set holds less than top_p, top-p keeps all of it plus only tokens that min-p removes anyway.
            if support is not None:
                log_norm = math.log(float(np.exp(z[support]).sum()))
                kept = _top_p_cut(z, kept, log_norm, p.top_p)
            else:
                np.exp(z, out=w)
                full_w = True
                total = float(w.sum())
                if (n if kept is None else kept.shape[0]) <= _SMALL:
                    kept = _top_p_cut(z, kept, math.log(total), p.top_p)
                else:
                    cut = _top_p_cut_bucketed(z, w, total, p.top_p, scratch)
                    kept = cut[z[cut] >= min_p_z] if p.min_p > 0.0 else cut

        if kept is None:
            if not full_w:
                np.exp(z, out=w)
            return None, w
        return kept, np.exp(z[kept])

    def distribution(self, logits: np.ndarray, history: Sequence[int] = ()) -> tuple[np.ndarray, np.ndarray]:
        """The final sampling distribution: (token ids ascending int64, probabilities float64 summing to 1).

        Only tokens that survive every filter are returned. For temperature 0 it is the argmax with prob 1.
        NaN logits are treated as -inf; if any logit is +inf, only the +inf tokens remain (uniformly)."""
        ids, w = self._filter(logits, history)
        if ids is None:
            ids = np.arange(w.shape[0], dtype=np.int64)
        return ids.astype(np.int64, copy=False), w / w.sum()

    def sample(self, logits: np.ndarray, history: Sequence[int] = ()) -> int:
        """Pick the next token id from one step's 1-D float logits. `history` = previously seen token ids
        (prompt + generated), used only by the repetition penalty. The logits array is not modified."""
        ids, w = self._filter(logits, history)
        if w.shape[0] == 1:
            return int(0 if ids is None else ids[0])
        cum = np.cumsum(w, out=self._bufs[0] if ids is None else None)  # type: ignore[index]
        u = self.rng.random() * cum[-1]
        i = int(np.searchsorted(cum, u, side="right"))
        if i >= w.shape[0]:  # u rounded up to the total: take the last token with non-zero weight
            i = int(np.flatnonzero(w > 0)[-1])
        return i if ids is None else int(ids[i])
