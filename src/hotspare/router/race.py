"""Opening an upstream up to its first answer content, and hedging that wait with the local model."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from hotspare.core.errors import UpstreamError
from hotspare.core.types import ChatBackend, ChatRequest, StreamEvent
from hotspare.router.hedge import HedgeGate
from hotspare.upstream.base import ClientCall, Upstream
from hotspare.upstream.stream import UpstreamStream

log = logging.getLogger("hotspare.router")


@dataclass(slots=True)
class Opened:
    """An upstream answer whose first content has arrived (nothing sent to the client yet).

    Passthrough: `stream` plus `prelude`, the raw events up to and including the first content.
    Cross-format: `events` plus `first`, the first core event. The holder must close what it holds.
    """

    stream: UpstreamStream | None = None
    prelude: list[bytes] = field(default_factory=list)
    events: AsyncIterator[StreamEvent] | None = None
    first: StreamEvent | None = None
    ttft_s: float | None = None


async def open_upstream(upstream: Upstream, call: ClientCall, passthrough: bool) -> Opened:
    """Raises `UpstreamError`; on any failure or cancellation, closes what it opened."""
    started = time.monotonic()
    if passthrough:
        stream = await upstream.open_stream(call, passthrough=True)
        prelude: list[bytes] = []
        try:
            while not stream.parser.has_content and not stream.parser.is_done:
                item = await stream.next_event()
                if item is None:
                    break
                prelude.append(item[0].raw)
        except BaseException:
            await stream.aclose()
            raise
        return Opened(stream=stream, prelude=prelude, ttft_s=time.monotonic() - started)
    events = upstream.events(call, call.request)
    try:
        first = await anext(events)
    except BaseException:
        await events.aclose()  # type: ignore[attr-defined]
        raise
    return Opened(events=events, first=first, ttft_s=time.monotonic() - started)


@dataclass(frozen=True, slots=True)
class RaceResult:
    """Exactly one of `opened` (the upstream won) or `local_events` (the local model won; its first
    event is the iterator's first item). `upstream_error` is set if the upstream failed meanwhile."""

    opened: Opened | None = None
    local_events: AsyncIterator[StreamEvent] | None = None
    upstream_error: UpstreamError | None = None


async def race_local(
    opening: Coroutine[Any, Any, Opened],
    delay_s: float,
    local: ChatBackend,
    request: ChatRequest,
    gate: HedgeGate,
) -> RaceResult:
    """Await `opening`; if it has no first content after `delay_s` and `gate` admits a hedge, start
    `local` beside it and keep whichever produces first, cancelling the other. Raises the upstream's
    error if both fail (or if it fails unhedged)."""
    up = asyncio.ensure_future(opening)
    local_events: AsyncIterator[StreamEvent] | None = None
    lo: asyncio.Future[StreamEvent] | None = None
    entered = False
    try:
        done, _ = await asyncio.wait({up}, timeout=delay_s)
        if up in done:
            return RaceResult(opened=up.result())
        entered = gate.try_enter()
        if not entered:
            return RaceResult(opened=await up)
        log.info("hedge: no first token after %.2f s, starting the local model beside the upstream", delay_s)
        local_events = local.stream(request)
        lo = asyncio.ensure_future(anext(local_events))
        pending: set[asyncio.Future[Any]] = {up, lo}
        while pending:
            _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if up.done() and up.exception() is None:
                await _cancel(lo)
                await local_events.aclose()  # type: ignore[attr-defined]
                return RaceResult(opened=up.result())
            if lo.done() and lo.exception() is None:
                await _cancel(up)
                error = up.exception() if up.done() and not up.cancelled() else None
                events = prepend(lo.result(), local_events)
                return RaceResult(local_events=events, upstream_error=_as_upstream(error))
        await local_events.aclose()  # type: ignore[attr-defined]
        raise up.exception()  # type: ignore[misc]
    except BaseException:
        await _cancel(up)
        if lo is not None:
            await _cancel(lo)
        if local_events is not None:
            await local_events.aclose()  # type: ignore[attr-defined]
        raise
    finally:
        if entered:
            gate.leave()


def _as_upstream(error: BaseException | None) -> UpstreamError | None:
    return error if isinstance(error, UpstreamError) else None


async def _cancel(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.cancel()
    await asyncio.gather(future, return_exceptions=True)


async def prepend(
    first: StreamEvent, rest: AsyncIterator[StreamEvent], on_end: Callable[[], None] | None = None
) -> AsyncIterator[StreamEvent]:
    """`first`, then `rest`; `on_end` is called when they end, fail or are dropped."""
    try:
        yield first
        async for event in rest:
            yield event
    finally:
        if on_end is not None:
            on_end()
        await rest.aclose()  # type: ignore[attr-defined]
