"""model.py: the user-facing Model (generate, stream, logits, tokenize) and Sequence, the
stateful per-sequence API (append tokens, read the last logits, reset) that generation runs on.
Prompts are prefilled in chunks of n_batch tokens; each decode step is one engine call."""
from __future__ import annotations

import os
import threading
from typing import Iterable, Iterator, Optional, Sequence as Seq, Union

import numpy as np

from . import _engine
from .config import ModelConfig
from .errors import ContextLengthError
from .sampling import Sampler, SamplingParams
from .tokenizer import Tokenizer

Prompt = Union[str, Seq[int]]


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


# KV cache element types: f32 (exact; the default) or f16 (half the memory, keys and values rounded to fp16
# as they are written: llama.cpp's default)
KV_TYPES = {"f32": 0, "f16": 1}


def check_kv_type(kv_type) -> str:
    if kv_type not in KV_TYPES:
        raise ValueError(f"kv_type must be one of {', '.join(KV_TYPES)}, got {kv_type!r}")
    return kv_type


class Sequence:
    """One sequence's state: its tokens so far and its KV cache. Not thread-safe on its own;
    the model serializes engine calls."""

    def __init__(self, model: "Model"):
        self._model = model
        self._kv = _engine.KVCache(model._cmodel, model.n_ctx, KV_TYPES[model.kv_type])
        self.tokens: list = []
        self._last_logits: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def n_ctx(self) -> int:
        return self._model.n_ctx

    def reset(self) -> None:
        """Forget every token; the cache is reused."""
        self.tokens = []
        self._last_logits = None

    def append(self, token_ids: Iterable[int], all_logits: bool = False) -> np.ndarray:
        """Feed tokens. Returns the logits of the last token (n_vocab,), or with all_logits those of
        every appended token (len, n_vocab)."""
        ids = self._model._check_ids(token_ids)
        if not ids:
            raise ValueError("append() needs at least one token")
        if len(self.tokens) + len(ids) > self.n_ctx:
            raise ContextLengthError(
                f"sequence would hold {len(self.tokens) + len(ids)} tokens but the context is {self.n_ctx} "
                f"(load the model with a larger n_ctx, up to {self._model.config.max_position_embeddings})"
            )
        outs = []
        nb = self._model.n_batch
        for s in range(0, len(ids), nb):
            chunk = ids[s : s + nb]
            start = len(self.tokens)
            rows = np.arange(len(chunk)) if all_logits else [len(chunk) - 1]
            logits = self._model._forward([self._kv], chunk, np.arange(start, start + len(chunk)), [0] * len(chunk), rows)
            self.tokens.extend(chunk)
            outs.append(logits)
        self._last_logits = outs[-1][-1]
        return np.concatenate(outs) if all_logits else self._last_logits

    @property
    def logits(self) -> np.ndarray:
        """Logits after the last appended token."""
        if self._last_logits is None:
            raise ValueError("the sequence is empty: append tokens first")
        return self._last_logits


