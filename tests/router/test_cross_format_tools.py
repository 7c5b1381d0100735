"""Tool calls across formats through `hotspare serve --config` (real subprocess) in front of the fake
providers, driven by the official SDKs: an Anthropic client with tools served by the OpenAI-kind
upstream, and an OpenAI client with tools served by the Anthropic one. The tools, the tool choice and
earlier calls and results reach the upstream in its own format; its tool calls reach the client in
the client's (`tool_use` blocks / `tool_calls`), streamed and not. A client's own key goes only to
its own vendor, so these upstreams have an operator key (`env:`), holding the same value here."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from tests.fakes.serve_config import serving, upstream_table
from tests.fakes.upstreams import Behavior, FakeUpstream
from tests.sdk_clients import anthropic_client, openai_client
from tests.serving import RunningServer

pytestmark = pytest.mark.real  # `hotspare serve` as a subprocess (see tests/conftest.py)

CONFIG = (
    """
mode = "auto"
[local]
hedge = false
[early_warning]
enabled = false

"""
    # crossed on purpose: claude-* names go to the OpenAI-kind upstream, gpt-* to the Anthropic one
    + upstream_table("anth", "anthropic", "{anthropic}", ["gpt-*"], api_key="env:HS_CROSS_KEY")
    + upstream_table("oai", "openai", "{openai}", ["claude-*"], api_key="env:HS_CROSS_KEY")
)
KEY = "sk-test-client"
SCHEMA: dict[str, Any] = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
CALL = Behavior(deltas=("Let me", " check."), tool_call=("get_weather", '{"city": "Oslo"}'))


@pytest.fixture(scope="module")
def hotspare(
    anthropic_server: FakeUpstream, openai_server: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    config = CONFIG.format(anthropic=anthropic_server.url, openai=openai_server.url)
    os.environ["HS_CROSS_KEY"] = KEY
    try:
        with serving(config, tmp_path_factory.mktemp("cross-tools")) as running:
            yield running
    finally:
        del os.environ["HS_CROSS_KEY"]


ANTHROPIC_TOOLS: list[anthropic.types.ToolParam] = [
    {"name": "get_weather", "description": "The weather in a city.", "input_schema": SCHEMA}
]
OPENAI_TOOLS: list[openai.types.chat.ChatCompletionToolParam] = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "The weather in a city.", "parameters": SCHEMA},
    }
]


def test_an_anthropic_client_gets_tool_use_from_an_openai_upstream(
    hotspare: RunningServer, openai_fake: FakeUpstream
) -> None:
    openai_fake.script(CALL)
    raw = anthropic_client(hotspare, KEY).messages.with_raw_response.create(
        model="claude-x",
        max_tokens=64,
        tools=ANTHROPIC_TOOLS,
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        messages=[{"role": "user", "content": "Weather in Oslo?"}],
    )
    assert raw.headers["x-hotspare-backend"] == "oai"
    message = raw.parse()
    assert message.stop_reason == "tool_use"
    text, use = message.content
    assert isinstance(text, anthropic.types.TextBlock) and text.text == "Let me check."
    assert isinstance(use, anthropic.types.ToolUseBlock)
    assert (use.id, use.name, use.input) == ("call_fake01", "get_weather", {"city": "Oslo"})
    (sent,) = openai_fake.attempts()
    assert sent.body is not None
    assert sent.body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city.",
                "parameters": SCHEMA,
            },
        }
    ]
    assert (sent.body["tool_choice"], sent.body["parallel_tool_calls"]) == ("required", False)


def test_an_anthropic_tool_result_reaches_an_openai_upstream_as_a_tool_message(
    hotspare: RunningServer, openai_fake: FakeUpstream
) -> None:
    claude = anthropic_client(hotspare, KEY)
    with claude.messages.stream(
        model="claude-x",
        max_tokens=64,
        tools=ANTHROPIC_TOOLS,
        messages=[
            {"role": "user", "content": "Weather in Oslo?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "12 C, rain"},
                    {"type": "text", "text": "Summarise."},
                ],
            },
        ],
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert (text, final.stop_reason) == ("Hello from the fake upstream.", "end_turn")
    body = openai_fake.attempts()[-1].body
    assert body is not None and "tool_choice" not in body
    assert body["messages"] == [
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "12 C, rain"},
        {"role": "user", "content": "Summarise."},
    ]


def test_an_openai_client_gets_tool_calls_from_an_anthropic_upstream(
    hotspare: RunningServer, anthropic_fake: FakeUpstream
) -> None:
    anthropic_fake.script(CALL, CALL)
    gpt = openai_client(hotspare, KEY)
    completion = gpt.chat.completions.create(
        model="gpt-x",
        max_tokens=64,
        tools=OPENAI_TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        messages=[{"role": "user", "content": "Weather in Oslo?"}],
    )
    choice = completion.choices[0]
    assert (choice.finish_reason, choice.message.content) == ("tool_calls", "Let me check.")
    assert choice.message.tool_calls is not None
    (call,) = choice.message.tool_calls
    assert isinstance(call, openai.types.chat.ChatCompletionMessageFunctionToolCall)
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
        "toolu_fake01",
        "get_weather",
        {"city": "Oslo"},
    )
    sent = anthropic_fake.attempts()[-1].body
    assert sent is not None
    assert sent["tools"] == [
        {"name": "get_weather", "description": "The weather in a city.", "input_schema": SCHEMA}
    ]
    assert sent["tool_choice"] == {"type": "tool", "name": "get_weather"}
    stream = gpt.chat.completions.create(
        model="gpt-x",
        max_tokens=64,
        tools=OPENAI_TOOLS,
        stream=True,
        messages=[{"role": "user", "content": "Oslo?"}],
    )
    chunks = list(stream)
    pieces = [c.choices[0].delta.tool_calls for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert pieces[0] is not None and pieces[0][0].function is not None
    assert (pieces[0][0].id, pieces[0][0].function.name) == ("toolu_fake01", "get_weather")
    arguments = "".join(p[0].function.arguments or "" for p in pieces if p[0].function is not None)
    assert json.loads(arguments) == {"city": "Oslo"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "tool_calls"
    ]


def test_an_openai_tool_message_reaches_an_anthropic_upstream_as_a_tool_result(
    hotspare: RunningServer, anthropic_fake: FakeUpstream
) -> None:
    gpt = openai_client(hotspare, KEY)
    completion = gpt.chat.completions.create(
        model="gpt-x",
        max_tokens=64,
        tools=OPENAI_TOOLS,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Oslo?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "12 C, rain"},
        ],
    )
    assert completion.choices[0].message.content == "Hello from the fake upstream."
    body = anthropic_fake.attempts()[-1].body
    assert body is not None and body["system"] == "Be brief."
    assert body["messages"] == [
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Oslo"}}
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "12 C, rain"}],
        },
    ]


def test_a_stream_cut_after_a_tool_call_began_ends_with_an_error_not_with_text(
    hotspare: RunningServer, anthropic_fake: FakeUpstream
) -> None:
    anthropic_fake.script(Behavior(deltas=(), tool_call=("get_weather", '{"city": "Oslo"}'), cut_after=0))
    stream = openai_client(hotspare, KEY).chat.completions.create(
        model="gpt-x",
        max_tokens=16,
        tools=OPENAI_TOOLS,
        stream=True,
        messages=[{"role": "user", "content": "hi"}],
    )
    received: list[openai.types.chat.ChatCompletionChunk] = []
    with pytest.raises(openai.APIError, match="stream"):
        for chunk in stream:
            received.append(chunk)
    calls = [c.choices[0].delta.tool_calls for c in received if c.choices and c.choices[0].delta.tool_calls]
    assert len(calls) == 1  # the call's start went out; no text was made up after it
    assert not any(c.choices and c.choices[0].delta.content for c in received)
