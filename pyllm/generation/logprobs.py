"""logprobs.py: log-probabilities of the chosen token and the n most likely ones, from the model's
own distribution (log-softmax of the raw logits, before penalties, temperature and truncation, as
vLLM reports them by default), and each token's text and UTF-8 bytes as OpenAI's API shows them."""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import List, Tuple

import numpy as np


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    token: str  # the token's text (a lone byte of a multi-byte character shows as U+FFFD)
    bytes: List[int]  # its UTF-8 bytes
    logprob: float
    top: List[Tuple[str, float, List[int]]] = field(default_factory=list)  # (token, logprob, bytes), best first


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """float64 log-probabilities along the last axis (also what perplexity scores with)."""
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    x -= np.log(np.exp(x).sum(axis=-1, keepdims=True))
    return x


@functools.lru_cache(maxsize=None)
def _byte_decoder() -> dict:
    """The inverse of GPT-2's byte-to-unicode map that byte-level BPE vocabularies are written in."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


class TokenText:
    """Maps token ids to (text, bytes), cached per id."""

    def __init__(self, tokenizer):
        from ..tokenizer import _decoder_types

        self._tok = tokenizer
        self._byte_level = "ByteLevel" in _decoder_types(tokenizer.backend)
        self._cache: dict = {}

    def __call__(self, token_id: int) -> Tuple[str, List[int]]:
        hit = self._cache.get(token_id)
        if hit is None:
            hit = self._cache[token_id] = self._compute(token_id)
        return hit

    def _compute(self, token_id: int) -> Tuple[str, List[int]]:
        tok = self._tok
        piece = tok.id_to_piece(token_id)
        if token_id in tok.special_ids:
            raw = piece.encode("utf-8")
        elif token_id in tok._byte_ids and len(piece) == 6 and piece.startswith("<0x"):
            raw = bytes([int(piece[3:5], 16)])
        elif self._byte_level:
            dec = _byte_decoder()
            raw = bytes(dec[c] for c in piece) if all(c in dec for c in piece) else piece.encode("utf-8")
        else:
            raw = piece.replace("\u2581", " ").encode("utf-8")
        return raw.decode("utf-8", errors="replace"), list(raw)


def token_logprob(logprobs: np.ndarray, token_id: int, top_n: int, text: TokenText) -> TokenLogprob:
    t, b = text(token_id)
    top = []
    if top_n:
        n = min(top_n, logprobs.shape[0])
        ids = np.argpartition(-logprobs, n - 1)[:n]
        ids = ids[np.lexsort((ids, -logprobs[ids]))]  # most likely first, ties by id
        for i in ids.tolist():
            ti, bi = text(i)
            top.append((ti, float(logprobs[i]), bi))
    return TokenLogprob(token_id=token_id, token=t, bytes=b, logprob=float(logprobs[token_id]), top=top)
