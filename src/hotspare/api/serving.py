"""The one serving path of every API route (chat completions, messages, responses): where an answer
comes from, how the wait for it ends when the client leaves, and what is left for the request log.

`serve` starts an answer: from the failover router when one is configured (`app.state.router`; it
may pass an upstream's own bytes through: a `RawReply`), else from the local backend
(`app.state.backend`; None while the local model is still being prepared), primed to its first event
(an `EventReply`). Either way the reply is noted in the request's scope (`SERVED_SCOPE`) as a
`Served`, the request log's view of the answer: who served it, and whether it ended in an error.

Every await a route makes on behalf of a client goes through `until_disconnect`: a client that
disconnects cancels its request (`ClientGone`), and the backend stream is closed, which frees the
engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from fastapi import Request
from starlette.responses import Response

from hotspare.api.config import Serving
from hotspare.api.sse import EventStreamResponse, close_stream, closing_stream
from hotspare.core.errors import BackendUnavailable, HotspareError, NotFound
from hotspare.core.types import ApiFormat, ChatBackend, ChatRequest, ContextFitted, Finish, StreamEvent
from hotspare.engine.protocol import LocalBackend
from hotspare.router.replies import EventReply, RawReply, backends
from hotspare.router.router import Router
from hotspare.upstream.base import ClientCall

T = TypeVar("T")

STATUS_CLIENT_CLOSED = 499  # nobody reads it: the client is gone

BACKEND_HEADER = "x-hotspare-backend"
"""The backend that served: for a stream, the one that started it (the header goes out before any
content, so a mid-stream takeover cannot change it); for a whole (non-streaming) answer, the one that
finished it. Every backend that contributed is in the request log line (`backends`)."""

SERVED_SCOPE = "hotspare.served"
"""Where a route leaves its `Served` in the ASGI scope, for the request log to read once the
response has been sent (its `backends` and `has_failed` are complete by then)."""


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


@dataclass(slots=True)
class Served:
    """One request's answer as the request log sees it; complete once the response has been sent.

    `has_failed`: the answer ended with its API's error event, so the client was told it is
    incomplete. A passthrough knows it from its reply (`RawReply.errors`); events are rendered here,
    and every renderer ends a stream with an error event exactly when a stream it renders from
    breaks after it began (raises, or ends without its `Finish`): `watched` notes that in
    `has_broken`."""

    reply: RawReply | EventReply
    has_broken: bool = False

    @property
    def has_failed(self) -> bool:
        if isinstance(self.reply, RawReply):
            return bool(self.reply.errors)
        return self.has_broken

    @property
    def backends(self) -> list[str]:
        return backends(self.reply)

    async def watched(self, events: AsyncIterator[StreamEvent]) -> AsyncIterator[StreamEvent]:
        """`events` unchanged, noting in `has_broken` that they raised or ended without their
        `Finish` (both of which a renderer reports with an error event, see `paced_answer`)."""
        has_finished = False
        async with closing_stream(events):
            try:
                async for event in events:
                    has_finished = has_finished or isinstance(event, Finish)
                    yield event
            except Exception:
                self.has_broken = True
                raise
            self.has_broken = self.has_broken or not has_finished


def served_of(request: Request) -> Served | None:
    """The `Served` a route noted for `request` (None before `serve`, or for a route without one)."""
    served: Served | None = request.scope.get(SERVED_SCOPE)
    return served


def watched(request: Request, events: AsyncIterator[StreamEvent]) -> AsyncIterator[StreamEvent]:
    """`events`, watched as part of the request's answer (see `Served`): for a stream the route opens
    beside the one `serve` started (the further choices of an OpenAI request with n > 1). Closing the
    result closes `events`, even if it was never read (a choice waiting its turn holds its place on
    the engine until closed)."""
    served = served_of(request)
    return _Watched(served.watched(events), events) if served is not None else events


class _Watched:
    """`outer` (a wrapper of `inner`) as an iterator whose `aclose` also closes `inner`: closing an
    async generator that never started does not run its body, so `outer` alone would leave `inner`."""

    def __init__(self, outer: AsyncIterator[StreamEvent], inner: AsyncIterator[StreamEvent]) -> None:
        self._outer = outer
        self._inner = inner

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        return self

    async def __anext__(self) -> StreamEvent:
        return await anext(self._outer)

    async def aclose(self) -> None:
        await close_stream(self._outer)
        await close_stream(self._inner)


def note_served(request: Request, reply: RawReply | EventReply) -> RawReply | EventReply:
    """`reply`, noted in the request's scope for the request log (see SERVED_SCOPE); an EventReply's
    events are watched for the error that ends them (see `Served`)."""
    served = Served(reply)
    if isinstance(reply, EventReply):
        reply = replace(reply, events=served.watched(reply.events))
        served.reply = reply
    request.scope[SERVED_SCOPE] = served
    return reply


def client_call(
    request: Request,
    api: ApiFormat,
    body: bytes,
    chat: ChatRequest,
    local_refusal: str | None,
    payload: dict[str, Any] | None = None,
) -> ClientCall:
    """What the router is asked: `body` as an upstream speaking `api` is sent it, with the client's
    headers. `payload` is the body already parsed (handed on so that a passthrough does not parse it
    again)."""
    headers = tuple((name.lower(), value) for name, value in request.headers.items())
    return ClientCall(api, body, headers, chat, local_refusal, payload)


async def serve(
    request: Request,
    chat: ChatRequest,
    routed: Callable[[], ClientCall],
    *,
    max_wait_s: float | None = None,
    local_error: HotspareError | None = None,
) -> RawReply | EventReply:
    """The answer's start: from the failover router when one is configured, asked `routed()` (it
    may pass the upstream's own bytes through), else from the local backend, primed to its first
    event (waiting at most `max_wait_s` for it, see `primed`). `local_error` is raised instead when
    there is no router and the local model cannot serve the request. Raises NotFound for a model
    not served here, BackendUnavailable, ClientGone."""
    failover: Router | None = request.app.state.router
    if failover is None:
        if local_error is not None:
            raise local_error
        backend = serving_backend(request, chat.model)
        events = await until_disconnect(request, primed(backend.stream(chat), max_wait_s))
        return note_served(request, EventReply(backend.name, events, answering_model(backend, chat)))
    check_model(request, chat.model)
    return note_served(request, await until_disconnect(request, failover.route(routed())))


async def raw_response(reply: RawReply, headers: dict[str, str]) -> Response:
    """An upstream's own response, unchanged, plus who served it (and our request id if it has none)."""
    out = dict(reply.headers)
    for name, value in headers.items():
        out.setdefault(name, value)
    out[BACKEND_HEADER] = reply.backend
    if "text/event-stream" in out.get("content-type", ""):
        return EventStreamResponse(reply.body, out)
    body = b"".join([chunk async for chunk in reply.body])
    out[BACKEND_HEADER] = backends(reply)[-1]
    return Response(body, status_code=reply.status, headers=out)