class Model:
    """A loaded model. Use pyllm.load(...) to make one."""

    def __init__(self, cmodel, config: ModelConfig, tokenizer: Tokenizer, n_ctx: int, n_threads: Optional[int] = None,
                 generation_config: Optional[dict] = None, path: str = "", kv_type: str = "f32"):
        self.kv_type = check_kv_type(kv_type)
        self._cmodel = cmodel
        self.config = config
        self.tokenizer = tokenizer
        self.n_ctx = n_ctx
        self.n_threads = n_threads or default_threads()
        self.n_batch = 512
        self.path = path
        self.generation_config = generation_config or {}
        self._runner = _engine.Runner(cmodel)
        self._lock = threading.Lock()
        eos = set(tokenizer.eos_ids)
        for src in (self.generation_config.get("eos_token_id"), config.eos_token_id):
            if isinstance(src, int):
                eos.add(src)
            elif isinstance(src, list):
                eos.update(x for x in src if isinstance(x, int))
        self.eos_ids = frozenset(eos)

    def __repr__(self) -> str:
        c = self.config
        return (f"<pyllm.Model {c.architecture} layers={c.num_layers} dim={c.hidden_size} vocab={c.vocab_size} "
                f"n_ctx={self.n_ctx} kv={self.kv_type} threads={self.n_threads} isa={_engine.get_isa()}>")

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    # ------------------------------------------------------------------ engine access
    def _forward(self, kvs, tokens, positions, seqs, out_rows) -> np.ndarray:
        with self._lock:
            return self._runner.forward(kvs, tokens, positions, seqs, out_rows, self.n_threads)

    def _check_ids(self, token_ids) -> list:
        if isinstance(token_ids, (str, bytes)):
            raise TypeError("expected token ids, got a string: use tokenize() first")
        try:
            ids = [int(t) for t in token_ids]
        except (TypeError, ValueError):
            raise TypeError("token ids must be integers") from None
        for t in ids:
            if not 0 <= t < self.vocab_size:
                raise ValueError(f"token id {t} is outside the vocabulary (0..{self.vocab_size - 1})")
        return ids

    def sequence(self) -> Sequence:
        """A new, empty sequence with its own KV cache."""
        return Sequence(self)

    # ------------------------------------------------------------------ text
    def tokenize(self, text: str, add_special_tokens: bool = True) -> list:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)

    def detokenize(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def _prompt_ids(self, prompt: Prompt) -> list:
        if isinstance(prompt, str):
            ids = self.tokenize(prompt)
        else:
            ids = self._check_ids(prompt)
        if not ids:
            raise ValueError("the prompt is empty (no tokens)")
        if len(ids) >= self.n_ctx:
            raise ContextLengthError(
                f"prompt has {len(ids)} tokens but the context holds {self.n_ctx} (and one more is needed to generate)"
            )
        return ids

    # ------------------------------------------------------------------ scoring
    def logits(self, token_ids: Seq[int]) -> np.ndarray:
        """float32 logits (len, vocab) of every position of a fresh sequence holding token_ids."""
        ids = self._check_ids(token_ids)
        if not ids:
            raise ValueError("logits() needs at least one token")
        if len(ids) > self.n_ctx:
            raise ContextLengthError(f"{len(ids)} tokens do not fit in the context of {self.n_ctx}")
        return self.sequence().append(ids, all_logits=True)

    # ------------------------------------------------------------------ generation
    def _sampling_params(self, temperature, top_k, top_p, min_p, repeat_penalty, seed) -> SamplingParams:
        g = self.generation_config
        base = SamplingParams()

        def pick(value, key, default):
            if value is not None:
                return value
            v = g.get(key)
            return v if v is not None and g.get("do_sample", True) else default

        return SamplingParams(
            temperature=pick(temperature, "temperature", base.temperature),
            top_k=pick(top_k, "top_k", base.top_k),
            top_p=pick(top_p, "top_p", base.top_p),
            min_p=pick(min_p, "min_p", base.min_p),
            repeat_penalty=pick(repeat_penalty, "repetition_penalty", base.repeat_penalty),
            seed=seed,
        )

    def stream(self, prompt: Prompt, max_tokens: int = 128, temperature: Optional[float] = None,
               top_k: Optional[int] = None, top_p: Optional[float] = None, min_p: Optional[float] = None,
               repeat_penalty: Optional[float] = None, seed: Optional[int] = None, ignore_eos: bool = False,
               ) -> Iterator[str]:
        """Yields the continuation's text as it is produced (never a broken UTF-8 character). Stops at
        an end-of-sequence token (unless ignore_eos), after max_tokens, or when the context is full.
        Unset sampling values come from generation_config.json, else llama.cpp's defaults
        (temperature 0.8, top_k 40, top_p 0.95, min_p 0.05); temperature=0 is greedy."""
        params = self._sampling_params(temperature, top_k, top_p, min_p, repeat_penalty, seed)
        _check_max_tokens(max_tokens)
        ids = self._prompt_ids(prompt)
        return self._stream_tokens(ids, max_tokens, params, ignore_eos)

    def _token_loop(self, ids, max_tokens, params, ignore_eos) -> Iterator[int]:
        """The decode loop: yields sampled token ids until EOS, max_tokens or a full context."""
        seq = self.sequence()
        sampler = Sampler(params)
        logits = seq.append(ids)
        for _ in range(max_tokens):
            tok = sampler.sample(logits, seq.tokens)
            if tok in self.eos_ids and not ignore_eos:
                return
            yield tok
            if len(seq) >= self.n_ctx:
                return
            logits = seq.append([tok])

    def _stream_tokens(self, ids, max_tokens, params, ignore_eos) -> Iterator[str]:
        # primed with the prompt: the continuation's first piece keeps its leading space
        decoder = self.tokenizer.stream_decoder(prompt_ids=ids)
        for tok in self._token_loop(ids, max_tokens, params, ignore_eos):
            piece = decoder.push(tok)
            if piece:
                yield piece
        tail = decoder.flush()
        if tail:
            yield tail

    def generate(self, prompt: Prompt, max_tokens: int = 128, **kwargs) -> str:
        """The continuation of prompt as one string; see stream() for the options."""
        return "".join(self.stream(prompt, max_tokens=max_tokens, **kwargs))

    def generate_tokens(self, prompt: Prompt, max_tokens: int = 128, temperature: Optional[float] = None,
                        top_k: Optional[int] = None, top_p: Optional[float] = None, min_p: Optional[float] = None,
                        repeat_penalty: Optional[float] = None, seed: Optional[int] = None,
                        ignore_eos: bool = False) -> list:
        """Like generate() but returns the new token ids (an end-of-sequence token is not included)."""
        params = self._sampling_params(temperature, top_k, top_p, min_p, repeat_penalty, seed)
        _check_max_tokens(max_tokens)
        return list(self._token_loop(self._prompt_ids(prompt), max_tokens, params, ignore_eos))


def _check_max_tokens(max_tokens) -> None:
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0:
        raise ValueError(f"max_tokens must be a non-negative integer, got {max_tokens!r}")
