"""An upstream's SSE stream: read with its deadlines (`UpstreamStream`) and parsed on the side, event
by event, into core events (`StreamParser`, one subclass per vendor format)."""

from __future__ import annotations

import asyncio
import json
import time
from abc import ABC, abstractmethod
from collections import deque
from typing import TYPE_CHECKING, Any

from hotspare.core.errors import FailureClass, UpstreamError
from hotspare.core.types import Finish, StreamEvent, TextDelta
from hotspare.upstream.headers import forwardable_headers
from hotspare.upstream.sse import SseDecoder, SseEvent
from hotspare.upstream.transport import Response, TransportError

if TYPE_CHECKING:
    from hotspare.upstream.base import Upstream


class StreamParser(ABC):
    """Reads one vendor stream event by event, remembers what reached the client, and renders the
    rest of a taken-over stream in the same vendor format.

    `feed` returns the core events one vendor event carries: `TextDelta`s for answer text,
    `ToolCallStart` / `ToolCallDelta` for tool calls, a `Finish` at the vendor's terminator (often
    none); it raises `UpstreamError` (STREAM_ERROR, OVERLOADED, MALFORMED) for in-band errors.
    """

    def __init__(self) -> None:
        self.text = ""  # answer text delivered so far
        self.num_text_events = 0
        self.has_content = False  # any answer content (text, tool call, thinking) seen
        self.has_other_content = False  # content that is not plain text: a takeover cannot continue it
        self.is_done = False  # the vendor's terminator was seen

    @abstractmethod
    def feed(self, event: SseEvent) -> list[StreamEvent]: ...

    @abstractmethod
    def render_message(self, text: str, finish: Finish) -> bytes:
        """The vendor's non-streaming response body for an answer assembled from a stream;
        `finish.usage` is the whole answer's."""

    @abstractmethod
    def stated_finish(self) -> Finish | None:
        """The Finish the vendor already announced before its terminator (answer complete), if any."""

    @abstractmethod
    def render_delta(self, text: str) -> bytes: ...

    @abstractmethod
    def render_finish(self, finish: Finish) -> bytes:
        """The terminating events; `finish.usage.output_tokens` counts only the continuation's."""

    @abstractmethod
    def render_error(self, error: UpstreamError | None, message: str) -> bytes: ...

    def _note_text(self, text: str) -> TextDelta:
        self.text += text
        self.num_text_events += 1
        self.has_content = True
        return TextDelta(text)

    def _malformed(self, upstream: str, what: str) -> UpstreamError:
        return UpstreamError(FailureClass.MALFORMED, f"malformed stream event: {what}", upstream=upstream)

    def _loads(self, upstream: str, data: str) -> dict[str, Any]:
        try:
            value = json.loads(data)
        except ValueError:
            raise self._malformed(upstream, "data is not JSON") from None
        if not isinstance(value, dict):
            raise self._malformed(upstream, "data is not a JSON object")
        return value


class UpstreamStream:
    """An open streaming response whose status was 2xx. Owns the HTTP response: call `aclose`.

    `next_event` returns the next SSE block (raw bytes kept) with what the parser made of it, or
    None after the terminator. Deadlines: until the first content, `first_token_s` from the start;
    after it, `idle_s` between reads; always `total_s`. Failures raise `UpstreamError`.
    """

    def __init__(self, upstream: Upstream, response: Response, parser: StreamParser, started: float) -> None:
        self.upstream = upstream
        self.status = response.status
        self.headers = forwardable_headers(response.headers)
        self.parser = parser
        self.started = started
        self.first_content_at: float | None = None
        self._response = response
        self._decoder = SseDecoder()
        self._pending: deque[SseEvent] = deque()
        self._eof = False

    @property
    def has_pending(self) -> bool:
        """Whether the next `next_event` has an event at hand already (it arrived with this one)."""
        return bool(self._pending)

    async def next_event(self) -> tuple[SseEvent, list[StreamEvent]] | None:
        while not self._pending:
            if self.parser.is_done:
                await self._drain()
                return None
            if self._eof:
                if not self.parser.is_done:
                    raise self.upstream.error(FailureClass.STREAM_CUT, "stream ended without its terminator")
                return None
            await self._read()
        event = self._pending.popleft()
        parsed = self.parser.feed(event)
        if self.first_content_at is None and self.parser.has_content:
            self.first_content_at = time.monotonic()
        return event, parsed

    async def _read(self) -> None:
        timeouts = self.upstream.config.timeouts
        now = time.monotonic()
        total_left = self.started + timeouts.total_s - now
        if self.first_content_at is None:
            wait, failure = self.started + timeouts.first_token_s - now, FailureClass.FIRST_TOKEN_TIMEOUT
        else:
            wait, failure = timeouts.idle_s, FailureClass.IDLE_TIMEOUT
        if total_left < wait:
            wait, failure = total_left, FailureClass.TOTAL_TIMEOUT
        try:
            async with asyncio.timeout(max(wait, 0.0)):
                chunk = await self._response.read_chunk()
        except TimeoutError:
            raise self.upstream.error(failure, f"no stream data within {wait:.1f} s") from None
        except TransportError as exc:
            raise self.upstream.error(FailureClass.STREAM_CUT, f"stream broke ({exc})") from exc
        if chunk is None:
            self._eof = True
            last = self._decoder.flush()
            if last is not None:
                self._pending.append(last)
            return
        self._pending.extend(self._decoder.feed(chunk))

    async def _drain(self) -> None:
        """Read what follows the terminator (the chunked body's end) so that the connection goes
        back to the pool instead of being closed; give up quietly after a short wait."""
        if self._eof:
            return
        self._eof = True
        try:
            async with asyncio.timeout(min(self.upstream.config.timeouts.idle_s, 1.0)):
                while await self._response.read_chunk() is not None:
                    pass
        except (TimeoutError, TransportError):
            pass

    async def aclose(self) -> None:
        await self._response.aclose()