# --- what the app serves -------------------------------------------------------------------------


def settings_of(request: Request) -> Serving:
    """What the routes read from the settings (api/config.py), as app.py handed it down."""
    serving: Serving = request.app.state.serving
    return serving


def heartbeat_s(request: Request) -> float:
    return settings_of(request).heartbeat_s


def model_names(request: Request) -> list[str]:
    """The names served here: the local model's first, then the configured others."""
    settings = settings_of(request)
    names = [settings.local_model]
    names.extend(name for name in settings.api.allowed_models or () if name != settings.local_model)
    return names


def check_model(request: Request, model: str) -> None:
    settings = settings_of(request)
    if not settings.api.allows(model, settings.local_model):
        allowed = ", ".join(model_names(request))
        raise NotFound(f"model {model!r} is not served here; models served: {allowed}")


def serving_backend(request: Request, model: str) -> ChatBackend:
    """The backend that answers `model`; raises NotFound or BackendUnavailable."""
    check_model(request, model)
    backend: ChatBackend | None = request.app.state.backend
    if backend is None:
        raise BackendUnavailable("the local model is still loading; retry when GET /ready says ready")
    return backend


def answering_model(backend: ChatBackend, chat: ChatRequest) -> str:
    """The model named in a stream before its `Finish` says which model answered."""
    return backend.model_name if isinstance(backend, LocalBackend) else chat.model


# --- waiting -------------------------------------------------------------------------------------


async def primed(
    events: AsyncIterator[StreamEvent], max_wait_s: float | None = None
) -> AsyncIterator[StreamEvent]:
    """Wait for the first event, so that a refusal (overload, context overflow) is still an HTTP
    error; then return a stream that yields it first and closes `events` when it is closed.

    With `max_wait_s`, a first event that takes longer (a long prompt on a busy machine) is not
    waited for: the stream is returned at once and yields it when it comes, so a streaming client
    gets its headers and keep-alives instead of timing out (Claude Code gives up after 300 s)."""
    first_read = asyncio.ensure_future(anext(events))
    try:
        await asyncio.wait({first_read}, timeout=max_wait_s)
    except BaseException:
        first_read.cancel()
        await close_stream(events)
        raise
    if not first_read.done():
        return _after(first_read, events)
    try:
        first = first_read.result()
    except StopAsyncIteration:
        raise BackendUnavailable("the answer ended without finishing") from None
    except BaseException:
        await close_stream(events)
        raise
    return _prepend(first, events)


async def leading_notice(
    events: AsyncIterator[StreamEvent], max_wait_s: float
) -> tuple[AsyncIterator[StreamEvent], ContextFitted | None]:
    """Take a `ContextFitted` off the front of a stream (it arrives together with the first answer
    event) to put it in the response headers; if no event comes within `max_wait_s`, the stream
    starts without it."""
    first_events = await primed(events, max_wait_s)
    first_read = asyncio.ensure_future(anext(first_events))
    await asyncio.wait({first_read}, timeout=max_wait_s)
    if not first_read.done():
        return _after(first_read, first_events), None
    first = first_read.result()
    if isinstance(first, ContextFitted):
        return first_events, first
    return _prepend(first, first_events), None


async def _after(
    first: asyncio.Future[StreamEvent], rest: AsyncIterator[StreamEvent]
) -> AsyncIterator[StreamEvent]:
    async with closing_stream(rest):
        try:
            yield await first
        except StopAsyncIteration:
            raise BackendUnavailable("the answer ended without finishing") from None
        async for event in rest:
            yield event


async def _prepend(first: StreamEvent, rest: AsyncIterator[StreamEvent]) -> AsyncIterator[StreamEvent]:
    async with closing_stream(rest):
        yield first
        async for event in rest:
            yield event


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it (and raising ClientGone) if the client disconnects first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        raise ClientGone()
    return task.result()


async def _wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
