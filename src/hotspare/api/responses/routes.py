"""The Responses API endpoints: `POST /v1/responses`; `GET` and `DELETE /v1/responses/{id}` and
`GET /v1/responses/{id}/input_items` (answered as api/responses/lookup.py says).

A request is served like the chat endpoints (api/serving.py): by the failover router when upstreams are
configured -- passed through unchanged to an OpenAI-kind upstream, whose bytes are read on the way
past to keep the response -- else by the local model, whose events are rendered here.

Conversations: a `previous_response_id` is resolved from the store (api/responses/store.py) into the
earlier turns, which the local model (or a cross-format upstream) then sees before this request's own
input. An upstream is sent the id unchanged when it made that response itself; when another backend
made it, the upstream cannot know the id, so the earlier turns are inlined into `input` instead.
Each client reads and continues only the turns stored with its own key (`owner_of`); an id stored
under another key is NotFound, and is never asked of an upstream either.

Keeping a response is best effort: a write the store refuses (disk full, "database is locked") is
logged and counted (`hotspare_response_store_errors_total`), and the answer, which has succeeded, is
delivered all the same; only a later `previous_response_id` to it will not resolve here.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from starlette.responses import JSONResponse, Response

from hotspare.api.config import ResponsesSettings, Serving
from hotspare.api.errors import request_id_header
from hotspare.api.responses.lookup import Lookup
from hotspare.api.responses.render import EventRenderer, Shell, final_response, new_item_id, stream_events
from hotspare.api.responses.request import Conversion, ResponsesRequest, input_items, to_chat_request
from hotspare.api.responses.store import ResponseStore, StoredTurn
from hotspare.api.serving import (
    BACKEND_HEADER,
    STATUS_CLIENT_CLOSED,
    ClientGone,
    client_call,
    heartbeat_s,
    raw_response,
    serve,
    until_disconnect,
)
from hotspare.api.sse import EventStreamResponse, closing_stream
from hotspare.api.wire import parse_body
from hotspare.core.errors import HotspareError, InvalidRequest, NotFound
from hotspare.core.types import ApiFormat, ChatBackend, ChatRequest
from hotspare.engine.protocol import LocalBackend
from hotspare.home import hotspare_home
from hotspare.router.replies import RawReply, backends
from hotspare.upstream.base import ClientCall
from hotspare.upstream.openai_responses import TAKEOVER_COMMENT
from hotspare.upstream.sse import SseDecoder

log = logging.getLogger("hotspare.responses")

router = APIRouter()

API = ApiFormat.OPENAI_RESPONSES
_FINAL_EVENTS = frozenset({"response.completed", "response.incomplete"})


# --- the store -----------------------------------------------------------------------------------


def open_store(config: ResponsesSettings) -> ResponseStore | None:
    """The store the `[responses]` settings ask for (None when it is off)."""
    if not config.store:
        return None
    path: Path | str = config.store_path or hotspare_home() / "responses.sqlite3"
    if path != ":memory:":
        path = Path(path).expanduser()
    per_key = config.store_max_mb_per_key
    return ResponseStore(
        path,
        config.store_max_mb * 1024 * 1024,
        config.store_max_age_s,
        max_bytes_per_owner=per_key * 1024 * 1024 if per_key else None,
    )


def owner_of(request: Request, store: ResponseStore) -> str:
    """The store owner of the key the client presented (x-api-key, else Authorization: Bearer)."""
    key = request.headers.get("x-api-key")
    if not key:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        key = token.strip() if scheme.lower() == "bearer" else None
    return store.owner_id(key)


def store_of(app: FastAPI) -> ResponseStore | None:
    """The app's store, opened on first use (`app.state.response_store`; closed by the app)."""
    if getattr(app.state, "response_store", None) is None:
        app.state.response_store = open_store(app.state.serving.responses)
    store: ResponseStore | None = app.state.response_store
    return store


def close_store(app: FastAPI) -> None:
    store: ResponseStore | None = getattr(app.state, "response_store", None)
    app.state.response_store = None
    if store is not None:
        store.close()


