"""The HTTP endpoints of both APIs: parse the body, check the model name, run the backend, render.

Routes read what they serve from `app.state`: `backend` (the `ChatBackend` that answers; None while
the local model is still being prepared; replace it to put something else in front) and `settings`.
They take the raw `Request`, so its body (cached by Starlette after the first read) and headers stay
available to anything that needs the original bytes.

A client that disconnects cancels its request: the backend stream is closed, which frees the engine.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from hotspare.api import anthropic, anthropic_render, openai, openai_render
from hotspare.api.answer import Answer, collect, collect_all, context_fit_header
from hotspare.api.errors import new_request_id, request_id_header
from hotspare.api.intake import Intake, converter, take_in
from hotspare.api.sse import EventStreamResponse, close_stream, closing_stream
from hotspare.api.unknown_fields import UnknownFieldLog
from hotspare.api.wire import (
    MediaPolicy,
    media_header,
    parse_body,
    scope_object,
)
from hotspare.config import Settings
from hotspare.core.errors import BackendUnavailable, HotspareError, NotFound
from hotspare.core.types import ApiFormat, ChatBackend, ChatRequest, ContextFitted, StreamEvent
from hotspare.engine.protocol import LocalBackend
from hotspare.router.replies import EventReply, RawReply, backends
from hotspare.router.router import Router
from hotspare.upstream.base import ClientCall

T = TypeVar("T")
R = TypeVar("R", bound=RawReply | EventReply)

router = APIRouter()

STATUS_CLIENT_CLOSED = 499  # nobody reads it: the client is gone


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


# --- OpenAI --------------------------------------------------------------------------------------


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    api = ApiFormat.OPENAI_CHAT
    request_id = _begin(request, api)
    payload = scope_object(request.scope, await request.body())
    media = _settings(request).api.media
    intake: Intake[openai.ChatCompletionRequest] = take_in(
        payload, request_id, _convert(request, request_id, api), _passes(request, api)
    )
    chat, body = intake.chat, intake.body
    created = int(time.time())
    headers = {request_id_header(api): request_id}
    if body is not None and media is MediaPolicy.PLACEHOLDER:
        headers |= media_header(openai.media_kinds(body))
    try:
        served = await _serve(request, api, intake, payload)
        if isinstance(served, RawReply):
            return await _raw_response(served, headers)
        assert body is not None  # only a passthrough (a RawReply) serves a request the local path refused
        headers[BACKEND_HEADER] = served.backend
        more = _more_choices(request, served, chat, body.n or 1)
        if not chat.stream:
            openers = [lambda: served.events, *more]
            answers = await _until_disconnect(
                request, collect_all(openers, _settings(request).local.max_running)
            )
            headers[BACKEND_HEADER] = backends(served)[-1]  # after a takeover: the one that finished
            headers |= _notice_headers(answers[0])
            return JSONResponse(openai_render.completion_body(answers, request_id, created), headers=headers)
        events, notice = await _leading_notice(served.events, _heartbeat_s(request))
    except ClientGone:
        return Response(status_code=STATUS_CLIENT_CLOSED)
    headers |= context_fit_header(notice) if notice is not None else {}
    chunks = openai_render.ChunkStream(request_id, created, served.model, body.includes_usage)
    stream = openai_render.stream_chunks(events, chunks, _heartbeat_s(request), more)
    return EventStreamResponse(stream, headers)


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    names = _model_names(request)
    if "anthropic-version" in request.headers:
        data = [_anthropic_model(name) for name in names]
        return JSONResponse({"data": data, "has_more": False, "first_id": names[0], "last_id": names[-1]})
    return JSONResponse({"object": "list", "data": [_openai_model(request, name) for name in names]})


@router.get("/v1/models/{model_id:path}")
async def get_model(request: Request, model_id: str) -> Response:
    _check_model(request, model_id)
    if "anthropic-version" in request.headers:
        return JSONResponse(_anthropic_model(model_id))
    return JSONResponse(_openai_model(request, model_id))


def _openai_model(request: Request, name: str) -> dict[str, Any]:
    created = int(getattr(request.app.state, "started_at", 0.0))
    return {"id": name, "object": "model", "created": created, "owned_by": "hotspare"}


def _anthropic_model(name: str) -> dict[str, Any]:
    epoch = datetime.fromtimestamp(0, UTC).isoformat().replace("+00:00", "Z")
    return {"type": "model", "id": name, "display_name": name, "created_at": epoch}


# --- Anthropic -----------------------------------------------------------------------------------


@router.post("/v1/messages")
async def messages(request: Request) -> Response:
    request_id = _begin(request, ApiFormat.ANTHROPIC_MESSAGES)
    payload = scope_object(request.scope, await request.body())
    media = _settings(request).api.media
    api = ApiFormat.ANTHROPIC_MESSAGES
    intake: Intake[anthropic.MessagesRequest] = take_in(
        payload, request_id, _convert(request, request_id, api), _passes(request, api)
    )
    chat, body = intake.chat, intake.body
    headers = {request_id_header(api): request_id}
    if body is not None and media is MediaPolicy.PLACEHOLDER:
        headers |= media_header(anthropic.media_kinds(body))
    message_id = "msg_" + request_id.removeprefix("req_")
    try:
        served = await _serve(request, api, intake, payload)
        if isinstance(served, RawReply):
            return await _raw_response(served, headers)
        headers[BACKEND_HEADER] = served.backend
        if not chat.stream:
            answer = await _until_disconnect(request, collect(served.events))
            headers[BACKEND_HEADER] = backends(served)[-1]  # after a takeover: the one that finished
            headers |= _notice_headers(answer)
            return JSONResponse(anthropic_render.message_body(answer, message_id), headers=headers)
        events, notice = await _leading_notice(served.events, _heartbeat_s(request))
        num_prompt_tokens = notice.num_fitted_tokens if notice is not None else 0
        if notice is None:
            size = _prompt_size(request, served, chat)
            num_prompt_tokens = await _until_disconnect(request, _within(size, _heartbeat_s(request), 0))
    except ClientGone:
        return Response(status_code=STATUS_CLIENT_CLOSED)
    headers |= context_fit_header(notice) if notice is not None else {}
    stream = anthropic_render.stream_events(
        events, message_id, served.model, num_prompt_tokens, _heartbeat_s(request)
    )
    return EventStreamResponse(stream, headers)


@router.post("/v1/messages/count_tokens")
async def count_tokens(request: Request) -> Response:
    request_id = _begin(request, ApiFormat.ANTHROPIC_MESSAGES)
    body = parse_body(await request.body(), anthropic.CountTokensRequest)
    unknown: UnknownFieldLog | None = getattr(request.app.state, "unknown_fields", None)
    if unknown is not None:
        unknown.note_model(ApiFormat.ANTHROPIC_MESSAGES, body)
    chat = anthropic.to_chat_request(body, request_id, _settings(request).api.media)
    backend = _serving_backend(request, chat.model)
    try:
        num_tokens = await _until_disconnect(request, backend.count_tokens(chat))
    except ClientGone:
        return Response(status_code=STATUS_CLIENT_CLOSED)
    headers = {request_id_header(ApiFormat.ANTHROPIC_MESSAGES): request_id}
    return JSONResponse(anthropic_render.count_tokens_body(num_tokens), headers=headers)


# --- shared --------------------------------------------------------------------------------------

BACKEND_HEADER = "x-hotspare-backend"
"""The backend that served: for a stream, the one that started it (the header goes out before any
content, so a mid-stream takeover cannot change it); for a whole (non-streaming) answer, the one that
finished it. Every backend that contributed is in the request log line (`backends`)."""

SERVED_SCOPE = "hotspare.served"
"""Where a route leaves its `RawReply` / `EventReply` in the ASGI scope, for the request log to read
once the response has been sent (its `backends` are complete by then)."""


async def _serve(
    request: Request, api: ApiFormat, intake: Intake[Any], payload: dict[str, Any]
) -> RawReply | EventReply:
    """The answer's start: from the failover router when one is configured (which may pass the
    upstream's own bytes through), else from the local backend, primed to its first event.
    `payload` is the body already parsed (handed on so that a passthrough does not parse it again)."""
    failover: Router | None = request.app.state.router
    chat = intake.chat
    if failover is None:
        backend = _serving_backend(request, chat.model)
        max_wait_s = _heartbeat_s(request) if chat.stream else None
        events = await _until_disconnect(request, _primed(backend.stream(chat), max_wait_s))
        return note_served(request, EventReply(backend.name, events, _answering_model(backend, chat)))
    _check_model(request, chat.model)
    headers = tuple((name.lower(), value) for name, value in request.headers.items())
    call = ClientCall(api, await request.body(), headers, chat, intake.local_refusal, payload)
    return note_served(request, await _until_disconnect(request, failover.route(call)))


def _passes(request: Request, api: ApiFormat) -> Callable[[str], bool]:
    """Whether an upstream speaking `api` itself serves a model (see api/intake.py)."""

    def passes(model: str) -> bool:
        failover: Router | None = request.app.state.router
        if failover is None:
            return False
        return any(member.upstream.passes_through(api) for member in failover.chain(model))

    return passes


def _convert(request: Request, request_id: str, api: ApiFormat) -> Callable[[dict[str, Any]], Any]:
    """The local path's converter for `api` (see api/intake.py)."""
    unknown: UnknownFieldLog | None = getattr(request.app.state, "unknown_fields", None)
    media = _settings(request).api.media
    return converter(api, request_id, media, unknown.note_model if unknown is not None else None)


