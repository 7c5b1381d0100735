"""The local path is liberal: the official SDKs' tool loops, which send the SDK's own response objects
back (fields and all), are served; unknown fields are ignored, logged once and counted."""

from __future__ import annotations

import logging
from typing import Any

import anthropic
import openai
import pytest

from hotspare.core.types import FinishReason, Role, StreamEvent, ToolCallDelta, ToolCallStart

from .conftest import MakeClient
from .fakes import FakeBackend, answer, finish

CALL: list[StreamEvent] = [
    ToolCallStart(0, "call_a", "get_weather"),
    ToolCallDelta(0, '{"city": "Paris"}'),
    finish(FinishReason.TOOL_CALLS, output_tokens=9),
]
ANTHROPIC_TOOLS: list[anthropic.types.ToolParam] = [
    {"name": "get_weather", "description": "Weather.", "input_schema": {"type": "object"}}
]
OPENAI_TOOLS: list[openai.types.chat.ChatCompletionToolParam] = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
]


def test_the_anthropic_tool_loop_passes_response_content_back(make_client: MakeClient) -> None:
    """anthropic 2.16's ToolUseBlock has `toolset_name` (and `caller`): a program that passes
    `response.content` back sends them. hotspare used to answer 400 `...toolset_name: unknown field`."""
    backend = FakeBackend(events=CALL)
    client = anthropic.Anthropic(
        base_url="http://localhost", api_key="x", http_client=make_client(backend), max_retries=0
    )
    first = client.messages.create(
        model="fake-model",
        max_tokens=32,
        tools=ANTHROPIC_TOOLS,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    )
    (use,) = first.content
    assert isinstance(use, anthropic.types.ToolUseBlock)
    # As 2.16 builds it from a stream or a server that names the toolset: every field set.
    content = [use.model_copy(update={"toolset_name": None, "caller": None})]
    backend.events = answer("Sunny.")
    second = client.messages.create(
        model="fake-model",
        max_tokens=32,
        tools=ANTHROPIC_TOOLS,
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": content},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "Sunny"}]},
        ],
    )
    assert second.content[0].type == "text" and second.content[0].text == "Sunny."
    sent = backend.requests[-1].messages
    assert [m.role for m in sent] == [Role.USER, Role.ASSISTANT, Role.TOOL]
    assert sent[1].tool_calls[0].name == "get_weather" and sent[2].content == "Sunny"


def test_the_openai_tool_loop_passes_the_message_back(make_client: MakeClient) -> None:
    backend = FakeBackend(events=CALL)
    client = openai.OpenAI(
        base_url="http://localhost/v1", api_key="x", http_client=make_client(backend), max_retries=0
    )
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    first = client.chat.completions.create(model="fake-model", tools=OPENAI_TOOLS, messages=messages)
    message = first.choices[0].message
    (call,) = message.tool_calls or ()
    # Every field of the SDK's message set, as a newer server (or SDK) fills them.
    echoed = message.model_copy(update={"annotations": [], "audio": None, "refusal": None})
    backend.events = answer("Sunny.")
    second = client.chat.completions.create(
        model="fake-model",
        tools=OPENAI_TOOLS,
        messages=[*messages, echoed, {"role": "tool", "tool_call_id": call.id, "content": "Sunny"}],
    )
    assert second.choices[0].message.content == "Sunny."
    assert [m.role for m in backend.requests[-1].messages] == [Role.USER, Role.ASSISTANT, Role.TOOL]


@pytest.mark.parametrize(
    ("path", "body", "part"),
    [
        (
            "/v1/chat/completions",
            {"model": "fake-model", "messages": [{"role": "user", "content": "hi", "shiny": 1}]},
            "UserMessage",
        ),
        (
            "/v1/messages",
            {
                "model": "fake-model",
                "max_tokens": 8,
                "messages": [{"role": "user", "content": "hi"}],
                "shiny": 1,
            },
            "MessagesRequest",
        ),
    ],
)
def test_unknown_fields_are_logged_once_and_counted(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture, path: str, body: dict[str, Any], part: str
) -> None:
    http = make_client(FakeBackend())
    with caplog.at_level(logging.DEBUG, logger="hotspare.api.unknown_fields"):
        for _ in range(3):
            assert http.post(path, json=body).status_code == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "hotspare.api.unknown_fields"]
    assert len(lines) == 1 and "'shiny'" in lines[0]
    api = "openai_chat" if path.endswith("completions") else "anthropic_messages"
    metrics = http.get("/metrics").text
    assert f'hotspare_unknown_fields_total{{api="{api}",part="{part}"}} 3.0' in metrics


def test_wrong_types_of_fields_hotspare_reads_are_still_refused(make_client: MakeClient) -> None:
    http = make_client(FakeBackend())
    response = http.post(
        "/v1/messages",
        json={"model": "fake-model", "max_tokens": "8", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert response.status_code == 400
    assert response.json()["error"] == {
        "type": "invalid_request_error",
        "message": "max_tokens: Input should be a valid integer",
    }
