"""hotspare's errors in each API's own wire shape, decided in exactly one place: here. The API layer
sends them as responses and in-band stream events (api/errors.py, api/*_render.py); the upstream
clients take the error event of a takeover that failed from here too (formats/anthropic.py,
formats/openai_chat.py).

OpenAI:     `{"error": {"message", "type", "param", "code"}}`
Anthropic:  `{"type": "error", "error": {"type", "message"}, "request_id"}`

| error                         | OpenAI                               | Anthropic                    |
| ----------------------------- | ------------------------------------ | ---------------------------- |
| InvalidRequest                | 400 invalid_request_error            | 400 invalid_request_error    |
| ContextOverflow               | 400 ... code context_length_exceeded | 400 invalid_request_error    |
| RequestTooLarge               | 413 ... code request_too_large       | 413 request_too_large        |
| AuthenticationFailed          | 401 ... code invalid_api_key         | 401 authentication_error     |
| PermissionDenied              | 403 ... code permission_denied       | 403 permission_error         |
| NotFound                      | 404 invalid_request_error            | 404 not_found_error          |
| RateLimited (a client key)    | 429 code rate_limit_exceeded         | 429 rate_limit_error         |
| Overloaded                    | 429 code rate_limit_exceeded         | 529 overloaded_error         |
| BackendUnavailable/ModelError | 503 server_error                     | 503 api_error                |
| UpstreamError (client fault)  | the upstream's own status and body   | the same                     |
| UpstreamError (other)         | 502 server_error                     | 502 api_error                |

Overloaded (and an upstream's retry hint) also sets `retry-after` in whole seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from hotspare.core.errors import (
    AuthenticationFailed,
    BackendUnavailable,
    ContextOverflow,
    HotspareError,
    InvalidRequest,
    ModelError,
    NotFound,
    Overloaded,
    PermissionDenied,
    RateLimited,
    RequestTooLarge,
    UpstreamError,
)
from hotspare.core.types import ApiFormat


@dataclass(frozen=True, slots=True)
class ErrorKind:
    """How one error class looks in one API: HTTP status, `type` and (OpenAI only) `code`."""

    status: int
    type: str
    code: str | None = None


# Most specific class first: the first isinstance match wins.
_OPENAI_KINDS: tuple[tuple[type[HotspareError], ErrorKind], ...] = (
    (ContextOverflow, ErrorKind(400, "invalid_request_error", "context_length_exceeded")),
    (RequestTooLarge, ErrorKind(413, "invalid_request_error", "request_too_large")),
    (InvalidRequest, ErrorKind(400, "invalid_request_error")),
    (AuthenticationFailed, ErrorKind(401, "invalid_request_error", "invalid_api_key")),
    (PermissionDenied, ErrorKind(403, "invalid_request_error", "permission_denied")),
    (NotFound, ErrorKind(404, "invalid_request_error")),
    # What OpenAI sends for a request-rate limit; clients (and their SDKs) back off on the 429.
    (Overloaded, ErrorKind(429, "requests", "rate_limit_exceeded")),
    (BackendUnavailable, ErrorKind(503, "server_error")),
    (ModelError, ErrorKind(503, "server_error")),
    (UpstreamError, ErrorKind(502, "server_error")),
)
_ANTHROPIC_KINDS: tuple[tuple[type[HotspareError], ErrorKind], ...] = (
    (RequestTooLarge, ErrorKind(413, "request_too_large")),
    (InvalidRequest, ErrorKind(400, "invalid_request_error")),
    (AuthenticationFailed, ErrorKind(401, "authentication_error")),
    (PermissionDenied, ErrorKind(403, "permission_error")),
    (NotFound, ErrorKind(404, "not_found_error")),
    (RateLimited, ErrorKind(429, "rate_limit_error")),
    (Overloaded, ErrorKind(529, "overloaded_error")),
    (BackendUnavailable, ErrorKind(503, "api_error")),
    (ModelError, ErrorKind(503, "api_error")),
    (UpstreamError, ErrorKind(502, "api_error")),
)
_FALLBACK = {
    ApiFormat.OPENAI_CHAT: ErrorKind(500, "server_error"),
    ApiFormat.ANTHROPIC_MESSAGES: ErrorKind(500, "api_error"),
}


def _kind_of(exc: HotspareError, api: ApiFormat) -> ErrorKind:
    kinds = _ANTHROPIC_KINDS if api is ApiFormat.ANTHROPIC_MESSAGES else _OPENAI_KINDS
    for cls, kind in kinds:
        if isinstance(exc, cls):
            return kind
    return _FALLBACK.get(api, _FALLBACK[ApiFormat.OPENAI_CHAT])


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """One error, rendered: what goes on the wire, as a plain response or inside an SSE stream."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def error_reply(exc: HotspareError, api: ApiFormat, request_id: str = "") -> ErrorReply:
    """Render `exc` in `api`'s shape. Never raises."""
    kind = _kind_of(exc, api)
    headers = _retry_headers(exc)
    if api is ApiFormat.ANTHROPIC_MESSAGES:
        body: dict[str, Any] = {"type": "error", "error": {"type": kind.type, "message": exc.message}}
        if request_id:
            body["request_id"] = request_id
    else:
        param = exc.param if isinstance(exc, InvalidRequest) else None
        body = {"error": {"message": exc.message, "type": kind.type, "param": param, "code": kind.code}}
    return ErrorReply(status=kind.status, body=body, headers=headers)


def _retry_headers(exc: HotspareError) -> dict[str, str]:
    retry_after_s: float | None = None
    if isinstance(exc, Overloaded | UpstreamError):
        retry_after_s = exc.retry_after_s
    if retry_after_s is None:
        return {}
    return {"retry-after": str(max(1, math.ceil(retry_after_s)))}
