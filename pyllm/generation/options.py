"""options.py: GenerationOptions, everything one request asks of generation besides its prompt
(length, sampling, stop strings and tokens, OpenAI's presence/frequency penalties, logit_bias,
logprobs, whether control tokens show in the text). Every value is checked here, once, with a
ValueError naming the option, so the engine and the server see only valid requests."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Mapping, Optional, Tuple

from ..sampling import _is_int, _is_real

MAX_TOP_LOGPROBS = 20  # OpenAI's limit
MAX_STOP_STRINGS = 16
LOGIT_BIAS_LIMIT = 100.0  # OpenAI: biases are in [-100, 100]


@dataclass(frozen=True)
class GenerationOptions:
    """What a request asks for. None for a sampling value means: the model's generation_config.json,
    else llama.cpp's defaults (see Model._sampling_params)."""

    max_tokens: int = 128
    temperature: Optional[float] = None
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    min_p: Optional[float] = None
    repeat_penalty: Optional[float] = None
    seed: Optional[int] = None
    stop: Tuple[str, ...] = ()  # generation ends before any of these strings; they are never emitted
    stop_token_ids: Tuple[int, ...] = ()  # extra tokens that end generation (a chat template's end of turn)
    presence_penalty: float = 0.0  # OpenAI: logit -= presence_penalty if the token was generated before
    frequency_penalty: float = 0.0  # OpenAI: logit -= frequency_penalty * times the token was generated
    logit_bias: Optional[Mapping[int, float]] = None  # token id -> added to its logit, in [-100, 100]
    logprobs: bool = False  # report each chosen token's log-probability
    top_logprobs: int = 0  # and the n most likely tokens at each step (0..20)
    ignore_eos: bool = False
    special: bool = False  # text includes control tokens (<s>, <|im_end|>, ...); default skips them

    def __post_init__(self) -> None:
        def bad(name, why):
            return ValueError(f"{name} {why}, got {getattr(self, name)!r}")

        mt = self.max_tokens
        if not _is_int(mt) or mt < 0:
            raise bad("max_tokens", "must be a non-negative integer")
        for name in ("temperature", "top_p", "min_p", "repeat_penalty", "presence_penalty", "frequency_penalty"):
            v = getattr(self, name)
            if v is None and name in ("temperature", "top_p", "min_p", "repeat_penalty"):
                continue
            if not _is_real(v) or not math.isfinite(float(v)):
                raise bad(name, "must be a finite number")
            object.__setattr__(self, name, float(v))
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise bad(name, "must be between -2 and 2")
        for name in ("top_k", "seed"):
            v = getattr(self, name)
            if v is not None and (not _is_int(v) or v < 0):
                raise bad(name, "must be a non-negative integer")
        # the sampling values' own ranges are checked by SamplingParams when the request is made
        stop = self.stop
        if stop is None:
            stop = ()
        elif isinstance(stop, str):
            stop = (stop,)
        elif isinstance(stop, (list, tuple)):
            stop = tuple(stop)
        else:
            raise bad("stop", "must be a string or a list of strings")
        if len(stop) > MAX_STOP_STRINGS:
            raise bad("stop", f"may hold at most {MAX_STOP_STRINGS} strings")
        for s in stop:
            if not isinstance(s, str) or not s:
                raise ValueError(f"stop must hold non-empty strings, got {s!r}")
        object.__setattr__(self, "stop", stop)
        ids = self.stop_token_ids
        if not isinstance(ids, (list, tuple, set, frozenset)) or not all(_is_int(i) and i >= 0 for i in ids):
            raise bad("stop_token_ids", "must be a list of token ids")
        object.__setattr__(self, "stop_token_ids", tuple(sorted(int(i) for i in ids)))
        lb = self.logit_bias
        if lb is not None:
            if not isinstance(lb, Mapping):
                raise bad("logit_bias", "must be a mapping of token id to bias")
            clean = {}
            for k, v in lb.items():
                try:
                    tid = int(k) if isinstance(k, str) else k
                except ValueError:
                    raise ValueError(f"logit_bias keys must be token ids, got {k!r}") from None
                if not _is_int(tid) or tid < 0:
                    raise ValueError(f"logit_bias keys must be token ids, got {k!r}")
                if not _is_real(v) or not -LOGIT_BIAS_LIMIT <= float(v) <= LOGIT_BIAS_LIMIT:
                    raise ValueError(f"logit_bias values must be numbers in [-100, 100], got {v!r} for token {k!r}")
                clean[int(tid)] = float(v)
            object.__setattr__(self, "logit_bias", clean or None)
        for name in ("logprobs", "ignore_eos", "special"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "must be true or false")
        tl = self.top_logprobs
        if not _is_int(tl) or not 0 <= tl <= MAX_TOP_LOGPROBS:
            raise bad("top_logprobs", f"must be an integer in 0..{MAX_TOP_LOGPROBS}")
        if tl and not self.logprobs:
            object.__setattr__(self, "logprobs", True)

    @classmethod
    def from_kwargs(cls, **kwargs) -> "GenerationOptions":
        """Options from keyword arguments; an unknown name is a TypeError naming it (as a misspelt
        keyword argument would be)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise TypeError(f"unknown generation option(s): {', '.join(unknown)} (known: {', '.join(sorted(names))})")
        return cls(**kwargs)

    def check_vocab(self, vocab_size: int) -> None:
        """Token ids named by the options must exist in the model's vocabulary."""
        for tid in list(self.logit_bias or ()) + list(self.stop_token_ids):
            if tid >= vocab_size:
                raise ValueError(f"token id {tid} in the options is outside the vocabulary (0..{vocab_size - 1})")

    @property
    def needs_penalties(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty or self.logit_bias)


__all__ = ["GenerationOptions", "MAX_TOP_LOGPROBS"]
