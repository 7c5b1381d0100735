"""Incremental Server-Sent-Events decoding that keeps each event's exact bytes.

Passthrough forwards `SseEvent.raw` unchanged, so the concatenation of every event's `raw` is exactly
the byte stream the upstream sent; the parsed `event`/`data` fields are for looking, not re-encoding.

Bounds: the buffer is a bytearray scanned only from where the last scan stopped (an event fed one
byte at a time costs linear, not quadratic, time), and an event that grows past `MAX_EVENT_BYTES`
without its blank line raises `ValueError` (the stream reader turns it into a MALFORMED failure).
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


MAX_EVENT_BYTES = 16 << 20  # one event; OpenAI's largest (a long tool call's arguments) is far below


class SseDecoder:
    """Feed bytes as they arrive; get back the blocks they complete (comment-only blocks included,
    with empty `event` and `data`, so that no byte is lost). Not thread-safe."""

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._buffer = bytearray()
        self._scan = 0  # where the next boundary search starts (earlier bytes hold none)
        self._max_event_bytes = max_event_bytes

    def feed(self, chunk: bytes) -> list[SseEvent]:
        self._buffer += chunk
        events: list[SseEvent] = []
        start = 0
        while (match := _BOUNDARY.search(self._buffer, self._scan)) is not None:
            # "\r\n\r\n" split across two chunks would look like "\r\r"+"\n..." only mid-buffer; a
            # trailing lone "\r" may still become "\r\n", so wait for more bytes before cutting there.
            if match.group() == b"\r\r" and match.end() == len(self._buffer):
                break
            events.append(parse_block(bytes(self._buffer[start : match.end()])))
            start = self._scan = match.end()
        del self._buffer[:start]
        self._scan = max(0, len(self._buffer) - 3)  # a boundary may still end in the next bytes
        if len(self._buffer) > self._max_event_bytes:
            raise ValueError(f"an SSE event longer than {self._max_event_bytes} bytes")
        return events

    def flush(self) -> SseEvent | None:
        """At end of stream: the bytes left over as a last (unterminated) block, or None if none."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        self._scan = 0
        return parse_block(rest) if rest else None
