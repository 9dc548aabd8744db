"""penalties.py: OpenAI's presence and frequency penalties and logit_bias, applied to one step's
logits before sampling. Counts are of the tokens this request has generated (as OpenAI and vLLM
count them; llama.cpp's repeat_penalty, which also looks at the prompt, stays in sampling.py)."""
from __future__ import annotations

import numpy as np

from .options import GenerationOptions


class Penalties:
    """Per-request state: how often each token was generated. adjust() returns the logits to sample
    from (the input itself when the options ask for nothing)."""

    def __init__(self, options: GenerationOptions):
        self._presence = options.presence_penalty
        self._frequency = options.frequency_penalty
        self._counts: dict = {}
        self._bias_ids = self._bias_vals = None
        if options.logit_bias:
            self._bias_ids = np.fromiter(options.logit_bias.keys(), dtype=np.int64)  # ids checked at submit
            self._bias_vals = np.fromiter(options.logit_bias.values(), dtype=np.float32)
        self.active = bool(self._presence or self._frequency or self._bias_ids is not None)

    def record(self, token_id: int) -> None:
        if self._presence or self._frequency:
            self._counts[token_id] = self._counts.get(token_id, 0) + 1

    def adjust(self, logits: np.ndarray) -> np.ndarray:
        if not self.active:
            return logits
        out = logits.copy()
        if self._bias_ids is not None:
            out[self._bias_ids] += self._bias_vals
        if self._counts:
            ids = np.fromiter(self._counts.keys(), dtype=np.int64, count=len(self._counts))
            counts = np.fromiter(self._counts.values(), dtype=np.float32, count=len(self._counts))
            out[ids] -= counts * np.float32(self._frequency) + np.float32(self._presence)
        return out
