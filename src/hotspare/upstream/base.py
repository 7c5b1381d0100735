"""The upstream interface: one cloud provider (or OpenAI-compatible server) over HTTP.

An `Upstream` is the boundary where transport errors (transport.py) and HTTP statuses become
`UpstreamError`s with a `FailureClass` -- exactly once, here, in stream.py and in the vendor
modules. Two ways to use one:

* passthrough (`open_stream(call, passthrough=True)` / `complete`): the client spoke this upstream's
  format; its body and headers go up as they are (plus the configured key) and the upstream's SSE
  events come back byte for byte in `UpstreamStream`, parsed on the side by a `StreamParser` so the
  router knows what text the client already has (both in upstream/stream.py).
* cross-format (`events(call, request)`): a `ChatRequest` becomes vendor JSON and the vendor's SSE
  becomes core `StreamEvent`s.

Secrets: keys come from the client's headers or the environment, go into request headers only, and
are never logged, stored or put into an error message (a truncated sha256 identifies a key in memory).

Whose key goes where (`api_key = "forward"`): a client's key belongs to the vendor whose API the
client spoke (an Anthropic client's key to `kind = "anthropic"`, an OpenAI client's to `kind =
"openai"`), and is forwarded only to an upstream of that kind: `accepts(call)` is False for the
others (no cross-format failover and no takeover onto them; give them an `env:` key for that).
With an `env:` key, the operator's key is the one sent, and a 401/403 means *that* key is
rejected: an upstream failure (AUTH_OUTAGE: fail over, counted, alerted), never the client's fault,
and the provider's body (which may quote the key, masked) is not relayed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx

from hotspare.core.errors import FailureClass, UpstreamError
from hotspare.core.types import ApiFormat, ChatRequest, StreamEvent
from hotspare.upstream.config import UpstreamConfig
from hotspare.upstream.headers import AUTH_HEADERS, forwardable_headers, header_value, request_headers
from hotspare.upstream.keys import GoodKeys, vendor_of
from hotspare.upstream.session import open_session
from hotspare.upstream.stream import StreamParser, UpstreamStream
from hotspare.upstream.transport import ConnectTimedOut, Response, TransportError

log = logging.getLogger("hotspare.upstream")

_NON_TEXT_KEYS = ("tools", "functions", "thinking", "response_format", "tool_choice", "audio", "modalities")


@dataclass(frozen=True, slots=True)
class ClientCall:
    """One client request as it arrived: its format, raw body, headers (lower-case names) and the
    parsed `ChatRequest`. Headers include the client's credentials: never log them.

    `local_refusal`, when set, says why only an upstream speaking the client's own format can answer
    (a built-in tool, an image, a conversation stored only at the provider): the router then neither
    converts it for another format nor hands it to the local model."""

    api_format: ApiFormat
    body: bytes
    headers: tuple[tuple[str, str], ...]
    request: ChatRequest
    local_refusal: str | None = None
    payload: Mapping[str, Any] | None = None  # `body` already parsed (never modified), if it was

    def body_object(self) -> dict[str, Any] | None:
        """A fresh shallow copy of the body's JSON object (None if it is not one), parsed once."""
        if self.payload is not None:
            return dict(self.payload)
        return _json_object(self.body)

    def header(self, name: str) -> str | None:
        return header_value(self.headers, name)


