"""The HTTP endpoints of both APIs: parse the body, check the model name, run the backend, render.

Routes read what they serve from `app.state`: `backend` (the `ChatBackend` that answers; None while
the local model is still being prepared; replace it to put something else in front) and `settings`.
They take the raw `Request`, so its body (cached by Starlette after the first read) and headers stay
available to anything that needs the original bytes.

How an answer is started, awaited and noted for the request log is api/serving.py, shared with the
Responses API (api/responses/routes.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from hotspare.api import anthropic, anthropic_render, openai, openai_render
from hotspare.api.answer import Answer, collect, collect_all, context_fit_header
from hotspare.api.errors import new_request_id, request_id_header
from hotspare.api.intake import Intake, converter, take_in
from hotspare.api.serving import (
    BACKEND_HEADER,
    STATUS_CLIENT_CLOSED,
    ClientGone,
    check_model,
    client_call,
    heartbeat_s,
    leading_notice,
    model_names,
    raw_response,
    serve,
    serving_backend,
    settings_of,
    until_disconnect,
    watched,
)
from hotspare.api.sse import EventStreamResponse
from hotspare.api.unknown_fields import UnknownFieldLog
from hotspare.api.wire import MediaPolicy, media_header, parse_body, scope_object
from hotspare.core.errors import HotspareError
from hotspare.core.types import ApiFormat, ChatBackend, ChatRequest, StreamEvent
from hotspare.engine.protocol import LocalBackend
from hotspare.router.replies import EventReply, RawReply, backends
from hotspare.router.router import Router
from hotspare.upstream.base import ClientCall

T = TypeVar("T")

router = APIRouter()

# --- OpenAI --------------------------------------------------------------------------------------


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    api = ApiFormat.OPENAI_CHAT
    request_id = _begin(request, api)
    payload = scope_object(request.scope, await request.body())
    media = settings_of(request).api.media
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
            return await raw_response(served, headers)
        assert body is not None  # only a passthrough (a RawReply) serves a request the local path refused
        headers[BACKEND_HEADER] = served.backend
        more = _more_choices(request, served, chat)
        if not chat.stream:
            choices = [served.events, *more]
            answers = await until_disconnect(request, collect_all(choices, settings_of(request).max_running))
            headers[BACKEND_HEADER] = backends(served)[-1]  # after a takeover: the one that finished
            headers |= _notice_headers(answers[0])
            return JSONResponse(openai_render.completion_body(answers, request_id, created), headers=headers)
        events, notice = await leading_notice(served.events, heartbeat_s(request))
    except ClientGone:
        return Response(status_code=STATUS_CLIENT_CLOSED)
    headers |= context_fit_header(notice) if notice is not None else {}
    chunks = openai_render.ChunkStream(request_id, created, served.model, body.includes_usage)
    stream = openai_render.stream_chunks(events, chunks, heartbeat_s(request), more)
    return EventStreamResponse(stream, headers)


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    names = model_names(request)
    if "anthropic-version" in request.headers:
        data = [_anthropic_model(name) for name in names]
        return JSONResponse({"data": data, "has_more": False, "first_id": names[0], "last_id": names[-1]})
    return JSONResponse({"object": "list", "data": [_openai_model(request, name) for name in names]})


@router.get("/v1/models/{model_id:path}")
async def get_model(request: Request, model_id: str) -> Response:
    check_model(request, model_id)
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
    media = settings_of(request).api.media
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
            return await raw_response(served, headers)
        headers[BACKEND_HEADER] = served.backend
        if not chat.stream:
            answer = await until_disconnect(request, collect(served.events))
            headers[BACKEND_HEADER] = backends(served)[-1]  # after a takeover: the one that finished
            headers |= _notice_headers(answer)
            return JSONResponse(anthropic_render.message_body(answer, message_id), headers=headers)
        events, notice = await leading_notice(served.events, heartbeat_s(request))
        num_prompt_tokens = notice.num_fitted_tokens if notice is not None else 0
        if notice is None:
            size = _prompt_size(request, served, chat)
            num_prompt_tokens = await until_disconnect(request, _within(size, heartbeat_s(request), 0))
    except ClientGone:
        return Response(status_code=STATUS_CLIENT_CLOSED)
    headers |= context_fit_header(notice) if notice is not None else {}
    stream = anthropic_render.stream_events(
        events, message_id, served.model, num_prompt_tokens, heartbeat_s(request)
    )
    return EventStreamResponse(stream, headers)


@router.post("/v1/messages/count_tokens")
async def count_tokens(request: Request) -> Response:
    request_id = _begin(request, ApiFormat.ANTHROPIC_MESSAGES)
    body = parse_body(await request.body(), anthropic.CountTokensRequest)
    unknown: UnknownFieldLog | None = getattr(request.app.state, "unknown_fields", None)
    if unknown is not None:
        unknown.note_model(ApiFormat.ANTHROPIC_MESSAGES, body)
    chat = anthropic.to_chat_request(body, request_id, settings_of(request).api.media)
    backend = serving_backend(request, chat.model)
    try:
        num_tokens = await until_disconnect(request, backend.count_tokens(chat))
    except ClientGone:
        return Response(status_code=STATUS_CLIENT_CLOSED)
    headers = {request_id_header(ApiFormat.ANTHROPIC_MESSAGES): request_id}
    return JSONResponse(anthropic_render.count_tokens_body(num_tokens), headers=headers)


# --- shared --------------------------------------------------------------------------------------


async def _serve(
    request: Request, api: ApiFormat, intake: Intake[Any], payload: dict[str, Any]
) -> RawReply | EventReply:
    """The answer's start (api/serving.py); a stream waits at most a heartbeat for its first event.
    `payload` is the body already parsed (handed on so that a passthrough does not parse it again)."""
    chat, body = intake.chat, await request.body()
    max_wait_s = heartbeat_s(request) if chat.stream else None

    def routed() -> ClientCall:
        return client_call(request, api, body, chat, intake.local_refusal, payload)

    return await serve(request, chat, routed, max_wait_s=max_wait_s)


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
    media = settings_of(request).api.media
    return converter(api, request_id, media, unknown.note_model if unknown is not None else None)


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


def _more_choices(
    request: Request, served: EventReply, chat: ChatRequest
) -> list[AsyncIterator[StreamEvent]]:
    """Choices 1..n-1 of an OpenAI request with n > 1, from the local backend when it served choice 0
    (an upstream's converted answer has one choice). The llama.cpp engine started them with choice 0:
    one prompt prepared and sent for all n (engine/choices.py). Each is closed by whoever reads the
    choices (`collect_all`, `stream_chunks`), started or not."""
    backend: ChatBackend | None = request.app.state.backend
    if chat.num_choices <= 1 or backend is None or served.backend != backend.name:
        return []
    if isinstance(backend, LocalBackend):
        more = backend.more_choices(chat)
    else:
        more = [backend.stream(chat) for _ in range(chat.num_choices - 1)]
    return [watched(request, events) for events in more]


def _notice_headers(answer: Answer) -> dict[str, str]:
    return context_fit_header(answer.fitted) if answer.fitted is not None else {}


async def _within(work: Awaitable[T], timeout_s: float, default: T) -> T:
    """`work`'s result, or `default` if it takes longer than `timeout_s`."""
    try:
        return await asyncio.wait_for(work, timeout_s)
    except TimeoutError:
        return default
