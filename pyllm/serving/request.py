"""request.py: what a caller holds for one submitted generation: an iterator (blocking, or async for
an event loop) of Chunks as the engine produces them, cancel(), and result(). The engine thread
pushes events; any number of threads or event loops may wait on them."""
from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import List, Optional

from ..generation.logprobs import TokenLogprob


@dataclass
class Chunk:
    text: str  # new text (may be empty: held back for a stop string or an unfinished character)
    token_ids: List[int] = field(default_factory=list)  # the tokens generated in this step
    logprobs: Optional[List[TokenLogprob]] = None  # one per token, when asked for
    finish_reason: Optional[str] = None  # set on the last chunk: "stop", "length" or "cancelled"


@dataclass
class Completion:
    text: str
    token_ids: List[int]
    finish_reason: str
    logprobs: Optional[List[TokenLogprob]]
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # prompt tokens whose keys and values came from a cached prefix


class Request:
    """One generation running on (or waiting for) the engine. Iterate it for Chunks; the last one
    has a finish_reason. cancel() ends it and frees its sequence at the next step boundary."""

    def __init__(self, prompt_ids: List[int], options):
        self.prompt_ids = prompt_ids
        self.options = options
        self.prompt_tokens = len(prompt_ids)
        self.completion_tokens = 0
        self.cached_tokens = 0
        self.finish_reason: Optional[str] = None
        self._events: list = []
        self._cond = threading.Condition()
        self._waiters: list = []  # (event loop, asyncio.Event) of async consumers
        self._cancelled = False
        self._on_cancel = None  # set by the engine: wakes its loop

    # ------------------------------------------------------------------ engine side
    def _push(self, item) -> None:
        with self._cond:
            self._events.append(item)
            if isinstance(item, Chunk) and item.finish_reason is not None:
                self.finish_reason = item.finish_reason
            elif isinstance(item, BaseException):
                self.finish_reason = "error"
            self._cond.notify_all()
            waiters = list(self._waiters)
        for loop, ev in waiters:
            try:
                loop.call_soon_threadsafe(ev.set)
            except RuntimeError:  # that loop is closed
                pass

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    # ------------------------------------------------------------------ caller side
    def cancel(self) -> None:
        """Stop generating and free the sequence (idempotent, thread-safe)."""
        if self._cancelled or self.done:
            return
        self._cancelled = True
        if self._on_cancel is not None:
            self._on_cancel()

    @staticmethod
    def _check(item):
        if isinstance(item, BaseException):
            raise item
        return item

    def __iter__(self):
        i = 0
        while True:
            with self._cond:
                while i >= len(self._events):
                    self._cond.wait()
                item = self._events[i]
            i += 1
            chunk = self._check(item)
            yield chunk
            if chunk.finish_reason is not None:
                return

    async def __aiter__(self):
        loop = asyncio.get_running_loop()
        ev = asyncio.Event()
        with self._cond:
            self._waiters.append((loop, ev))
        i = 0
        try:
            while True:
                with self._cond:
                    items = self._events[i:]
                    if not items:
                        ev.clear()
                if not items:
                    await ev.wait()
                    continue
                for item in items:
                    i += 1
                    chunk = self._check(item)
                    yield chunk
                    if chunk.finish_reason is not None:
                        return
        finally:
            with self._cond:
                self._waiters.remove((loop, ev))

    def result(self) -> Completion:
        """Wait for the end; everything generated, with the finish reason and token counts."""
        texts, ids, lps = [], [], []
        reason = None
        for chunk in self:
            texts.append(chunk.text)
            ids.extend(chunk.token_ids)
            if chunk.logprobs is not None:
                lps.extend(chunk.logprobs)
            reason = chunk.finish_reason
        return Completion(text="".join(texts), token_ids=ids, finish_reason=reason,
                          logprobs=lps if self.options.logprobs else None, prompt_tokens=self.prompt_tokens,
                          completion_tokens=self.completion_tokens, cached_tokens=self.cached_tokens)