# --- endpoints -----------------------------------------------------------------------------------


@router.get("/v1/responses/{response_id}")
async def get_response(request: Request, response_id: str) -> Response:
    return await _lookup(request, response_id).retrieve()


@router.get("/v1/responses/{response_id}/input_items")
async def list_input_items(request: Request, response_id: str) -> Response:
    return await _lookup(request, response_id).input_items()


@router.delete("/v1/responses/{response_id}")
async def delete_response(request: Request, response_id: str) -> Response:
    return await _lookup(request, response_id).delete()


def _lookup(request: Request, response_id: str) -> Lookup:
    request.state.request_id = new_item_id("req")[:28]
    store = store_of(request.app)
    owner = owner_of(request, store) if store is not None else ""
    return Lookup(request, response_id, store, request.app.state.router, owner)


@router.post("/v1/responses")
async def create_response(request: Request) -> Response:
    request_id = new_item_id("req")[:28]
    request.state.request_id = request_id
    raw = await request.body()
    body = parse_body(raw, ResponsesRequest)
    if (unknown := getattr(request.app.state, "unknown_fields", None)) is not None:
        unknown.note_model(API, body)
    exchange = Exchange(request, body, await _earlier_turns(request, body))
    headers = {request_id_header(API): request_id}
    try:
        routed = partial(exchange.client_call, raw)
        served = await serve(request, exchange.chat, routed, local_error=exchange.local_error())
        if isinstance(served, RawReply):
            return await raw_response(dataclasses.replace(served, body=exchange.recorded(served)), headers)
        headers[BACKEND_HEADER] = served.backend
        shell = Shell.new(body, served.model)
        if not body.stream:
            response = await until_disconnect(request, final_response(served.events, shell))
            headers[BACKEND_HEADER] = backends(served)[-1]  # after a takeover: the one that finished
            await exchange.keep(response, served.backend, is_upstream=False)
            return JSONResponse(response, headers=headers)
    except ClientGone:
        return Response(status_code=STATUS_CLIENT_CLOSED)

    async def on_done(response: dict[str, Any]) -> None:
        await exchange.keep(response, served.backend, is_upstream=False)

    events = stream_events(served.events, EventRenderer(shell), heartbeat_s(request), on_done)
    return EventStreamResponse(events, headers)


async def _earlier_turns(request: Request, body: ResponsesRequest) -> list[StoredTurn] | None:
    """The stored conversation `previous_response_id` names (oldest first); [] without one; None
    when it is not stored here (then only the upstream that made it can continue it)."""
    if body.previous_response_id is None:
        return []
    store = store_of(request.app)
    if store is None:
        return None
    owner = owner_of(request, store)
    try:
        return await asyncio.to_thread(store.chain, body.previous_response_id, owner)
    except NotFound:
        if await asyncio.to_thread(store.is_foreign, body.previous_response_id, owner):
            raise NotFound(f"Previous response with id {body.previous_response_id!r} not found.") from None
        return None


