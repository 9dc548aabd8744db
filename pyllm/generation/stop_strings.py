"""stop_strings.py: ends a text stream at the first stop string, which is never emitted, also when
it arrives split over several tokens: text that could still be the start of a stop string is held
back until the next piece shows it is not (or the stream ends)."""
from __future__ import annotations

from typing import Sequence, Tuple


class StopStringFilter:
    def __init__(self, stops: Sequence[str]):
        self._stops = tuple(stops)
        self._held = ""
        self.stopped = False

    def push(self, text: str) -> Tuple[str, bool]:
        """Add a piece of text. Returns (text safe to emit, whether a stop string was reached)."""
        if self.stopped:
            return "", True
        if not self._stops:
            return text, False
        buf = self._held + text
        cut = -1
        for s in self._stops:
            i = buf.find(s)
            if i >= 0 and (cut < 0 or i < cut):
                cut = i
        if cut >= 0:
            self._held = ""
            self.stopped = True
            return buf[:cut], True
        # hold back the longest tail of buf that is a proper prefix of some stop string
        keep = 0
        for s in self._stops:
            for k in range(min(len(s) - 1, len(buf)), keep, -1):
                if buf.endswith(s[:k]):
                    keep = k
                    break
        self._held = buf[len(buf) - keep:] if keep else ""
        return buf[: len(buf) - keep], False

    def flush(self) -> str:
        """The end of the stream: whatever was held back is text after all."""
        out, self._held = ("" if self.stopped else self._held), ""
        return out
