"""One record per request, as the client saw it, taken by an ASGI middleware around the whole app: the
JSON log line (logger "hotspare.requests") and the request metrics both come from it.

Outcomes: `ok`; `rejected` (4xx); `error` (5xx); `stream_error` (a stream that ended with its API's
error event: the client was told the answer is incomplete; the reply the route served says so, see
`Served` in api/serving.py); `client_closed` (the client left first).

`backend` is the `x-hotspare-backend` header: for a stream, the backend that started it. `backends`
lists every backend that contributed to the answer, in order -- after a mid-stream takeover, the one
that started it, then each that took over -- read from the reply the route left in the scope.

The line holds the request id, API, method, path, status, backend(s), outcome, whether it streamed,
time to first byte and total time in ms, bytes out, token usage when the answer reported it, and the
caller's key id -- never a key, a header or (unless `[log] include_prompts`) the request body.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hotspare.api.serving import SERVED_SCOPE, Served
from hotspare.ops.access import KEY_SCOPE

log = logging.getLogger("hotspare.requests")

QUIET_PATHS = frozenset({"/", "/health", "/ready", "/metrics", "/status", "/status.json"})
MAX_PROMPT_BYTES = 64_000
_TAIL_BYTES = 4096
_INPUT = re.compile(rb'"(?:prompt_tokens|input_tokens)":\s*(\d+)')
_OUTPUT = re.compile(rb'"(?:completion_tokens|output_tokens)":\s*(\d+)')


@dataclass(slots=True)
class RequestRecord:
    id: str
    api: str
    method: str
    path: str
    status: int = 0
    backend: str = "none"
    outcome: str = "ok"
    stream: bool = False
    ttfb_ms: float | None = None
    duration_ms: float = 0.0
    bytes_out: int = 0
    input_tokens: int | None = None
    output_tokens: int | None = None
    key: str | None = None
    prompt: str | None = None
    backends: list[str] | None = None  # every backend that contributed, in order (see above)

    def to_json(self) -> str:
        """The record as one JSON object without its unset (None) fields. (Not `asdict`: it deep-copies
        every field, a tenth of a millisecond per request on the passthrough path.)"""
        return json.dumps({k: v for k in self.__slots__ if (v := getattr(self, k)) is not None})


def configure_log(stream: Any = None) -> None:
    """Write request records as bare JSON lines (no logging prefix) to `stream` (stderr by default)."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def api_of(path: str) -> str:
    if path == "/v1/chat/completions":
        return "openai_chat"
    if path.startswith("/v1/messages"):
        return "anthropic_messages"
    if path.startswith("/v1/responses"):
        return "openai_responses"
    return "other"


class RequestLog:
    """`on_record` gets every finished record (metrics, the status board)."""

    def __init__(
        self,
        app: ASGIApp,
        on_record: Callable[[RequestRecord], None],
        *,
        log_requests: bool = True,
        include_prompts: bool = False,
    ) -> None:
        self.app = app
        self._on_record = on_record
        self._log_requests = log_requests
        self._include_prompts = include_prompts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in QUIET_PATHS:
            await self.app(scope, receive, send)
            return
        tap = _Tap(scope, time.monotonic(), self._include_prompts)
        try:
            await self.app(scope, tap.receive(receive), tap.send(send))
        except Exception:
            tap.has_raised = True  # the server's error handler answers 500 outside this middleware
            raise
        finally:
            record = tap.finish()
            self._on_record(record)
            if self._log_requests:
                log.info("%s", record.to_json())


class _Tap:
    """Watches one request's messages as they pass."""

    def __init__(self, scope: Scope, started: float, keep_body: bool) -> None:
        self.started = started
        self.record = RequestRecord("", api_of(scope["path"]), scope["method"], scope["path"])
        self.scope = scope
        self.keep_body = keep_body
        self.body = bytearray()
        self.head = b""
        self.tail = b""
        self.is_complete = False
        self.has_raised = False

    def receive(self, receive: Receive) -> Receive:
        if not self.keep_body:
            return receive

        async def tapped() -> Message:
            message = await receive()
            if message["type"] == "http.request" and len(self.body) < MAX_PROMPT_BYTES:
                self.body += message.get("body", b"")[: MAX_PROMPT_BYTES - len(self.body)]
            return message

        return tapped

    def send(self, send: Send) -> Send:
        async def tapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                self._on_start(message)
            elif message["type"] == "http.response.body":
                self._on_body(message)
            await send(message)

        return tapped

    def _on_start(self, message: Message) -> None:
        self.record.status = int(message["status"])
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in message.get("headers", [])}
        self.record.id = headers.get("x-request-id") or headers.get("request-id") or ""
        self.record.backend = headers.get("x-hotspare-backend", "none")
        self.record.stream = "text/event-stream" in headers.get("content-type", "")

    def _on_body(self, message: Message) -> None:
        chunk: bytes = message.get("body", b"")
        if chunk:
            if self.record.ttfb_ms is None:
                self.record.ttfb_ms = round((time.monotonic() - self.started) * 1000, 1)
            self.record.bytes_out += len(chunk)
            if len(self.head) < _TAIL_BYTES:
                self.head += chunk[: _TAIL_BYTES - len(self.head)]
            self.tail = (self.tail + chunk)[-_TAIL_BYTES:]
        if not message.get("more_body", False):
            self.is_complete = True

    def finish(self) -> RequestRecord:
        r = self.record
        r.duration_ms = round((time.monotonic() - self.started) * 1000, 1)
        r.key = self.scope.get(KEY_SCOPE)
        served: Served | None = self.scope.get(SERVED_SCOPE)
        r.backends = served.backends if served is not None else None
        r.outcome = self._outcome(served)
        text = self.head + self.tail
        inputs, outputs = _INPUT.findall(text), _OUTPUT.findall(text)
        r.input_tokens = int(inputs[0]) if inputs else None
        r.output_tokens = int(outputs[-1]) if outputs else None
        if self.keep_body:
            r.prompt = bytes(self.body).decode("utf-8", errors="replace")
        return r

    def _outcome(self, served: Served | None) -> str:
        status = self.record.status
        if self.has_raised and not self.is_complete:
            self.record.status = 500
            return "error"
        if status == 0 or status == 499 or not self.is_complete:
            return "client_closed"
        if status >= 500:
            return "error"
        if status >= 400:
            return "rejected"
        has_failed = self.record.stream and served is not None and served.has_failed
        return "stream_error" if has_failed else "ok"