class Exchange:
    """One request of a conversation and the response it gets: what to ask for it, and how to keep
    what it produced. (Not the local engine's `agents.turn.Turn`, a prompt ready to generate.)"""

    def __init__(self, request: Request, body: ResponsesRequest, earlier: list[StoredTurn] | None) -> None:
        self.request = request
        self.body = body
        self.earlier = earlier
        self.history = [item for turn in earlier or () for item in (*turn.input, *turn.output)]
        self.conversion: Conversion = to_chat_request(body, self.history, request.state.request_id)
        self.local_refusal = self.conversion.local_refusal
        if earlier is None:
            why = f"previous_response_id {body.previous_response_id!r} is not stored here"
            self.local_refusal = f"{self.local_refusal}; {why}" if self.local_refusal else why

    @property
    def chat(self) -> ChatRequest:
        return self.conversion.chat

    def client_call(self, raw: bytes) -> ClientCall:
        """What the router is asked (`raw` is the client's body, see `_upstream_body`)."""
        return client_call(self.request, API, self._upstream_body(raw), self.chat, self.local_refusal)

    def local_error(self) -> HotspareError | None:
        """Why the local model cannot serve this request (None when it can)."""
        if self.earlier is None:
            return NotFound(f"Previous response with id {self.body.previous_response_id!r} not found.")
        if self.local_refusal is not None:
            return InvalidRequest(f"not supported by the local model: {self.local_refusal}")
        return None

    def _upstream_body(self, raw: bytes) -> bytes:
        """The client's body, unless the previous response was made by someone the upstream does not
        know: then the earlier turns go into `input` and the id is dropped."""
        if not self.earlier or self.earlier[-1].is_upstream:
            return raw
        payload = json.loads(raw)
        payload.pop("previous_response_id", None)
        payload["input"] = [_inlined(item) for item in self.history] + input_items(self.body)
        return json.dumps(payload).encode()

    async def keep(self, response: dict[str, Any], backend: str, is_upstream: bool) -> None:
        """Store a finished response (unless the client or the config opted out); for an upstream's
        answer, warm the local model on the conversation so far, stored or not (Codex sends
        `store: false` and its whole conversation on every turn)."""
        if not isinstance(response.get("id"), str):
            return
        store = store_of(self.request.app)
        turn = StoredTurn(
            id=response["id"],
            created_at=time.time(),  # when kept here: the age bound counts from it
            previous_id=self.body.previous_response_id,
            backend=backend,
            is_upstream=is_upstream,
            input=input_items(self.body),
            response=response,
            owner=owner_of(self.request, store) if store is not None else "",
        )
        if store is not None and self.body.store is not False:
            try:
                await asyncio.to_thread(store.put, turn)
            except (sqlite3.Error, OSError) as exc:
                log.warning("response %s was delivered but not stored: %s", turn.id, exc)
                self.request.app.state.monitor.metrics.store_errors.inc()
        if is_upstream:
            await self._warm(turn)

    async def _warm(self, turn: StoredTurn) -> None:
        serving: Serving = self.request.app.state.serving
        backend: ChatBackend | None = self.request.app.state.backend
        if not isinstance(backend, LocalBackend) or not backend.can_warm:
            return
        if not serving.warm_conversations:
            return
        body = self.body.model_copy(update={"input": [*turn.input, *turn.output]})
        with contextlib.suppress(HotspareError):
            await backend.warm(to_chat_request(body, self.history).chat)

    async def recorded(self, reply: RawReply) -> AsyncIterator[bytes]:
        """`reply.body` unchanged, keeping the response it carries (an SSE stream's final response,
        or a JSON body) once it is complete."""
        decoder = SseDecoder()
        is_stream = "text/event-stream" in dict(reply.headers).get("content-type", "")
        taken_over = False
        whole = b""
        async with closing_stream(reply.body) as body:
            async for chunk in body:
                if not is_stream:
                    whole += chunk
                for event in decoder.feed(chunk) if is_stream else ():
                    taken_over = taken_over or event.raw == TAKEOVER_COMMENT
                    final = _final_response(event.data)
                    if final is not None:
                        await self.keep(final, reply.backend, is_upstream=not taken_over)
                yield chunk
        if not is_stream and reply.status == 200:
            final = _json_response(whole)
            if final is not None:
                await self.keep(final, reply.backend, is_upstream=True)


def _final_response(data: str) -> dict[str, Any] | None:
    if not data or '"response.' not in data:
        return None
    event = _json_object(data)
    if event is None or event.get("type") not in _FINAL_EVENTS:
        return None
    response = event.get("response")
    return response if isinstance(response, dict) else None


def _json_response(body: bytes) -> dict[str, Any] | None:
    value = _json_object(body)
    return value if value is not None and value.get("object") == "response" else None


def _json_object(text: str | bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _inlined(item: dict[str, Any]) -> dict[str, Any]:
    """An earlier item as input for an upstream that never saw it: ids it could not resolve dropped
    (reasoning items keep theirs: that is how the provider finds their content)."""
    if item.get("type") == "reasoning":
        return item
    return {key: value for key, value in item.items() if key not in ("id", "status")}
