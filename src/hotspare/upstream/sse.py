"""Incremental Server-Sent-Events decoding that keeps each event's exact bytes.

Passthrough forwards `SseEvent.raw` unchanged, so the concatenation of every event's `raw` is exactly
the byte stream the upstream sent; the parsed `event`/`data` fields are for looking, not re-encoding.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# An event ends at the first blank line, in any of the three line-ending styles SSE allows.
_BOUNDARY = re.compile(rb"\r\n\r\n|\n\n|\r\r")


@dataclass(frozen=True, slots=True)
class SseEvent:
    event: str  # "" when the block has no `event:` field (OpenAI's style)
    data: str  # the `data:` lines joined with "\n"
    raw: bytes  # the block exactly as received, blank line included


def parse_block(raw: bytes) -> SseEvent:
    event = ""
    data: list[str] = []
    for line in raw.decode("utf-8", errors="replace").splitlines():
        if not line or line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
    return SseEvent(event=event, data="\n".join(data), raw=raw)


class SseDecoder:
    """Feed bytes as they arrive; get back the blocks they complete (comment-only blocks included,
    with empty `event` and `data`, so that no byte is lost). Not thread-safe."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[SseEvent]:
        self._buffer += chunk
        events: list[SseEvent] = []
        start = 0
        for match in _BOUNDARY.finditer(self._buffer):
            # "\r\n\r\n" split across two chunks would look like "\r\r"+"\n..." only mid-buffer; a
            # trailing lone "\r" may still become "\r\n", so wait for more bytes before cutting there.
            if match.group() == b"\r\r" and match.end() == len(self._buffer):
                break
            if match.start() < start:
                continue
            events.append(parse_block(self._buffer[start : match.end()]))
            start = match.end()
        self._buffer = self._buffer[start:]
        return events

    def flush(self) -> SseEvent | None:
        """At end of stream: the bytes left over as a last (unterminated) block, or None if none."""
        rest, self._buffer = self._buffer, b""
        return parse_block(rest) if rest else None
