"""engine.py: continuous batching. One background thread runs steps; each step is ONE forward over
every running request (the next token of each decoding one, plus a chunk of prompt for those still
prefilling), so each weight matrix is read once for all of them. Requests join at step boundaries,
finished or cancelled ones leave. Every request keeps its own sampler, penalties and stop rules;
the kernels are batch-invariant, so a seeded request gives the same tokens alone or batched.

Memory: KV caches are counted in token positions against kv_budget_tokens, as vLLM counts its
blocks: a request is admitted when its prompt (and one more position) fits, and grows a position a
step. A finished request leaves its cache behind as a cached prefix (counted by the positions it
holds) that a later prompt starting with the same tokens reuses instead of prefilling them again;
cached prefixes are evicted least-recently-used when running requests need the room. When running
requests alone outgrow the budget, the one admitted last is preempted: its cache is freed and it
goes back to the head of the queue, to be prefilled again (prompt and what it has generated) when
there is room, and to go on exactly where it stopped (the kernels are batch-invariant, its sampler
keeps its state). Requests that do not fit wait in a FIFO queue of at most max_queue."""
from __future__ import annotations

import itertools
import threading
from collections import OrderedDict, deque
from typing import List, Optional

import numpy as np

from ..errors import ContextLengthError, QueueFullError
from ..generation.logprobs import TokenText, log_softmax, token_logprob
from ..generation.options import GenerationOptions
from ..generation.penalties import Penalties
from ..generation.stop_strings import StopStringFilter
from ..sampling import Sampler
from .request import Chunk, Request

_IDLE_EXIT_S = 5.0  # the step thread ends after this long without work (and restarts on demand)


class _Slot:
    """A KV cache and the tokens whose keys and values it holds."""

    __slots__ = ("kv", "tokens")

    def __init__(self, kv, tokens=None):
        self.kv = kv
        self.tokens: List[int] = tokens if tokens is not None else []