@dataclass(frozen=True, slots=True)
class RawResponse:
    """A complete upstream response in the client's own format, to be returned unchanged."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds form); None if absent or an HTTP date."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class Upstream(ABC):
    """One configured provider. Safe for concurrent use on one event loop; owns its HTTP session
    (`aclose`). `transport` (tests) swaps the lean HTTP/1.1 pool for httpx over that transport."""

    kind: ClassVar[ApiFormat]
    chat_path: ClassVar[str]

    def __init__(self, config: UpstreamConfig, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = config
        self.name = config.name
        self._env_key = config.resolve_env_key()
        t = config.timeouts
        self._http = open_session(config.base_url, t.connect_s, t.total_s, transport)
        self._good_keys = GoodKeys()
        self._probe_key: str | None = self._env_key  # in memory only: a key that recently worked

    # --- vendor specifics -------------------------------------------------------------------------
    @abstractmethod
    def new_parser(self, client_body: Mapping[str, Any] | None) -> StreamParser: ...

    def passes_through(self, api: ApiFormat) -> bool:
        """Whether a client speaking `api` is passed through as it is (else converted)."""
        return api is self.kind

    def passthrough_path(self, api: ApiFormat) -> str:
        """Where a passed-through request of format `api` goes."""
        return self.chat_path

    def passthrough_parser(self, call: ClientCall) -> StreamParser:
        """The parser for a passed-through call's stream."""
        return self.new_parser(call.body_object())

    @abstractmethod
    def auth_headers(self, key: str) -> dict[str, str]: ...

    @abstractmethod
    def default_headers(self) -> dict[str, str]: ...

    @abstractmethod
    def build_body(self, request: ChatRequest) -> dict[str, Any]:
        """The vendor JSON for a cross-format request (always streaming)."""

    @abstractmethod
    def classify_error_body(self, status: int, body: Mapping[str, Any]) -> FailureClass | None:
        """A vendor-specific class for an error response (e.g. context length), or None."""

    # --- shared ----------------------------------------------------------------------------------
    def error(self, failure: FailureClass, message: str, **kwargs: Any) -> UpstreamError:
        return UpstreamError(failure, message, upstream=self.name, **kwargs)

    def client_key(self, call: ClientCall) -> str | None:
        """The key the client sent, in either vendor's header style."""
        key = call.header("x-api-key")
        if key:
            return key
        auth = call.header("authorization") or ""
        return auth[7:] if auth.lower().startswith("bearer ") else None

    def accepts(self, call: ClientCall) -> bool:
        """Whether this upstream may be sent `call` (passed through or converted): with an `env:`
        key always; in forward mode only from a client of its own vendor (its key is for us)."""
        return self._env_key is not None or vendor_of(call.api_format) is self.kind

    def _key_for(self, call: ClientCall) -> str | None:
        if self._env_key is not None:
            return self._env_key
        return self.client_key(call) if self.accepts(call) else None

    def _passthrough_request(self, call: ClientCall) -> tuple[bytes, dict[str, str]]:
        headers = request_headers(call.headers)
        if self._env_key is not None:
            headers = {k: v for k, v in headers.items() if k not in AUTH_HEADERS}
            headers.update(self.auth_headers(self._env_key))
        headers["accept-encoding"] = "identity"
        body = call.body
        upstream_model = self.config.upstream_model(call.request.model)
        if upstream_model != call.request.model:
            payload = call.body_object() or {}
            payload["model"] = upstream_model
            body = json.dumps(payload).encode()
        return body, headers

    def _cross_request(self, call: ClientCall, request: ChatRequest) -> tuple[bytes, dict[str, str]]:
        headers = {
            **self.default_headers(),
            "content-type": "application/json",
            "accept-encoding": "identity",
        }
        key = self._key_for(call)
        if key is not None:
            headers.update(self.auth_headers(key))
        return json.dumps(self.build_body(request)).encode(), headers

    async def _send(
        self,
        body: bytes,
        headers: dict[str, str],
        key: str | None,
        headers_deadline_s: float,
        path: str | None = None,
    ) -> Response:
        try:
            async with asyncio.timeout(headers_deadline_s):
                response = await self._http.send("POST", path or self.chat_path, headers, body)
        except TimeoutError:
            raise self.error(FailureClass.HEADERS_TIMEOUT, "no response headers in time") from None
        except ConnectTimedOut as exc:
            raise self.error(FailureClass.CONNECT_TIMEOUT, "connect timed out") from exc
        except TransportError as exc:  # refused, reset, DNS, TLS, protocol error before the headers
            raise self.error(FailureClass.CONNECT_ERROR, f"connection failed ({exc})") from exc
        if response.status >= 400:
            raise await self._status_error(response, key)
        if key is not None:
            self._good_keys.remember(key)
            self._probe_key = key
        return response

    async def _status_error(self, response: Response, key: str | None) -> UpstreamError:
        status = response.status
        try:
            async with asyncio.timeout(self.config.timeouts.idle_s):
                body = await response.aread()
        except (TimeoutError, TransportError):
            body = b""
        finally:
            await response.aclose()
        content_type = response.header("content-type") or "application/json"
        retry_after = parse_retry_after(response.header("retry-after"))
        failure = self._classify_status(status, body, key)
        return self.error(
            failure,
            f"HTTP {status}",
            status=status,
            retry_after_s=retry_after,
            body=body,
            content_type=content_type,
        )

    def _classify_status(self, status: int, body: bytes, key: str | None) -> FailureClass:
        try:
            payload = json.loads(body) if body else {}
        except ValueError:
            payload = {}
        vendor = self.classify_error_body(status, payload if isinstance(payload, dict) else {})
        if vendor is not None:
            return vendor
        if status == 429:
            return FailureClass.RATE_LIMITED
        if status >= 500:
            return FailureClass.SERVER_ERROR
        if status in (401, 403) and self._env_key is not None:
            log.warning("upstream %r rejected its configured key (HTTP %d): failing over", self.name, status)
            return FailureClass.AUTH_OUTAGE
        if status in (401, 403) and key is not None and self._good_keys.worked_recently(key):
            return FailureClass.AUTH_OUTAGE
        if status in (408, 409):  # request timeout / conflict: transient on the provider's side
            return FailureClass.SERVER_ERROR
        return FailureClass.CLIENT_FAULT

    async def open_stream(self, call: ClientCall, *, passthrough: bool) -> UpstreamStream:
        """Send a streaming request; return once 2xx headers arrived. Raises `UpstreamError`."""
        started = time.monotonic()
        path = None
        if passthrough:
            body, headers = self._passthrough_request(call)
            parser = self.passthrough_parser(call)
            path = self.passthrough_path(call.api_format)
        else:
            body, headers = self._cross_request(call, call.request)
            parser = self.new_parser(None)
        t = self.config.timeouts
        deadline_s = min(t.first_token_s, t.total_s)
        response = await self._send(body, headers, self._key_for(call), deadline_s, path)
        return UpstreamStream(response, parser, started, t, self.error)

    def as_streaming(self, call: ClientCall) -> ClientCall | None:
        """A non-streaming passthrough call rewritten to stream (so first-token and stall deadlines,
        hedging and takeover apply; the JSON is assembled from the stream), or None when the answer
        might hold more than text (tools, thinking, several choices): those go up unchanged."""
        body = call.body_object()
        if body is None or any(body.get(k) for k in _NON_TEXT_KEYS) or (body.get("n") or 1) > 1:
            return None
        body["stream"] = True
        if call.api_format is ApiFormat.OPENAI_CHAT:
            body["stream_options"] = {"include_usage": True}
        return dataclasses.replace(call, body=json.dumps(body).encode(), payload=body)

    async def complete(self, call: ClientCall) -> RawResponse:
        """A non-streaming passthrough: the whole response, checked to be JSON. Raises `UpstreamError`."""
        body, headers = self._passthrough_request(call)
        total_s = self.config.timeouts.total_s
        started = time.monotonic()
        path = self.passthrough_path(call.api_format)
        response = await self._send(body, headers, self._key_for(call), total_s, path)
        try:
            async with asyncio.timeout(max(0.0, started + total_s - time.monotonic())):
                content = await response.aread()
        except TimeoutError:
            raise self.error(FailureClass.TOTAL_TIMEOUT, "response body not complete in time") from None
        except TransportError as exc:
            raise self.error(FailureClass.STREAM_CUT, f"response broke ({exc})") from exc
        finally:
            await response.aclose()
        if _json_object(content) is None:
            raise self.error(FailureClass.MALFORMED, "response body is not a JSON object")
        return RawResponse(response.status, forwardable_headers(response.headers), content)

    async def forward(self, method: str, path: str, headers: tuple[tuple[str, str], ...]) -> RawResponse:
        """A request that is not a chat (`GET /v1/responses/{id}`, ...) sent as the client made it
        (with this upstream's key where one is configured; no body). Returns the provider's answer,
        whatever its status; raises `UpstreamError` when none came within the total timeout."""
        sent = request_headers(headers)
        if self._env_key is not None:
            sent = {k: v for k, v in sent.items() if k not in AUTH_HEADERS} | self.auth_headers(self._env_key)
        sent["accept-encoding"] = "identity"
        try:
            async with asyncio.timeout(self.config.timeouts.total_s):
                response = await self._http.send(method, path, sent, b"")
                try:
                    content = await response.aread()
                finally:
                    await response.aclose()
        except TimeoutError:
            raise self.error(FailureClass.TOTAL_TIMEOUT, "no answer in time") from None
        except TransportError as exc:
            raise self.error(FailureClass.CONNECT_ERROR, f"request failed ({exc})") from exc
        return RawResponse(response.status, forwardable_headers(response.headers), content)

    async def events(self, call: ClientCall, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        """Cross-format: `request` (which may differ from `call.request`, e.g. a continuation) as
        core events: TextDeltas, then one Finish. Raises `UpstreamError`."""
        stream = await self.open_stream(
            ClientCall(call.api_format, call.body, call.headers, request), passthrough=False
        )
        try:
            while (item := await stream.next_event()) is not None:
                for event in item[1]:
                    yield event
        finally:
            await stream.aclose()

    async def probe(self, model: str | None = None) -> bool:
        """Is the provider (and `model`) back? With a model and a known-good key: a real 1-token
        request for it (200 = healthy). Otherwise GET /v1/models, which spends nothing: 200 with a
        known key, or any non-5xx/429 answer when no key is known yet. Never raises."""
        headers = self.default_headers()
        if self._probe_key is not None:
            headers.update(self.auth_headers(self._probe_key))
        if model is not None and self._probe_key is not None:
            body = json.dumps(
                {"model": model, "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}
            )
            status = await self._probe_send(
                "POST", self.chat_path, {**headers, "content-type": "application/json"}, body
            )
            return status == 200
        status = await self._probe_send("GET", "/v1/models", headers, "")
        if status is None:
            return False
        if self._probe_key is not None:
            return status == 200
        return status < 500 and status != 429

    async def _probe_send(self, method: str, path: str, headers: dict[str, str], body: str) -> int | None:
        t = self.config.timeouts
        try:
            async with asyncio.timeout(t.connect_s + min(t.first_token_s, 5.0)):
                response = await self._http.send(method, path, headers, body.encode())
                try:
                    await response.aread()  # so that the connection can be reused
                finally:
                    await response.aclose()
        except (TimeoutError, TransportError):
            return None
        return response.status

    async def aclose(self) -> None:
        await self._http.aclose()


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
