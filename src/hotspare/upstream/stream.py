"""An upstream's SSE stream: read with its deadlines (`UpstreamStream`) and parsed on the side, event
by event, into core events (`StreamParser`, one subclass per vendor format).

Judging an answer: it is complete when the vendor's terminator arrived, or when the body ended
cleanly after the vendor had stated why the answer stopped (a finish reason / stop reason): many
OpenAI-compatible servers never send `data: [DONE]`, and such an answer is a success, not a cut
(failoverbench S11; before this, five of them in a row opened a healthy upstream's circuit). The
missing terminator is then rendered for the client (`StreamParser.render_terminator`).

Anything the decoder or a parser raises that is not an `UpstreamError` (a `KeyError` on an odd
event, a `zlib.error`, a `ValueError` from an int field) becomes `UpstreamError(MALFORMED)` here, in
`UpstreamStream`, the one place every stream event passes through.

Idle time (`idle_s`) counts from the last answer *content* once content has started: keep-alive
comments, pings or a byte drip do not hold a stalled answer open until `total_s`."""

from __future__ import annotations

import asyncio
import json
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from hotspare.core.errors import FailureClass, UpstreamError
from hotspare.core.types import Finish, StreamEvent, TextDelta
from hotspare.upstream.config import TimeoutsConfig
from hotspare.upstream.headers import forwardable_headers
from hotspare.upstream.sse import SseDecoder, SseEvent
from hotspare.upstream.transport import Response, TransportError

T = TypeVar("T")

ErrorClassifier = Callable[[FailureClass, str], UpstreamError]
"""Makes one upstream's typed failure from its class and a message (`Upstream.error`): how the
stream names its upstream in errors without knowing the `Upstream` itself."""


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
        self.num_content_events = 0  # events that carried answer content (text, tool call, thinking)

    @abstractmethod
    def feed(self, event: SseEvent) -> list[StreamEvent]: ...

    @property
    def is_continuable(self) -> bool:
        """Whether another backend may finish this answer as text (no tool call, thinking block or
        second choice in it)."""
        return not self.has_other_content

    @abstractmethod
    def render_message(self, text: str, finish: Finish) -> bytes:
        """The vendor's non-streaming response body for an answer assembled from a stream;
        `finish.usage` is the whole answer's."""

    @abstractmethod
    def stated_finish(self) -> Finish | None:
        """The Finish the vendor already announced before its terminator (answer complete), if any."""

    @abstractmethod
    def render_delta(self, text: str) -> bytes: ...

    def render_terminator(self) -> bytes:
        """The vendor's end-of-stream event for a stream whose finish was stated but whose
        terminator never came (see `end_without_terminator`)."""
        return b""

    def end_without_terminator(self) -> tuple[bytes, Finish] | None:
        """The body ended cleanly without the terminator: if the vendor had stated its finish, the
        answer is complete -- mark it done and return (the terminator to render, the Finish)."""
        finish = self.stated_finish()
        if finish is None:
            return None
        self.is_done = True
        return self.render_terminator(), finish

    @abstractmethod
    def render_finish(self, finish: Finish) -> bytes:
        """The terminating events; `finish.usage.output_tokens` counts only the continuation's."""

    @abstractmethod
    def render_error(self, error: UpstreamError | None, message: str) -> bytes: ...

    def _note_text(self, text: str) -> TextDelta:
        self.text += text
        self.num_text_events += 1
        self.num_content_events += 1
        self.has_content = True
        return TextDelta(text)

    def _note_other(self) -> None:
        """Answer content that is not plain text (a tool call, thinking): a takeover cannot continue it."""
        self.num_content_events += 1
        self.has_content = self.has_other_content = True

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
    None after the terminator (or after a clean end that followed a stated finish). Deadlines: until
    the first content, `first_token_s` from the start; after it, `idle_s` since the last content
    (keep-alives do not count); always `total_s`. Failures raise `UpstreamError`s made by `error`.
    """

    def __init__(
        self,
        response: Response,
        parser: StreamParser,
        started: float,
        timeouts: TimeoutsConfig,
        error: ErrorClassifier,
    ) -> None:
        self.timeouts = timeouts
        self._error = error
        self.status = response.status
        self.headers = forwardable_headers(response.headers)
        self.parser = parser
        self.started = started
        self.first_content_at: float | None = None
        self.last_content_at: float | None = None
        self._num_content_seen = 0
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
                return self._at_end()
            await self._read()
        event = self._pending.popleft()
        parsed = self._parse(event)
        if self.parser.num_content_events != self._num_content_seen:
            self._num_content_seen = self.parser.num_content_events
            self.last_content_at = time.monotonic()
            self.first_content_at = self.first_content_at or self.last_content_at
        elif self.first_content_at is None and self.parser.has_content:
            self.first_content_at = self.last_content_at = time.monotonic()
        return event, parsed

    def _at_end(self) -> tuple[SseEvent, list[StreamEvent]] | None:
        if self.parser.is_done:
            return None
        ended = self._guard(self.parser.end_without_terminator)
        if ended is None:
            raise self._error(FailureClass.STREAM_CUT, "stream ended without its terminator")
        raw, finish = ended
        return SseEvent("", "", raw), [finish]

    def _parse(self, event: SseEvent) -> list[StreamEvent]:
        return self._guard(lambda: self.parser.feed(event))

    def _guard(self, step: Callable[[], T]) -> T:
        """Run a parser or decoder step; whatever it raises is this upstream's MALFORMED failure."""
        try:
            return step()
        except UpstreamError:
            raise
        except Exception as exc:  # the one boundary where vendor data errors become typed
            raise self._error(FailureClass.MALFORMED, f"malformed stream ({type(exc).__name__})") from exc

    async def _read(self) -> None:
        timeouts = self.timeouts
        now = time.monotonic()
        total_left = self.started + timeouts.total_s - now
        if self.last_content_at is None:
            wait, failure = self.started + timeouts.first_token_s - now, FailureClass.FIRST_TOKEN_TIMEOUT
        else:
            wait, failure = self.last_content_at + timeouts.idle_s - now, FailureClass.IDLE_TIMEOUT
        if total_left < wait:
            wait, failure = total_left, FailureClass.TOTAL_TIMEOUT
        try:
            async with asyncio.timeout(max(wait, 0.0)):
                chunk = await self._response.read_chunk()
        except TimeoutError:
            raise self._error(failure, f"no stream data within {wait:.1f} s") from None
        except TransportError as exc:
            raise self._error(FailureClass.STREAM_CUT, f"stream broke ({exc})") from exc
        except Exception as exc:  # a decoder error (zlib.error, ...): the data is bad
            raise self._error(FailureClass.MALFORMED, f"undecodable body ({type(exc).__name__})") from exc
        if chunk is None:
            self._eof = True
            last = self._guard(self._decoder.flush)
            if last is not None:
                self._pending.append(last)
            return
        self._pending.extend(self._guard(lambda: self._decoder.feed(chunk)))

    async def _drain(self) -> None:
        """Read what follows the terminator (the chunked body's end) so that the connection goes
        back to the pool instead of being closed; give up quietly after a short wait."""
        if self._eof:
            return
        self._eof = True
        try:
            async with asyncio.timeout(min(self.timeouts.idle_s, 1.0)):
                while await self._response.read_chunk() is not None:
                    pass
        except (TimeoutError, TransportError):
            pass

    async def aclose(self) -> None:
        await self._response.aclose()
