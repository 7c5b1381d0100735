"""The real `hotspare serve` on the embedded model, driven by the official SDKs and by raw HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from hotspare.models.catalog import DEFAULT_MODEL
from tests.serving import RunningServer

pytestmark = pytest.mark.real  # `hotspare serve` as a subprocess (see tests/conftest.py)

PROMPT = "Write a short poem about the sea."
COUNTING = "Count from 1 to 50, separated by commas."
TIMEOUT_S = 120.0
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def oai(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0, timeout=TIMEOUT_S)


@pytest.fixture(scope="module")
def claude(server: RunningServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key="x", max_retries=0, timeout=TIMEOUT_S)


@pytest.fixture
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=TIMEOUT_S) as client:
        yield client


def user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


# --- OpenAI --------------------------------------------------------------------------------------


def test_openai_answers_with_the_local_model(oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(
        model="gpt-4o", messages=user(PROMPT), max_tokens=12, temperature=0
    )
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert completion.model == DEFAULT_MODEL
    assert completion.usage is not None
    assert 1 <= completion.usage.completion_tokens <= 12
    assert (
        completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    )


def test_openai_stream_has_role_text_finish_usage_and_done(oai: openai.OpenAI) -> None:
    chunks = list(
        oai.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "developer", "content": "Be brief."}, *user(PROMPT)],
            max_completion_tokens=10,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishes) == 1 and finishes[0] in ("stop", "length")
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and 1 <= chunks[-1].usage.completion_tokens <= 10
    assert {c.model for c in chunks} == {DEFAULT_MODEL}


def test_openai_raw_stream_ends_with_done(http: httpx.Client) -> None:
    body = {"model": "m", "messages": user(PROMPT), "max_tokens": 4, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        lines = [line for line in response.iter_lines() if line]
    assert response.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]"


def test_openai_max_tokens_cut_off(oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(
        model="gpt-4o", messages=user(COUNTING), max_tokens=3, temperature=0
    )
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 3


def test_openai_stop_sequence_ends_the_answer_before_it(oai: openai.OpenAI) -> None:
    free = oai.chat.completions.create(model="m", messages=user(COUNTING), max_tokens=16, temperature=0)
    text = free.choices[0].message.content or ""
    assert len(text) >= 6, text
    stop = text[3:6]
    stopped = oai.chat.completions.create(
        model="m", messages=user(COUNTING), max_tokens=16, temperature=0, stop=[stop, "never-seen-###"]
    )
    content = stopped.choices[0].message.content or ""
    assert stopped.choices[0].finish_reason == "stop"
    assert stop not in content
    assert text.startswith(content)


# --- Anthropic -----------------------------------------------------------------------------------


def test_anthropic_answers_with_the_local_model(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model="claude-haiku-4-5", max_tokens=12, system="You are terse.", messages=user(PROMPT)
    )
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.model == DEFAULT_MODEL
    assert 1 <= message.usage.output_tokens <= 12


def test_anthropic_stream_sends_the_full_event_sequence(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model="claude-haiku-4-5",
        max_tokens=8,
        system=[{"type": "text", "text": "You are terse."}],
        messages=user(PROMPT),
    ) as stream:
        kinds = [event.type for event in stream]
        message = stream.get_final_message()
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert "content_block_delta" in kinds
    assert message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert 1 <= message.usage.output_tokens <= 8


def test_anthropic_raw_stream_pings_after_the_block_starts(http: httpx.Client) -> None:
    body = {"model": "m", "max_tokens": 3, "messages": user(PROMPT), "stream": True}
    with http.stream("POST", "/v1/messages", json=body, headers={"x-api-key": "k"}) as response:
        events = [
            line.removeprefix("event: ") for line in response.iter_lines() if line.startswith("event: ")
        ]
    assert events[:3] == ["message_start", "content_block_start", "ping"]
    assert events[-1] == "message_stop"


def test_anthropic_max_tokens_cut_off(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(model="claude-haiku-4-5", max_tokens=3, messages=user(COUNTING))
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 3


def test_anthropic_stop_sequence_is_reported(claude: anthropic.Anthropic) -> None:
    free = claude.messages.create(
        model="claude-haiku-4-5", max_tokens=16, messages=user(COUNTING), extra_body={"temperature": 0}
    )
    text = free.content[0].text  # type: ignore[union-attr]
    assert len(text) >= 6, text
    stop = text[3:6]
    stopped = claude.messages.create(
        model="claude-haiku-4-5",
        max_tokens=16,
        messages=user(COUNTING),
        stop_sequences=[stop],
        extra_body={"temperature": 0},
    )
    assert (stopped.stop_reason, stopped.stop_sequence) == ("stop_sequence", stop)
    assert text.startswith(stopped.content[0].text)  # type: ignore[union-attr]


def test_usage_counts_agree_with_count_tokens(claude: anthropic.Anthropic, oai: openai.OpenAI) -> None:
    messages = user("How many legs does a spider have?")
    counted = claude.messages.count_tokens(model="claude-haiku-4-5", messages=messages).input_tokens
    assert counted > 5
    message = claude.messages.create(model="claude-haiku-4-5", max_tokens=2, messages=messages)
    usage = message.usage
    assert (usage.input_tokens or 0) + (usage.cache_read_input_tokens or 0) == counted
    completion = oai.chat.completions.create(model="gpt-4o", messages=messages, max_tokens=2)
    assert completion.usage is not None and completion.usage.prompt_tokens == counted


def test_both_ways_of_sending_an_anthropic_key_work(server: RunningServer) -> None:
    by_header = anthropic.Anthropic(base_url=server.base_url, api_key="k", max_retries=0)
    by_bearer = anthropic.Anthropic(base_url=server.base_url, auth_token="k", max_retries=0)
    for client in (by_header, by_bearer):
        message = client.messages.create(model="claude-haiku-4-5", max_tokens=2, messages=user("Hi"))
        assert message.usage.output_tokens >= 1


def test_a_huge_max_tokens_is_clamped_not_refused(http: httpx.Client) -> None:
    """Clients written for the cloud ask for far more than fits; the first text arrives, and leaving
    early cancels the rest."""
    for path, body in (
        ("/v1/messages", {"model": "m", "max_tokens": 128_000, "messages": user(COUNTING), "stream": True}),
        (
            "/v1/chat/completions",
            {"model": "m", "max_tokens": 128_000, "messages": user(COUNTING), "stream": True},
        ),
    ):
        with http.stream("POST", path, json=body) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if '"text_delta"' in line or ('"content":"' in line and '"content":""' not in line):
                    break


# --- bad input -----------------------------------------------------------------------------------

TOO_LONG = "word " * 9000  # beyond the embedded model's 8192-token context


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "the request body is not valid JSON (line 1, column 2)"),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', "model: field required"),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}',
            "max_tokens: Input should be greater than or equal to 1",
        ),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "8"}',
            "max_tokens: Input should be a valid integer",
        ),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 0}',
            "n: Input should be greater than or equal to 1",
        ),
    ],
)
def test_openai_bad_input_is_400_with_the_field(http: httpx.Client, raw: bytes, message: str) -> None:
    response = http.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == message
    assert response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "the request body is not valid JSON (line 1, column 2)"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}', "max_tokens: field required"),
        (
            b'{"model": "m", "max_tokens": -3, "messages": [{"role": "user", "content": "hi"}]}',
            "max_tokens: Input should be greater than or equal to 1",
        ),
        (b'{"model": "m", "max_tokens": 4, "messages": "hi"}', "messages: Input should be a valid list"),
    ],
)
def test_anthropic_bad_input_is_400_with_the_field(http: httpx.Client, raw: bytes, message: str) -> None:
    response = http.post("/v1/messages", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400
    body = response.json()
    assert body["type"] == "error"
    assert body["error"] == {"type": "invalid_request_error", "message": message}
    assert body["request_id"] == response.headers["request-id"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_prompt_longer_than_the_context_is_400_naming_the_limit(
    oai: openai.OpenAI, claude: anthropic.Anthropic, stream: bool
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        oai.chat.completions.create(model="gpt-4o", messages=user(TOO_LONG), max_tokens=4, stream=stream)
    assert "8192 tokens" in refused.value.message
    assert refused.value.code == "context_length_exceeded"
    with pytest.raises(anthropic.BadRequestError) as rejected:
        claude.messages.create(model="claude-haiku-4-5", max_tokens=4, messages=user(TOO_LONG), stream=stream)
    assert "8192 tokens" in rejected.value.message


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/v1/embeddings", 404),
        ("GET", "/v1/nothing", 404),
        ("POST", "/v1/messages/batches", 404),
        ("GET", "/v1/messages", 405),
    ],
)
def test_unknown_routes_in_the_callers_shape(http: httpx.Client, method: str, path: str, status: int) -> None:
    response = http.request(method, path)
    assert response.status_code == status
    body = response.json()
    if path.startswith("/v1/messages"):
        assert body["type"] == "error" and body["error"]["type"] in (
            "not_found_error",
            "invalid_request_error",
        )
    else:
        assert body["error"]["type"] == "invalid_request_error" and path in body["error"]["message"]


# --- operations ----------------------------------------------------------------------------------


def test_health_ready_and_models(http: httpx.Client, oai: openai.OpenAI) -> None:
    assert http.get("/health").json() == {"status": "ok"}
    assert http.get("/ready").json() == {"status": "ready", "model": DEFAULT_MODEL}
    assert [model.id for model in oai.models.list()] == [DEFAULT_MODEL]
