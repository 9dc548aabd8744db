"""model.py: the user-facing Model (generate, stream, complete, chat, submit, logits, tokenize) and
Sequence, the stateful per-sequence API (append tokens, read the last logits, reset). Generation
runs on the model's batching engine (pyllm/serving/engine.py), so concurrent callers share steps;
Sequence calls the forward directly. Both go through one lock around the engine's scratch."""
from __future__ import annotations

import os
import threading
from typing import Iterable, Iterator, Optional, Sequence as Seq, Union

import numpy as np

from . import _engine
from .config import ModelConfig
from .device import cuda_model
from .errors import ContextLengthError
from .generation.options import GenerationOptions
from .sampling import SamplingParams
from .serving.engine import Engine
from .serving.request import Completion, Request
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
        self._kv = model._new_kv()
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
        long_after = self._model.config.rope_long_after()
        if long_after and len(self.tokens) + len(ids) > long_after:
            # LongRoPE: the forward that reaches the original context picks the long factors for all
            # of its tokens (as transformers does for one forward): feed them in one piece
            nb = len(ids)
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
                 generation_config: Optional[dict] = None, path: str = "", kv_type: str = "f32", device: str = "cpu"):
        self.kv_type = check_kv_type(kv_type)
        self._cmodel = cmodel
        self.device = device
        # device="cuda": the weights on the GPU and the forward there (csrc/cuda/); the CPU model keeps the config
        self._cuda = cuda_model(cmodel) if device == "cuda" else None
        self.config = config
        self.tokenizer = tokenizer
        self.n_ctx = n_ctx
        self.n_threads = n_threads or default_threads()
        self.n_batch = 512
        self.path = path
        self.generation_config = generation_config or {}
        self._runner = _engine.Runner(cmodel)
        self._lock = threading.Lock()
        self._engine_lock = threading.Lock()
        self._engine: Optional[Engine] = None
        eos = set(tokenizer.eos_ids)
        for src in (self.generation_config.get("eos_token_id"), config.eos_token_id):
            if isinstance(src, int):
                eos.add(src)
            elif isinstance(src, list):
                eos.update(x for x in src if isinstance(x, int))
        self.eos_ids = frozenset(eos)
        # ids the tokenizer can decode: a checkpoint may pad its vocabulary past the tokenizer
        # (to a multiple of 64 or 128); generation never samples the padding ids
        self.n_decodable = min(config.vocab_size, tokenizer.vocab_size)

    def __repr__(self) -> str:
        c = self.config
        return (f"<pyllm.Model {c.architecture} layers={c.num_layers} dim={c.hidden_size} vocab={c.vocab_size} "
                f"n_ctx={self.n_ctx} kv={self.kv_type} " + (f"device=cuda>" if self._cuda is not None else
                                                        f"threads={self.n_threads} isa={_engine.get_isa()}>"))

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    # ------------------------------------------------------------------ engine access
    def _forward(self, kvs, tokens, positions, seqs, out_rows) -> np.ndarray:
        with self._lock:
            if self._cuda is not None:
                return self._cuda.forward(kvs, tokens, positions, seqs, out_rows)
            return self._runner.forward(kvs, tokens, positions, seqs, out_rows, self.n_threads)

    def _check_ids(self, token_ids) -> list:
        """token_ids as a list of Python ints: integers only (int, numpy integers, integer arrays);
        a float such as 1.5 or a bool is a TypeError naming it, not a silently truncated id."""
        if isinstance(token_ids, (str, bytes)):
            raise TypeError("expected token ids, got a string: use tokenize() first")
        if isinstance(token_ids, np.ndarray):
            if token_ids.ndim != 1 or (token_ids.size and token_ids.dtype.kind not in "iu"):
                raise TypeError(f"token ids must be a 1-d integer array, got {token_ids.ndim}-d {token_ids.dtype}")
            ids = token_ids.tolist()
        else:
            try:
                ids = list(token_ids)
            except TypeError:
                raise TypeError(f"token ids must be a sequence of integers, got {token_ids!r}") from None
            for t in ids:
                if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer)):
                    raise TypeError(f"token ids must be integers, got {t!r} ({type(t).__name__})")
            ids = [int(t) for t in ids]
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
        """Token ids of a prompt (text or ids); its length is checked by the engine's submit()."""
        return self.tokenize(prompt) if isinstance(prompt, str) else self._check_ids(prompt)

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

    # ------------------------------------------------------------------ the batching engine
    @property
    def kv_bytes_per_token(self) -> int:
        """KV cache bytes one token position takes (all layers, keys and values)."""
        c = self.config
        return 2 * c.num_layers * c.num_kv_heads * c.head_dim * (4 if self.kv_type == "f32" else 2)

    def _new_kv(self):
        if self._cuda is not None:
            return _engine.CudaKVCache(self._cuda, self.n_ctx, KV_TYPES[self.kv_type])
        return _engine.KVCache(self._cmodel, self.n_ctx, KV_TYPES[self.kv_type])

    @property
    def engine(self) -> "Engine":
        """The continuous-batching engine every generate / stream / chat / submit call goes through
        (made on first use with the defaults; see configure_engine)."""
        with self._engine_lock:
            if self._engine is None:
                self._engine = Engine(self)
            return self._engine

    def configure_engine(self, max_sequences: int = 16, max_queue: int = 64, kv_budget_tokens: Optional[int] = None,
                         chunk_tokens: int = 128) -> None:
        """Engine settings: at most max_sequences requests run at once (each step is one forward over
        all of them), max_queue more may wait (beyond: QueueFullError), KV caches of running requests
        and cached prefixes hold at most kv_budget_tokens positions together (default: room for every
        sequence's full context, capped at 2 GiB of cache), and while others decode a step prefills at
        most chunk_tokens prompt tokens. Only while no request runs."""
        engine = Engine(self, max_sequences=max_sequences, max_queue=max_queue, kv_budget_tokens=kv_budget_tokens,
                        chunk_tokens=chunk_tokens)
        with self._engine_lock:
            old = self._engine
            if old is not None:
                st = old.stats()
                if st["running"] or st["waiting"]:
                    raise RuntimeError("configure_engine() while requests are running")
                old.close()
            self._engine = engine

    def engine_stats(self) -> dict:
        """running / waiting / cached sequences, KV positions reserved and cached, and counters."""
        return self.engine.stats()

    def close(self) -> None:
        """Cancel running requests and stop the engine's thread (it also stops by itself when idle)."""
        with self._engine_lock:
            if self._engine is not None:
                self._engine.close()
                self._engine = None

    def submit(self, prompt: Prompt, **options) -> Request:
        """Queue a generation and return at once: iterate the Request for Chunks (text, token ids,
        logprobs, finish_reason), or call .result(). Options (see GenerationOptions): max_tokens (128),
        temperature, top_k, top_p, min_p, repeat_penalty, seed, stop (strings, never emitted),
        presence_penalty, frequency_penalty, logit_bias ({token id: bias}), logprobs, top_logprobs,
        ignore_eos, special (keep control tokens in the text), stop_token_ids. Bad values raise here,
        before anything runs."""
        opts = GenerationOptions.from_kwargs(**options)
        return self.engine.submit(self._prompt_ids(prompt), opts)

    def stream(self, prompt: Prompt, max_tokens: int = 128, **options) -> Iterator[str]:
        """Yields the continuation's text as it is produced (never a broken UTF-8 character). Stops at
        an end-of-sequence token (unless ignore_eos), a stop string, after max_tokens, or when the
        context is full. Unset sampling values come from generation_config.json, else llama.cpp's
        defaults (temperature 0.8, top_k 40, top_p 0.95, min_p 0.05); temperature=0 is greedy.
        Options as for submit(); they are checked before this returns."""
        return _texts(self.submit(prompt, max_tokens=max_tokens, **options))

    def generate(self, prompt: Prompt, max_tokens: int = 128, **options) -> str:
        """The continuation of prompt as one string; see stream() for the options."""
        return self.submit(prompt, max_tokens=max_tokens, **options).result().text

    def complete(self, prompt: Prompt, max_tokens: int = 128, **options) -> Completion:
        """Like generate(), with the details: token ids, finish_reason ("stop" / "length"), logprobs
        when asked for, prompt and completion token counts."""
        return self.submit(prompt, max_tokens=max_tokens, **options).result()

    def generate_tokens(self, prompt: Prompt, max_tokens: int = 128, **options) -> list:
        """Like generate() but returns the new token ids (an end-of-sequence token is not included)."""
        return self.submit(prompt, max_tokens=max_tokens, **options).result().token_ids

    # ------------------------------------------------------------------ chat
    def apply_chat_template(self, messages, add_generation_prompt: bool = True, chat_template: Optional[str] = None,
                            tools=None, **kwargs) -> str:
        """The conversation as the model's chat template renders it (as transformers'
        apply_chat_template(..., tokenize=False)). chat_template: a Jinja template, or the name of
        one of the model's named templates; kwargs are passed to the template."""
        from .chat.template import render_chat_template, select_chat_template

        template = select_chat_template(self.tokenizer, chat_template, tools)
        return render_chat_template(template, messages, add_generation_prompt=add_generation_prompt, tools=tools,
                                    special_tokens=self.tokenizer.special_tokens_map, **kwargs)

    @property
    def end_of_turn_ids(self) -> frozenset:
        """Tokens that end an assistant turn: EOS (config and generation config) and the chat
        template's end-of-turn tokens (<|eot_id|>, <|im_end|>, <|end|>, <end_of_turn>, ...)."""
        from .chat.template import end_of_turn_ids

        return frozenset(self.eos_ids | set(end_of_turn_ids(self.tokenizer)))

    def submit_chat(self, messages, tools=None, chat_template: Optional[str] = None,
                    template_kwargs: Optional[dict] = None, **options) -> Request:
        """submit() for a conversation: renders the chat template with the generation prompt and
        stops at the end of the assistant's turn."""
        text = self.apply_chat_template(messages, add_generation_prompt=True, chat_template=chat_template, tools=tools,
                                        **(template_kwargs or {}))
        ids = self.tokenizer.encode(text, add_special_tokens=False)  # the template wrote BOS if it wants one
        stop_ids = set(options.pop("stop_token_ids", ()) or ())
        if not options.get("ignore_eos"):
            stop_ids |= self.end_of_turn_ids
        return self.submit(ids, stop_token_ids=tuple(sorted(stop_ids)), **options)

    def chat(self, messages, stream: bool = False, **options):
        """The assistant's reply to a conversation (a list of {"role", "content"} dicts): a string, or
        with stream=True an iterator of its pieces. Options as for submit(), plus tools, chat_template
        and template_kwargs. A finished conversation's cache is kept, so the next turn prefills only
        what is new."""
        req = self.submit_chat(messages, **options)
        return _texts(req) if stream else req.result().text


def _texts(req: Request) -> Iterator[str]:
    try:
        for chunk in req:
            if chunk.text:
                yield chunk.text
    finally:
        req.cancel()  # the caller stopped early: free the sequence (no-op once finished)
