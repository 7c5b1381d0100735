"""Opening an upstream up to its first answer content, and hedging that wait with the next backend
of the chain (another upstream, or the local model when it is next)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from hotspare.core.errors import FailureClass, UpstreamError
from hotspare.core.types import ChatBackend, ChatRequest, StreamEvent
from hotspare.router.hedge import HedgeGate
from hotspare.router.member import Member
from hotspare.upstream.base import ClientCall, Upstream
from hotspare.upstream.stream import UpstreamStream

log = logging.getLogger("hotspare.router")

H = TypeVar("H")


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


class Hedge(Protocol[H]):
    """A backend to start beside an upstream slow to its first content. `start` returns once the
    hedge has its own first content (raising if it failed); `discard` releases a started hedge that
    lost (`first` is its result, or None when it was cancelled or failed). Each hedge records its
    own verdicts where it has a breaker."""

    async def start(self) -> H: ...

    async def discard(self, first: H | None) -> None: ...


@dataclass(frozen=True, slots=True)
class RaceResult(Generic[H]):
    """Exactly one of `opened` (the upstream won) or `hedged` (the hedge won; the upstream was
    cancelled). `upstream_error` is set if the upstream failed meanwhile."""

    opened: Opened | None = None
    hedged: H | None = None
    upstream_error: UpstreamError | None = None


async def race(
    opening: Coroutine[Any, Any, Opened], delay_s: float, hedge: Hedge[H], gate: HedgeGate
) -> RaceResult[H]:
    """Await `opening`; if it has no first content after `delay_s` and `gate` admits a hedge, start
    `hedge` beside it and keep whichever produces first, cancelling the other. Raises the upstream's
    error if both fail (or if it fails unhedged)."""
    up = asyncio.ensure_future(opening)
    hd: asyncio.Future[H] | None = None
    entered = False
    try:
        done, _ = await asyncio.wait({up}, timeout=delay_s)
        if up in done:
            return RaceResult(opened=up.result())
        entered = gate.try_enter()
        if not entered:
            return RaceResult(opened=await up)
        log.info("hedge: no first token after %.2f s, starting the next backend beside the upstream", delay_s)
        hd = asyncio.ensure_future(hedge.start())
        pending: set[asyncio.Future[Any]] = {up, hd}
        while pending:
            _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if up.done() and up.exception() is None:
                await _cancel(hd)
                await hedge.discard(_result(hd))
                return RaceResult(opened=up.result())
            if up.done() and not _hedge_may_answer(up.exception()):  # the request itself was refused
                await _cancel(hd)
                await hedge.discard(_result(hd))
                raise up.exception()  # type: ignore[misc]
            if hd.done() and hd.exception() is None:
                await _cancel(up)
                error = up.exception() if up.done() and not up.cancelled() else None
                return RaceResult(hedged=hd.result(), upstream_error=_as_upstream(error))
        await hedge.discard(None)
        raise up.exception()  # type: ignore[misc]
    except BaseException:
        await _cancel(up)
        if hd is not None and not hd.done():
            await _cancel(hd)
            await hedge.discard(None)
        raise
    finally:
        if entered:
            gate.leave()


class LocalHedge:
    """The local model as a hedge: its first event, then `events` for the rest."""

    def __init__(self, local: ChatBackend, request: ChatRequest) -> None:
        self._local = local
        self._request = request
        self.events: AsyncIterator[StreamEvent] | None = None

    async def start(self) -> StreamEvent:
        self.events = self._local.stream(self._request)
        return await anext(self.events)

    async def discard(self, first: StreamEvent | None) -> None:
        if self.events is not None:
            await self.events.aclose()  # type: ignore[attr-defined]


class UpstreamHedge:
    """The next upstream of the chain as a hedge, opened on `call` (its own breaker consulted and
    told: a failure counts, a lost race does not)."""

    def __init__(self, member: Member, call: ClientCall, passthrough: bool) -> None:
        self.member = member
        self.call = call
        self.passthrough = passthrough

    async def start(self) -> Opened:
        member = self.member
        if not member.breaker.try_acquire():
            raise member.upstream.error(FailureClass.CONNECT_ERROR, "circuit open")
        try:
            return await open_upstream(member.upstream, self.call, self.passthrough)
        except UpstreamError as exc:
            member.record(False, exc.failure)
            raise
        except BaseException:
            member.record(None)
            raise

    async def discard(self, first: Opened | None) -> None:
        if first is None:
            return
        self.member.record(None)
        if first.stream is not None:
            await first.stream.aclose()
        if first.events is not None:
            await first.events.aclose()  # type: ignore[attr-defined]


def _result(future: asyncio.Future[H]) -> H | None:
    if not future.done() or future.cancelled() or future.exception() is not None:
        return None
    return future.result()


def _hedge_may_answer(error: BaseException | None) -> bool:
    """A client fault (a 4xx, a context-length rejection) goes back to the client, or to a larger
    context, by the caller's rules: the hedge must not answer it instead."""
    return not (isinstance(error, UpstreamError) and not error.should_fail_over)


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
