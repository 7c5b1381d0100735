"""Turning sampled tokens' bytes into text deltas, with stop sequences matched across token boundaries.

A token's piece may end inside a UTF-8 character, and a stop string may span several tokens, so
text is released only when it can no longer change: incomplete characters wait for their next bytes,
and a tail that could still grow into a stop string waits until it cannot.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field


@dataclass(slots=True)
class TextOutput:
    """Per-sequence output state. Feed bytes with `push`; `flush` at the end releases the held tail."""

    stop: tuple[str, ...] = ()
    text: str = ""  # everything released so far
    matched_stop: str | None = None
    _held: str = ""
    _decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace")
    )

    def push(self, piece: bytes) -> str:
        """Add a token's bytes; return the text that is now final (may be empty).

        After a stop string matched, `matched_stop` is set, the text before it is returned, and the
        caller must end the sequence.
        """
        self._held += self._decoder.decode(piece)
        if not self.stop:
            return self._release(len(self._held))
        for stop in self.stop:
            at = self._held.find(stop)
            if at >= 0:
                self.matched_stop = stop
                out = self._release(at)
                self._held = ""
                return out
        return self._release(len(self._held) - self._partial_stop_len())

    def flush(self) -> str:
        """Release everything held (the sequence ended for another reason)."""
        if self.matched_stop is not None:
            return ""
        self._held += self._decoder.decode(b"", final=True)
        return self._release(len(self._held))

    def _partial_stop_len(self) -> int:
        """Length of the longest tail of the held text that is a proper prefix of a stop string."""
        best = 0
        for stop in self.stop:
            for n in range(min(len(stop) - 1, len(self._held)), best, -1):
                if self._held.endswith(stop[:n]):
                    best = n
                    break
        return best

    def _release(self, n: int) -> str:
        out, self._held = self._held[:n], self._held[n:]
        self.text += out
        return out