def note_served(request: Request, reply: R) -> R:
    """`reply`, noted in the request's scope for the request log (see SERVED_SCOPE)."""
    request.scope[SERVED_SCOPE] = reply
    return reply


async def _raw_response(reply: RawReply, headers: dict[str, str]) -> Response:
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


async def _prompt_size(request: Request, served: EventReply, chat: ChatRequest) -> int:
    """The prompt's size for `message_start`, in the local model's tokens (0 if it is not ready)."""
    backend: ChatBackend | None = request.app.state.backend
    if backend is None:
        return 0
    try:
        return await backend.count_tokens(chat)
    except HotspareError:
        return 0


def _begin(request: Request, api: ApiFormat) -> str:
    """Give the request its id (errors raised later carry it too)."""
    request_id: str = new_request_id(api)
    request.state.request_id = request_id
    return request_id


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _heartbeat_s(request: Request) -> float:
    return _settings(request).server.heartbeat_s


def _model_names(request: Request) -> list[str]:
    settings = _settings(request)
    names = [settings.local.model]
    names.extend(name for name in settings.api.allowed_models or () if name != settings.local.model)
    return names


def _check_model(request: Request, model: str) -> None:
    settings = _settings(request)
    if not settings.api.allows(model, settings.local.model):
        allowed = ", ".join(_model_names(request))
        raise NotFound(f"model {model!r} is not served here; models served: {allowed}")


