"""hotspare's errors as HTTP responses in each API's own wire shape. Which error goes out as what is
decided in exactly one place, the table in formats/errors.py; this module puts it on the wire (and
turns unknown routes, malformed bodies and bugs into errors of that tree).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from hotspare.core.errors import (
    HotspareError,
    InvalidRequest,
    NotFound,
    UpstreamError,
)
from hotspare.core.types import ApiFormat
from hotspare.formats.errors import error_reply

logger = logging.getLogger(__name__)

ANTHROPIC_PATH_PREFIX = "/v1/messages"


def api_format_for_path(path: str) -> ApiFormat:
    """The wire format a request to `path` speaks: Anthropic under /v1/messages, else OpenAI."""
    if path == ANTHROPIC_PATH_PREFIX or path.startswith(ANTHROPIC_PATH_PREFIX + "/"):
        return ApiFormat.ANTHROPIC_MESSAGES
    return ApiFormat.OPENAI_CHAT


def client_error(exc: Exception) -> HotspareError:
    """`exc` as something safe to show a client: a HotspareError as it is, anything else (a bug) logged
    and reduced to its type name."""
    if isinstance(exc, HotspareError):
        return exc
    logger.error("unexpected error in an answer", exc_info=exc)
    return HotspareError(f"internal error: {type(exc).__name__}")


def error_response(exc: HotspareError, api: ApiFormat, request_id: str = "") -> Response:
    """`exc` as a complete HTTP response in `api`'s shape.

    An upstream's own rejection of the request (a client fault) goes back byte for byte: the client
    asked that provider's API, so its error is the truthful answer.
    """
    if isinstance(exc, UpstreamError) and exc.is_client_fault and exc.body and exc.status is not None:
        return Response(exc.body, status_code=exc.status, media_type=exc.content_type)
    reply = error_reply(exc, api, request_id)
    return JSONResponse(reply.body, status_code=reply.status, headers=reply.headers)


def invalid_body(error: ValidationError, body: Any) -> InvalidRequest:
    """The first problem pydantic found in a request body, as an InvalidRequest naming the field.

    `body` is the parsed JSON the model was validated from; it is used to tell real field names in
    pydantic's error location apart from the labels it adds for union members and tags.
    """
    first = error.errors(include_url=False)[0]
    names = _field_path(first["loc"], body)
    ctx = first.get("ctx") or {}
    if first["type"] in ("union_tag_invalid", "union_tag_not_found") and "discriminator" in ctx:
        names.append(str(ctx["discriminator"]).strip("'"))
    path = _format_path(names)
    if first["type"] == "missing":
        message = f"{path}: field required"
    elif first["type"] == "extra_forbidden":
        message = f"{path}: unknown field (not part of this API)"
    else:
        message = f"{path}: {first['msg']}" if path else str(first["msg"])
    return InvalidRequest(message, param=path or None)


def _field_path(loc: tuple[int | str, ...], body: Any) -> list[int | str]:
    """The elements of `loc` that name real keys and indexes of `body` (plus a final missing key)."""
    names: list[int | str] = []
    current = body
    for position, element in enumerate(loc):
        is_last = position == len(loc) - 1
        is_key = isinstance(current, dict) and isinstance(element, str) and element in current
        is_index = isinstance(current, list) and isinstance(element, int) and element < len(current)
        if is_key or is_index:
            current = current[element]
        elif not (is_last and isinstance(current, dict)):
            continue  # a label pydantic added (a union member or tag), not part of the body
        names.append(element)
    return names


def _format_path(names: list[int | str]) -> str:
    text = ""
    for name in names:
        text += f"[{name}]" if isinstance(name, int) else (f".{name}" if text else name)
    return text


def new_request_id(api: ApiFormat) -> str:
    """A fresh id in the style the API's clients expect to log (`req_...` / `chatcmpl-...`)."""
    prefix = "req_" if api is ApiFormat.ANTHROPIC_MESSAGES else "chatcmpl-"
    return prefix + uuid.uuid4().hex[:24]


def request_id_header(api: ApiFormat) -> str:
    """The response header that carries the request id in `api`."""
    return "request-id" if api is ApiFormat.ANTHROPIC_MESSAGES else "x-request-id"


def install_error_handlers(app: Starlette) -> None:
    """Make every error `app` can produce, including unknown routes and bugs, answer in API shape."""
    app.add_exception_handler(HotspareError, _on_hotspare_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(Exception, _on_unexpected)


def _respond(request: Request, exc: HotspareError, status: int | None = None) -> Response:
    api = api_format_for_path(request.url.path)
    request_id = getattr(request.state, "request_id", "") or new_request_id(api)
    response = error_response(exc, api, request_id)
    if status is not None:
        response.status_code = status
    response.headers[request_id_header(api)] = request_id
    return response


async def _on_hotspare_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HotspareError)  # registered for HotspareError only
    return _respond(request, exc)


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)  # registered for it only
    route = f"{request.method} {request.url.path}"
    if exc.status_code == 404:
        return _respond(request, NotFound(f"no such route: {route}"))
    if exc.status_code == 405:
        return _respond(request, InvalidRequest(f"method not allowed: {route}"), status=405)
    return _respond(request, InvalidRequest(str(exc.detail)), status=exc.status_code)


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    return _respond(request, client_error(exc), status=500)
