"""Server-sent events: framing, heartbeats during long gaps, and a response that cancels on disconnect.

Ownership: an `EventStreamResponse` owns its body iterator and closes it exactly once, whether the
stream ended, the client went away, or sending failed. Body iterators in turn close the backend
stream they read (with `contextlib.aclosing`), and closing a backend stream cancels its request.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

T = TypeVar("T")

DEFAULT_HEARTBEAT_S = 10.0
"""Longest silence on an open stream before a keep-alive goes out (proxies drop idle connections)."""


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Nothing arrived for a heartbeat interval; the renderer sends its API's keep-alive."""


async def close_stream(events: AsyncIterator[Any]) -> None:
    """Close an event stream (cancelling its request if it has not finished); idempotent."""
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()


@asynccontextmanager
async def closing_stream(events: AsyncIterator[T]) -> AsyncGenerator[AsyncIterator[T], None]:
    """`async with closing_stream(events) as events:` closes `events` however the block ends."""
    try:
        yield events
    finally:
        await close_stream(events)


async def with_heartbeats(events: AsyncIterator[T], interval_s: float) -> AsyncGenerator[T | Heartbeat, None]:
    """Pass `events` through, yielding a `Heartbeat` after every `interval_s` without one.

    Waiting never cancels the pending read of `events` (that would cancel the backend request); only
    closing this iterator does. Closing it closes `events`.
    """
    pending: asyncio.Future[T] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(events))
            done, _ = await asyncio.wait({pending}, timeout=interval_s)
            if not done:
                yield Heartbeat()
                continue
            try:
                event = pending.result()
            except StopAsyncIteration:
                return
            finally:
                pending = None
            yield event
    finally:
        if pending is not None:
            # `events` is suspended inside that read: cancelling it runs its cleanup in that task.
            pending.add_done_callback(_retrieve_outcome)
            pending.cancel()
        else:
            with anyio.CancelScope(shield=True):
                await close_stream(events)


def _retrieve_outcome(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # mark it retrieved: the client is gone, nobody wants the outcome


class EventStreamResponse(Response):
    """A `text/event-stream` response that stops and closes its body as soon as the client leaves."""

    media_type = "text/event-stream"

    def __init__(self, body: AsyncIterator[bytes], headers: Mapping[str, str] | None = None) -> None:
        self.body_iterator = body
        self.status_code = 200
        self.background = None
        self.init_headers({"cache-control": "no-cache", "x-accel-buffering": "no", **(headers or {})})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(_cancel_on_disconnect, receive, group.cancel_scope)
            try:
                await self._send_all(send)
            except OSError:
                pass  # the client went away while we were writing
            finally:
                with anyio.CancelScope(shield=True):
                    await close_stream(self.body_iterator)
                group.cancel_scope.cancel()

    async def _send_all(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        async for chunk in self.body_iterator:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _cancel_on_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()
