"""The routes in front of a scripted backend, driven by the official SDKs and by raw HTTP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import openai
import pytest
from starlette.testclient import TestClient

from hotspare.core.errors import BackendUnavailable, ContextOverflow, HotspareError, Overloaded
from hotspare.core.types import ChatRequest, FinishReason, Message, Role, StreamEvent, TextDelta

from .conftest import MakeClient
from .fakes import MODEL, FakeBackend, answer, finish

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {"model": "claude-haiku-4-5", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}


def sse_data(body: str) -> list[Any]:
    """The `data:` payloads of an SSE body, JSON-decoded (except [DONE])."""
    payloads = [line.removeprefix("data: ") for line in body.splitlines() if line.startswith("data: ")]
    return [payload if payload == "[DONE]" else json.loads(payload) for payload in payloads]


def sse_event_names(body: str) -> list[str]:
    return [line.removeprefix("event: ") for line in body.splitlines() if line.startswith("event: ")]


# --- OpenAI --------------------------------------------------------------------------------------


def test_openai_sdk_gets_the_answer_and_the_model_that_gave_it(
    openai_client: openai.OpenAI, backend: FakeBackend
) -> None:
    completion = openai_client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}],
        max_tokens=8,
        stop=["\n"],
        temperature=0.5,
        seed=1,
    )
    assert completion.choices[0].message.content == "Hello world"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == MODEL
    assert completion.id.startswith("chatcmpl-")
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (7, 2)
    (request,) = backend.requests
    assert request.model == "gpt-4o"
    assert request.messages == (Message(Role.SYSTEM, "s"), Message(Role.USER, "hi"))
    assert (request.sampling.max_tokens, request.sampling.stop, request.sampling.seed) == (8, ("\n",), 1)


def test_openai_sdk_streams_role_deltas_finish_and_usage(openai_client: openai.OpenAI) -> None:
    chunks = list(
        openai_client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert [c.choices[0].delta.role if c.choices else None for c in chunks] == [
        "assistant",
        None,
        None,
        None,
        None,
    ]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello world"
    assert [c.choices[0].finish_reason if c.choices else "-" for c in chunks] == [
        None,
        None,
        None,
        "stop",
        "-",
    ]
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 9
    assert {c.id for c in chunks} == {chunks[0].id}


def test_openai_raw_stream_ends_with_done(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    data = sse_data(response.text)
    assert data[-1] == "[DONE]"
    assert all("usage" not in chunk for chunk in data[:-1])


@pytest.mark.parametrize(
    ("reason", "wire"), [(FinishReason.LENGTH, "length"), (FinishReason.STOP_SEQUENCE, "stop")]
)
def test_openai_finish_reasons(make_client: MakeClient, reason: FinishReason, wire: str) -> None:
    client = make_client(FakeBackend(events=answer("x", end=finish(reason))))
    assert client.post("/v1/chat/completions", json=CHAT).json()["choices"][0]["finish_reason"] == wire


# --- Anthropic -----------------------------------------------------------------------------------


def test_anthropic_sdk_gets_the_answer_and_the_model_that_gave_it(
    anthropic_client: anthropic.Anthropic, backend: FakeBackend
) -> None:
    message = anthropic_client.messages.create(
        model="claude-haiku-4-5",
        max_tokens=16,
        system="s",
        messages=[{"role": "user", "content": "hi"}],
        stop_sequences=["END"],
        metadata={"user_id": "u"},
        extra_body={"top_k": 5, "temperature": 0.2},
    )
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "Hello world"  # type: ignore[union-attr]
    assert (message.stop_reason, message.stop_sequence, message.model) == ("end_turn", None, MODEL)
    assert (message.usage.input_tokens, message.usage.output_tokens) == (7, 2)
    assert message.id.startswith("msg_")
    (request,) = backend.requests
    assert request.messages == (Message(Role.SYSTEM, "s"), Message(Role.USER, "hi"))
    assert (request.sampling.stop, request.sampling.top_k) == (("END",), 5)


def test_anthropic_sdk_streams_the_full_event_sequence(anthropic_client: anthropic.Anthropic) -> None:
    with anthropic_client.messages.stream(
        model="claude-haiku-4-5", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        names = [event.type for event in stream]
        message = stream.get_final_message()
    assert names == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "text",
        "content_block_delta",
        "text",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert message.content[0].text == "Hello world"  # type: ignore[union-attr]
    assert (message.stop_reason, message.usage.input_tokens, message.usage.output_tokens) == (
        "end_turn",
        7,
        2,
    )


def test_anthropic_raw_stream_has_pings_and_the_prompt_size_up_front(client: TestClient) -> None:
    response = client.post("/v1/messages", json={**MESSAGES, "stream": True})
    assert response.status_code == 200
    assert sse_event_names(response.text) == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    data = sse_data(response.text)
    assert data[0]["message"]["usage"]["input_tokens"] == 7
    assert data[6] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {
            "input_tokens": 7,
            "output_tokens": 2,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


def test_anthropic_stop_sequence_is_reported(make_client: MakeClient) -> None:
    backend = FakeBackend(events=answer("x", end=finish(FinishReason.STOP_SEQUENCE, stop_sequence="END")))
    body = make_client(backend).post("/v1/messages", json=MESSAGES).json()
    assert (body["stop_reason"], body["stop_sequence"]) == ("stop_sequence", "END")


def test_anthropic_max_tokens_cut_off(make_client: MakeClient) -> None:
    backend = FakeBackend(events=answer("x", end=finish(FinishReason.LENGTH)))
    assert make_client(backend).post("/v1/messages", json=MESSAGES).json()["stop_reason"] == "max_tokens"


def test_count_tokens(anthropic_client: anthropic.Anthropic) -> None:
    count = anthropic_client.messages.count_tokens(
        model="claude-haiku-4-5", messages=[{"role": "user", "content": "hi"}]
    )
    assert count.input_tokens == 7


@pytest.mark.parametrize(
    "headers",
    [{"x-api-key": "k"}, {"authorization": "Bearer k"}, {"anthropic-beta": "whatever-2025-01-01"}, {}],
)
def test_anthropic_keys_and_beta_headers_are_accepted(client: TestClient, headers: dict[str, str]) -> None:
    response = client.post(
        "/v1/messages?beta=true", json=MESSAGES, headers={"anthropic-version": "2023-06-01", **headers}
    )
    assert response.status_code == 200
    assert response.headers["request-id"].startswith("req_")


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("error", "openai_status", "anthropic_status", "anthropic_type"),
    [
        (ContextOverflow(9000, 8192), 400, 400, "invalid_request_error"),
        (Overloaded("the local engine is busy", retry_after_s=2), 429, 529, "overloaded_error"),
        (BackendUnavailable("the local model is not loaded"), 503, 503, "api_error"),
    ],
)
def test_backend_refusals_are_http_errors_in_each_shape(
    make_client: MakeClient,
    error: HotspareError,
    openai_status: int,
    anthropic_status: int,
    anthropic_type: str,
    stream: bool,
) -> None:
    client = make_client(FakeBackend(error=error))
    response = client.post("/v1/chat/completions", json={**CHAT, "stream": stream})
    assert response.status_code == openai_status
    assert response.json()["error"]["message"] == error.message
    response = client.post("/v1/messages", json={**MESSAGES, "stream": stream})
    assert response.status_code == anthropic_status
    body = response.json()
    assert body["type"] == "error"
    assert body["error"] == {"type": anthropic_type, "message": error.message}
    assert body["request_id"] == response.headers["request-id"]
    if isinstance(error, Overloaded):
        assert response.headers["retry-after"] == "2"


def test_openai_sdk_raises_the_matching_errors(make_client: MakeClient) -> None:
    client = make_client(FakeBackend(error=Overloaded("busy", retry_after_s=1)))
    sdk = openai.OpenAI(base_url="http://localhost/v1", api_key="x", http_client=client, max_retries=0)
    with pytest.raises(openai.RateLimitError):
        sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="tool_choice"):
        sdk.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], extra_body={"tool_choice": "maybe"}
        )


def test_anthropic_sdk_raises_the_matching_errors(make_client: MakeClient) -> None:
    client = make_client(FakeBackend(error=Overloaded("busy")))
    sdk = anthropic.Anthropic(base_url="http://localhost", api_key="x", http_client=client, max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as caught:
        sdk.messages.create(model="m", max_tokens=4, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 529
    with pytest.raises(
        anthropic.BadRequestError, match="max_tokens: Input should be greater than or equal to 1"
    ):
        sdk.messages.create(model="m", max_tokens=0, messages=[{"role": "user", "content": "hi"}])


class FailsMidStream(FakeBackend):
    async def stream(self, request):  # type: ignore[no-untyped-def]
        yield TextDelta("partial")
        raise BackendUnavailable("the local engine process died; it is being restarted")


def test_an_error_after_the_stream_began_is_an_in_band_event(make_client: MakeClient) -> None:
    client = make_client(FailsMidStream())
    data = sse_data(client.post("/v1/chat/completions", json={**CHAT, "stream": True}).text)
    assert data[-1] == {
        "error": {
            "message": "the local engine process died; it is being restarted",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }
    response = client.post("/v1/messages", json={**MESSAGES, "stream": True})
    assert sse_event_names(response.text)[-1] == "error"
    assert sse_data(response.text)[-1]["error"]["type"] == "api_error"
    sdk = openai.OpenAI(base_url="http://localhost/v1", api_key="x", http_client=client, max_retries=0)
    with pytest.raises(openai.APIError, match="being restarted"):
        list(
            sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True)
        )


@pytest.mark.parametrize(
    ("path", "raw", "message"),
    [
        ("/v1/chat/completions", b"{oops", "the request body is not valid JSON (line 1, column 2)"),
        ("/v1/chat/completions", b'{"model": "m"}', "messages: field required"),
        ("/v1/chat/completions", b'{"model": 5, "messages": []}', "model: Input should be a valid string"),
        ("/v1/messages", b"[]", "the request body must be a JSON object, not an array"),
        (
            "/v1/messages",
            b'{"model": "m", "messages": [{"role": "user", "content": "x"}]}',
            "max_tokens: field required",
        ),
        ("/v1/messages/count_tokens", b'{"model": "m"}', "messages: field required"),
    ],
)
def test_malformed_requests_are_400_in_the_callers_shape(
    client: TestClient, path: str, raw: bytes, message: str
) -> None:
    response = client.post(path, content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400
    body = response.json()
    if path.startswith("/v1/messages"):
        assert body["error"] == {"type": "invalid_request_error", "message": message}
    else:
        assert body["error"]["message"] == message
        assert body["error"]["type"] == "invalid_request_error"
        assert body["error"]["param"] == (message.split(":")[0] if ":" in message else None)


@pytest.mark.parametrize(
    ("method", "path", "status", "shape"),
    [
        ("POST", "/v1/completions", 404, "openai"),
        ("GET", "/nothing/here", 404, "openai"),
        ("POST", "/v1/messages/batches", 404, "anthropic"),
        ("GET", "/v1/messages", 405, "anthropic"),
        ("GET", "/v1/chat/completions", 405, "openai"),
    ],
)
def test_unknown_routes_answer_in_the_callers_shape(
    client: TestClient, method: str, path: str, status: int, shape: str
) -> None:
    response = client.request(method, path)
    assert response.status_code == status
    body = response.json()
    if shape == "anthropic":
        kind = "not_found_error" if status == 404 else "invalid_request_error"
        assert body["type"] == "error" and body["error"]["type"] == kind
    else:
        assert set(body["error"]) == {"message", "type", "param", "code"}
    assert path in (body["error"]["message"])


# --- model names ---------------------------------------------------------------------------------


def test_any_model_name_is_served_by_default(client: TestClient) -> None:
    for name in ("gpt-4o", "claude-opus-4-1", "anything"):
        assert client.post("/v1/chat/completions", json={**CHAT, "model": name}).json()["model"] == MODEL


def test_an_allowlist_refuses_other_names_in_each_shape(
    make_client: MakeClient, backend: FakeBackend
) -> None:
    client = make_client(backend, allowed_models=("gpt-4o", "claude-haiku-4-5"))
    assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
    assert client.post("/v1/messages", json=MESSAGES).status_code == 200
    assert (
        client.post("/v1/chat/completions", json={**CHAT, "model": "smollm2-135m-instruct"}).status_code
        == 200
    )
    refused = client.post("/v1/chat/completions", json={**CHAT, "model": "gpt-5"})
    assert refused.status_code == 404
    assert refused.json()["error"]["type"] == "invalid_request_error"
    assert "'gpt-5' is not served here" in refused.json()["error"]["message"]
    count_body = {"model": "claude-3-haiku", "messages": MESSAGES["messages"]}
    for path, body in (
        ("/v1/messages", {**MESSAGES, "model": "claude-3-haiku"}),
        ("/v1/messages/count_tokens", count_body),
    ):
        refused = client.post(path, json=body)
        assert refused.status_code == 404
        assert refused.json()["error"]["type"] == "not_found_error"
    assert len(backend.requests) == 3
    models = openai.OpenAI(base_url="http://localhost/v1", api_key="x", http_client=client).models.list()
    assert [model.id for model in models] == ["smollm2-135m-instruct", "gpt-4o", "claude-haiku-4-5"]
    assert client.get("/v1/models/gpt-5").status_code == 404


def test_models_in_both_shapes(client: TestClient) -> None:
    models = openai.OpenAI(base_url="http://localhost/v1", api_key="x", http_client=client).models.list()
    assert [(model.id, model.object, model.owned_by) for model in models] == [
        ("smollm2-135m-instruct", "model", "hotspare")
    ]
    page = anthropic.Anthropic(base_url="http://localhost", api_key="x", http_client=client).models.list()
    assert [(model.id, model.type) for model in page.data] == [("smollm2-135m-instruct", "model")]
    assert client.get("/v1/models/gpt-4o").json()["id"] == "gpt-4o"


# --- health and readiness ------------------------------------------------------------------------


def test_health_and_ready(client: TestClient, backend: FakeBackend) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"status": "ready", "model": "smollm2-135m-instruct"}
    backend.is_ready = False
    assert client.get("/ready").status_code == 503


def test_while_loading_ready_is_503_and_chats_get_503_in_shape(make_client: MakeClient) -> None:
    client = make_client(None)
    assert client.get("/health").status_code == 200
    assert (client.get("/ready").status_code, client.get("/ready").json()) == (503, {"status": "loading"})
    response = client.post("/v1/messages", json=MESSAGES)
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "api_error"
    assert "still loading" in response.json()["error"]["message"]
    assert client.post("/v1/chat/completions", json=CHAT).json()["error"]["type"] == "server_error"


# --- keep-alives ---------------------------------------------------------------------------------


def test_long_gaps_get_pings_and_keep_alive_comments(make_client: MakeClient) -> None:
    client = make_client(FakeBackend(gap_s=0.3), heartbeat_s=0.05)
    names = sse_event_names(client.post("/v1/messages", json={**MESSAGES, "stream": True}).text)
    assert names.count("ping") >= 3
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert names.count("content_block_delta") == 2
    text = client.post("/v1/chat/completions", json={**CHAT, "stream": True}).text
    assert text.count(": keep-alive\n\n") >= 3
    assert sse_data(text)[-1] == "[DONE]"


class BreaksMidStream(FakeBackend):
    async def stream(self, request):  # type: ignore[no-untyped-def]
        yield TextDelta("partial")
        raise RuntimeError("a bug")


def test_a_bug_after_the_stream_began_still_ends_it_with_an_error_event(make_client: MakeClient) -> None:
    client = make_client(BreaksMidStream())
    data = sse_data(client.post("/v1/chat/completions", json={**CHAT, "stream": True}).text)
    assert data[-1]["error"]["message"] == "internal error: RuntimeError"
    data = sse_data(client.post("/v1/messages", json={**MESSAGES, "stream": True}).text)
    assert data[-1] == {
        "type": "error",
        "error": {"type": "api_error", "message": "internal error: RuntimeError"},
    }


class SlowStart(FakeBackend):
    """A backend whose first event takes a while (a long prompt on a busy machine)."""

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        await asyncio.sleep(0.3)
        async for event in super().stream(request):
            yield event


def test_a_slow_first_event_does_not_hold_back_the_stream_headers(make_client: MakeClient) -> None:
    client = make_client(SlowStart(), heartbeat_s=0.05)
    names = sse_event_names(client.post("/v1/messages", json={**MESSAGES, "stream": True}).text)
    assert names[:2] == ["message_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    text = client.post("/v1/chat/completions", json={**CHAT, "stream": True}).text
    assert ": keep-alive\n\n" in text and sse_data(text)[-1] == "[DONE]"
