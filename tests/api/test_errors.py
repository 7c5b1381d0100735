"""Every core error in each API's shape, with its status."""

from __future__ import annotations

import json

import pytest

from hotspare.api.errors import api_format_for_path, error_response
from hotspare.core.errors import (
    AuthenticationFailed,
    BackendUnavailable,
    ContextOverflow,
    FailureClass,
    HotspareError,
    InvalidRequest,
    ModelError,
    NotFound,
    Overloaded,
    UpstreamError,
)
from hotspare.core.types import ApiFormat
from hotspare.formats.errors import error_reply

OPENAI = ApiFormat.OPENAI_CHAT
ANTHROPIC = ApiFormat.ANTHROPIC_MESSAGES


@pytest.mark.parametrize(
    ("path", "api"),
    [
        ("/v1/messages", ANTHROPIC),
        ("/v1/messages/count_tokens", ANTHROPIC),
        ("/v1/messages/batches/x", ANTHROPIC),
        ("/v1/messagesx", OPENAI),
        ("/v1/chat/completions", OPENAI),
        ("/v1/nope", OPENAI),
        ("/", OPENAI),
    ],
)
def test_the_path_picks_the_shape(path: str, api: ApiFormat) -> None:
    assert api_format_for_path(path) is api


@pytest.mark.parametrize(
    ("error", "status", "kind", "code"),
    [
        (InvalidRequest("bad", "max_tokens"), 400, "invalid_request_error", None),
        (ContextOverflow(9000, 8192), 400, "invalid_request_error", "context_length_exceeded"),
        (AuthenticationFailed("who"), 401, "invalid_request_error", "invalid_api_key"),
        (NotFound("no such model"), 404, "invalid_request_error", None),
        (Overloaded("busy"), 429, "requests", "rate_limit_exceeded"),
        (BackendUnavailable("loading"), 503, "server_error", None),
        (ModelError("corrupt"), 503, "server_error", None),
        (UpstreamError(FailureClass.SERVER_ERROR, "500", upstream="u"), 502, "server_error", None),
        (HotspareError("?"), 500, "server_error", None),
    ],
)
def test_openai_shapes(error: HotspareError, status: int, kind: str, code: str | None) -> None:
    reply = error_reply(error, OPENAI, "chatcmpl-1")
    param = error.param if isinstance(error, InvalidRequest) else None
    assert reply.status == status
    assert reply.body == {"error": {"message": error.message, "type": kind, "param": param, "code": code}}


@pytest.mark.parametrize(
    ("error", "status", "kind"),
    [
        (InvalidRequest("bad", "max_tokens"), 400, "invalid_request_error"),
        (ContextOverflow(9000, 8192), 400, "invalid_request_error"),
        (AuthenticationFailed("who"), 401, "authentication_error"),
        (NotFound("no such model"), 404, "not_found_error"),
        (Overloaded("busy"), 529, "overloaded_error"),
        (BackendUnavailable("loading"), 503, "api_error"),
        (ModelError("corrupt"), 503, "api_error"),
        (UpstreamError(FailureClass.SERVER_ERROR, "500", upstream="u"), 502, "api_error"),
        (HotspareError("?"), 500, "api_error"),
    ],
)
def test_anthropic_shapes(error: HotspareError, status: int, kind: str) -> None:
    reply = error_reply(error, ANTHROPIC, "req_1")
    assert reply.status == status
    assert reply.body == {
        "type": "error",
        "error": {"type": kind, "message": error.message},
        "request_id": "req_1",
    }


def test_context_overflow_names_the_limit() -> None:
    assert "at most 8192 tokens" in error_reply(ContextOverflow(9000, 8192), OPENAI).body["error"]["message"]


@pytest.mark.parametrize(("retry_after_s", "header"), [(0.2, "1"), (1.0, "1"), (2.5, "3")])
def test_overloaded_says_when_to_retry_in_whole_seconds(retry_after_s: float, header: str) -> None:
    for api in (OPENAI, ANTHROPIC):
        assert error_reply(Overloaded("busy", retry_after_s), api).headers == {"retry-after": header}


def test_errors_without_a_retry_hint_have_no_retry_header() -> None:
    assert error_reply(BackendUnavailable("down"), OPENAI).headers == {}


def test_an_upstream_client_fault_goes_back_unchanged() -> None:
    body = b'{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long"}}'
    error = UpstreamError(FailureClass.CLIENT_FAULT, "400", upstream="anthropic", status=400, body=body)
    response = error_response(error, ANTHROPIC)
    assert (response.status_code, response.body) == (400, body)


def test_other_upstream_failures_are_ours_to_shape() -> None:
    error = UpstreamError(FailureClass.OVERLOADED, "529", upstream="anthropic", status=529, retry_after_s=4)
    response = error_response(error, ANTHROPIC, "req_9")
    assert response.status_code == 502
    assert response.headers["retry-after"] == "4"
    assert json.loads(bytes(response.body))["error"]["type"] == "api_error"