def _serving_backend(request: Request, model: str) -> ChatBackend:
    """The backend that answers `model`; raises NotFound or BackendUnavailable."""
    _check_model(request, model)
    backend: ChatBackend | None = request.app.state.backend
    if backend is None:
        raise BackendUnavailable("the local model is still loading; retry when GET /ready says ready")
    return backend


def _answering_model(backend: ChatBackend, chat: ChatRequest) -> str:
    """The model named in a stream before its `Finish` says which model answered."""
    return backend.model_name if isinstance(backend, LocalBackend) else chat.model


def _more_choices(
    request: Request, served: EventReply, chat: ChatRequest, n: int
) -> list[Callable[[], AsyncIterator[StreamEvent]]]:
    """Openers of choices 1..n-1 of an OpenAI request with n > 1, from the local backend when it
    served choice 0 (an upstream's converted answer has one choice)."""
    backend: ChatBackend | None = request.app.state.backend
    if n <= 1 or backend is None or served.backend != backend.name:
        return []
    return [lambda: backend.stream(chat) for _ in range(n - 1)]


def _notice_headers(answer: Answer) -> dict[str, str]:
    return context_fit_header(answer.fitted) if answer.fitted is not None else {}


async def _leading_notice(
    events: AsyncIterator[StreamEvent], max_wait_s: float
) -> tuple[AsyncIterator[StreamEvent], ContextFitted | None]:
    """Take a `ContextFitted` off the front of a stream (it arrives together with the first answer
    event) to put it in the response headers; if no event comes within `max_wait_s`, the stream
    starts without it."""
    primed = await _primed(events, max_wait_s)
    first_read = asyncio.ensure_future(anext(primed))
    await asyncio.wait({first_read}, timeout=max_wait_s)
    if not first_read.done():
        return _after(first_read, primed), None
    first = first_read.result()
    if isinstance(first, ContextFitted):
        return primed, first
    return _prepend(first, primed), None


async def _within(work: Awaitable[T], timeout_s: float, default: T) -> T:
    """`work`'s result, or `default` if it takes longer than `timeout_s`."""
    try:
        return await asyncio.wait_for(work, timeout_s)
    except TimeoutError:
        return default


async def _primed(
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


async def _until_disconnect(request: Request, work: Awaitable[T]) -> T:
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