def _common_prefix(a: List[int], b: List[int]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if diff.size else n


class _Active:
    """Engine-side state of one admitted request."""

    def __init__(self, engine: "Engine", req: Request):
        model = engine.model
        o = req.options
        self.req = req
        self.slot: Optional[_Slot] = None
        self.feed: List[int] = req.prompt_ids  # tokens to prefill: the prompt (after a preemption, more)
        self.prefilled = 0  # tokens of feed in the cache
        self.next_token: Optional[int] = None  # sampled, to be fed in the next step
        self.sampler = Sampler(model._sampling_params(o.temperature, o.top_k, o.top_p, o.min_p,
                                                      o.repeat_penalty, o.seed))
        self.penalties = Penalties(o)
        self.stop_ids = frozenset(o.stop_token_ids) | (frozenset() if o.ignore_eos else model.eos_ids)
        self.decoder = model.tokenizer.stream_decoder(skip_special_tokens=not o.special, prompt_ids=req.prompt_ids)
        self.stops = StopStringFilter(o.stop)
        self.generated = 0
        self.admitted = False

    def need(self) -> int:
        """KV positions this request holds after its next step (a prefilling one: its whole feed)."""
        if self.next_token is None:
            return len(self.feed)
        return len(self.slot.tokens) + 1


class Engine:
    """The batching engine of one Model (model.engine). submit() validates and queues a request and
    returns at once; the step thread does the rest."""

    def __init__(self, model, max_sequences: int = 16, max_queue: int = 64, kv_budget_tokens: Optional[int] = None,
                 chunk_tokens: int = 128):
        for name, v in (("max_sequences", max_sequences), ("max_queue", max_queue), ("chunk_tokens", chunk_tokens)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if kv_budget_tokens is None:
            per_token = model.kv_bytes_per_token
            kv_budget_tokens = max(model.n_ctx, min(max_sequences * model.n_ctx, (2 << 30) // per_token))
        if isinstance(kv_budget_tokens, bool) or not isinstance(kv_budget_tokens, int) or kv_budget_tokens < 1:
            raise ValueError(f"kv_budget_tokens must be a positive integer, got {kv_budget_tokens!r}")
        self.model = model
        self.max_sequences = max_sequences
        self.max_queue = max_queue
        self.kv_budget_tokens = kv_budget_tokens
        self.chunk_tokens = chunk_tokens
        self._cond = threading.Condition()
        self._waiting: deque = deque()
        self._running: List[_Active] = []
        self._cache: "OrderedDict[int, _Slot]" = OrderedDict()  # cached prefixes, least recently used first
        self._cache_ids = itertools.count()
        self._thread: Optional[threading.Thread] = None
        self._closed = False
        self._token_text = None
        self.counters = dict(steps=0, prefilled_tokens=0, reused_tokens=0, decoded_tokens=0, preempted=0,
                             peak_kv_tokens=0)

    # ------------------------------------------------------------------ public
    def submit(self, prompt_ids: List[int], options: GenerationOptions) -> Request:
        model = self.model
        if not isinstance(options, GenerationOptions):
            raise TypeError("options must be a GenerationOptions")
        options.check_vocab(model.vocab_size)
        if not prompt_ids:
            raise ValueError("the prompt is empty (no tokens)")
        if len(prompt_ids) >= model.n_ctx:
            raise ContextLengthError(f"prompt has {len(prompt_ids)} tokens but the context holds {model.n_ctx} "
                                     "(and one more is needed to generate)")
        req = Request(list(prompt_ids), options)
        active = _Active(self, req)  # checks the sampling values
        if min(model.n_ctx, len(prompt_ids) + options.max_tokens) > self.kv_budget_tokens:
            raise ContextLengthError(f"prompt ({len(prompt_ids)} tokens) plus max_tokens ({options.max_tokens}) "
                                     f"exceeds the engine's KV budget of {self.kv_budget_tokens} tokens")
        if options.max_tokens == 0:
            req._push(Chunk("", finish_reason="length"))
            return req
        req._on_cancel = self._wake
        with self._cond:
            if self._closed:
                raise RuntimeError("the engine is closed")
            if len(self._waiting) >= self.max_queue:
                raise QueueFullError(f"the request queue is full ({self.max_queue} waiting); try again later")
            self._waiting.append(active)
            self._ensure_thread()
            self._cond.notify_all()
        return req

    def stats(self) -> dict:
        with self._cond:
            return dict(running=len(self._running), waiting=len(self._waiting), cached=len(self._cache),
                        cached_tokens=sum(len(s.tokens) for s in self._cache.values()),
                        held_tokens=sum(a.need() for a in self._running), kv_budget_tokens=self.kv_budget_tokens,
                        max_sequences=self.max_sequences, **self.counters)

    def clear_cache(self) -> None:
        """Drop every cached prefix (their memory is freed)."""
        with self._cond:
            self._cache.clear()

    def close(self) -> None:
        """Cancel everything and stop the step thread."""
        with self._cond:
            self._closed = True
            for a in list(self._waiting) + list(self._running):
                a.req._cancelled = True
            self._cond.notify_all()
            t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join()
        with self._cond:
            self._reap()
            self._cache.clear()

    # ------------------------------------------------------------------ step thread
    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="pyllm-engine", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._reap()
                self._make_room()
                self._admit()
                if not self._running:
                    if self._closed:
                        self._thread = None
                        return
                    if self._waiting:  # cannot happen (a lone request always fits), but never spin
                        self._cond.wait(0.05)
                    elif not self._cond.wait(_IDLE_EXIT_S) and not self._waiting:
                        self._thread = None  # idle: end (the model can be garbage-collected)
                        return
                    continue
                batch = list(self._running)
                used = self._used_tokens()  # positions in use once this step has run (<= the budget)
                if used > self.counters["peak_kv_tokens"]:
                    self.counters["peak_kv_tokens"] = used
            try:
                self._step(batch)
            except BaseException as e:  # a failed forward: fail what ran, keep serving
                with self._cond:
                    for a in batch:
                        if a in self._running:
                            self._running.remove(a)
                            a.slot = None
                            a.req._push(e)

    def _reap(self) -> None:
        """Remove cancelled requests (caller holds the lock); their caches are freed."""
        if self._waiting and any(a.req.cancelled for a in self._waiting):
            for a in [a for a in self._waiting if a.req.cancelled]:
                self._waiting.remove(a)
                a.req._push(Chunk("", finish_reason="cancelled"))
        for a in [a for a in self._running if a.req.cancelled]:
            self._running.remove(a)
            a.slot = None
            a.req._push(Chunk("", finish_reason="cancelled"))

    def _used_tokens(self) -> int:
        return sum(a.need() for a in self._running) + sum(len(s.tokens) for s in self._cache.values())

    def _make_room(self) -> None:
        """Before a step: running requests may grow by a position each (prefilling ones were counted
        whole when admitted). Evict cached prefixes, least recently used first, then preempt the
        request admitted last, until the step fits the budget (caller holds the lock)."""
        while self._used_tokens() > self.kv_budget_tokens:
            if self._cache:
                self._cache.popitem(last=False)
                continue
            if len(self._running) <= 1:
                return  # cannot happen: a lone request always fits (checked at submit)
            a = self._running.pop()
            if a.next_token is not None:  # decoding: prefill what it holds plus its pending token
                a.feed = a.slot.tokens + [a.next_token]
                a.next_token = None
            a.slot = None
            a.prefilled = 0
            self._waiting.appendleft(a)
            self.counters["preempted"] += 1

    def _admit(self) -> None:
        """Move waiting requests to running, first come first served, while sequences and KV budget
        allow; cached prefixes are reused, or evicted least-recently-used to make room."""
        while self._waiting and len(self._running) < self.max_sequences:
            a = self._waiting[0]
            prompt = a.feed
            need = len(prompt) + 1  # its prompt, and the first generated token's position
            # the longest prefix held by a cached sequence (taken over if it holds nothing more, else
            # copied) or by a running one (copied: requests sharing a system prompt at the same time)
            best_key, best_slot, best = None, None, 0
            # LongRoPE: keys are rotated with the short or long factors depending on the forward that
            # made them, so only sequences that never reached the original context share prefixes
            long_after = self.model.config.rope_long_after()
            reusable = (lambda s: not long_after or (len(prompt) <= long_after and len(s.tokens) <= long_after))
            for key, slot in self._cache.items():
                if not reusable(slot):
                    continue
                n = _common_prefix(slot.tokens, prompt)
                if n > best:
                    best_key, best_slot, best = key, slot, n
            for r in self._running:
                if not reusable(r.slot):
                    continue
                n = _common_prefix(r.slot.tokens, prompt)
                if n > best:
                    best_key, best_slot, best = None, r.slot, n
            best = min(best, len(prompt) - 1)  # the last prompt token is always run: its logits are needed
            take_over = best_key is not None and best == len(best_slot.tokens)
            used = self._used_tokens() - (len(self._cache[best_key].tokens) if take_over else 0)
            # evict least recently used prefixes (not the one this request reuses) until it fits
            for key in list(self._cache):
                if used + need <= self.kv_budget_tokens:
                    break
                if key == best_key:
                    continue
                used -= len(self._cache.pop(key).tokens)
            if used + need > self.kv_budget_tokens:
                if best_key is not None and not take_over:
                    used -= len(self._cache.pop(best_key).tokens)
                    best_key, best_slot, best = None, None, 0
                if used + need > self.kv_budget_tokens:
                    return  # wait for running requests to finish
            self._waiting.popleft()
            if take_over:
                a.slot = self._cache.pop(best_key)
                del a.slot.tokens[best:]
            else:
                try:
                    a.slot = _Slot(self.model._new_kv())
                except (MemoryError, ValueError) as e:  # no memory for a cache: fail this request only
                    a.req._push(e)
                    continue
                if best > 0:
                    a.slot.kv.copy_prefix_from(best_slot.kv, best)
                    a.slot.tokens = prompt[:best]
                    if best_key is not None:
                        self._cache.move_to_end(best_key)
            a.prefilled = best
            if not a.admitted:  # (a preempted request comes back: its prompt's count stays)
                a.req.cached_tokens = best
                a.admitted = True
            self.counters["reused_tokens"] += best
            self._running.append(a)

    def _add_to_cache(self, slot: _Slot) -> None:
        """Keep a finished sequence's cache as a prefix for later prompts; a cached prefix that is
        the start of another one is redundant and dropped."""
        for key, other in list(self._cache.items()):
            n = _common_prefix(other.tokens, slot.tokens)
            if n == len(slot.tokens):
                self._cache.move_to_end(key)
                return
            if n == len(other.tokens):
                del self._cache[key]
        self._cache[next(self._cache_ids)] = slot

    def _step(self, batch: List[_Active]) -> None:
        model = self.model
        kvs, tokens, positions, seqs, out_rows, out_who = [], [], [], [], [], []
        feeds = []  # (active, tokens fed this step)
        decoding = [a for a in batch if a.next_token is not None]
        for a in decoding:
            si = len(kvs)
            kvs.append(a.slot.kv)
            out_rows.append(len(tokens))
            out_who.append(a)
            tokens.append(a.next_token)
            positions.append(len(a.slot.tokens))
            seqs.append(si)
            feeds.append((a, [a.next_token]))
        # prompt chunks: a step holds at most chunk_tokens prompt tokens while others decode (so
        # their next token is not held up for long), a full n_batch when nothing decodes
        budget = self.chunk_tokens if decoding else max(self.chunk_tokens, model.n_batch)
        long_after = model.config.rope_long_after()
        for a in batch:
            if a.next_token is not None or budget <= 0:
                continue
            prompt = a.feed
            n = min(budget, len(prompt) - a.prefilled)
            if long_after and len(prompt) > long_after:
                n = len(prompt) - a.prefilled  # LongRoPE: a prompt past the original context in one forward
            chunk = prompt[a.prefilled:a.prefilled + n]
            si = len(kvs)
            kvs.append(a.slot.kv)
            start = len(a.slot.tokens)
            tokens.extend(chunk)
            positions.extend(range(start, start + n))
            seqs.extend([si] * n)
            if a.prefilled + n == len(prompt):
                out_rows.append(len(tokens) - 1)
                out_who.append(a)
            feeds.append((a, chunk))
            budget -= n
        logits = model._forward(kvs, tokens, positions, seqs, out_rows)
        self.counters["steps"] += 1
        for a, fed in feeds:
            a.slot.tokens.extend(fed)
            if a.next_token is None:
                a.prefilled += len(fed)
                self.counters["prefilled_tokens"] += len(fed)
            else:
                self.counters["decoded_tokens"] += 1
        for row, a in zip(logits, out_who):
            if a.req.cancelled:
                continue
            try:
                self._sample(a, row)
            except Exception as e:  # this request's problem (e.g. its filters left nothing to sample)
                with self._cond:
                    self._running.remove(a)
                    a.slot = None
                a.req._push(e)

    def _sample(self, a: _Active, row: np.ndarray) -> None:
        model = self.model
        o = a.req.options
        if model.n_decodable < row.shape[0]:  # padding ids past the tokenizer cannot be generated
            row = row.copy()
            row[model.n_decodable:] = -np.inf
        tok = a.sampler.sample(a.penalties.adjust(row), a.slot.tokens)
        if tok in a.stop_ids:
            self._finish(a, "stop")
            return
        a.generated += 1
        a.req.completion_tokens = a.generated
        a.penalties.record(tok)
        lps = None
        if o.logprobs:
            if self._token_text is None:
                self._token_text = TokenText(model.tokenizer)
            lps = [token_logprob(log_softmax(row), tok, o.top_logprobs, self._token_text)]
        text, hit = a.stops.push(a.decoder.push(tok))
        if hit:
            a.req._push(Chunk(text, [tok], lps))
            self._finish(a, "stop", flush=False)
            return
        if a.generated >= o.max_tokens or len(a.slot.tokens) >= model.n_ctx:
            a.req._push(Chunk(text, [tok], lps))
            self._finish(a, "length")
            return
        a.next_token = tok
        a.req._push(Chunk(text, [tok], lps))

    def _finish(self, a: _Active, reason: str, flush: bool = True) -> None:
        tail = ""
        if flush:
            text, hit = a.stops.push(a.decoder.flush())
            tail = text + ("" if hit else a.stops.flush())
            if hit:
                reason = "stop"
        with self._cond:
            if a in self._running:
                self._running.remove(a)
            if a.slot is not None and a.slot.tokens:
                self._add_to_cache(a.slot)
            a.slot = None
            self._cond.notify_all()
        a.req._push(Chunk(tail, finish_reason=reason))
