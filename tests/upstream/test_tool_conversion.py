"""Core tool turns -> each vendor's request JSON (a cross-format upstream's body), exact assertions.
The round trip through real servers and the official SDKs is in tests/router/test_cross_format_tools.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hotspare.core.types import ChatRequest, Message, Role, ToolCall, ToolChoice, ToolChoiceMode, ToolSpec
from hotspare.upstream.anthropic import AnthropicUpstream
from hotspare.upstream.base import Upstream
from hotspare.upstream.config import UpstreamConfig
from hotspare.upstream.openai import OpenAIUpstream

TOOL = ToolSpec("get_weather", "The weather in a city.", {"type": "object"})
HISTORY = (
    Message(Role.SYSTEM, "Be brief."),
    Message(Role.USER, "Oslo and Bergen?"),
    Message(
        Role.ASSISTANT,
        "",
        tool_calls=(
            ToolCall("c1", "get_weather", '{"city":"Oslo"}'),
            ToolCall("c2", "get_weather", "not json"),
        ),
    ),
    Message(Role.TOOL, "12 C", tool_call_id="c1"),
    Message(Role.TOOL, "no such city", tool_call_id="c2", is_error=True),
    Message(Role.USER, "Thanks."),
)


def body_of(kind: str, request: ChatRequest) -> dict[str, Any]:
    config = UpstreamConfig.model_validate({"name": kind, "kind": kind, "base_url": "http://127.0.0.1:9"})
    upstream: Upstream = AnthropicUpstream(config) if kind == "anthropic" else OpenAIUpstream(config)
    try:
        return upstream.build_body(request)
    finally:
        asyncio.run(upstream.aclose())


def test_anthropic_turns_carry_tool_use_and_tool_result_blocks() -> None:
    body = body_of("anthropic", ChatRequest("m", HISTORY, tools=(TOOL,)))
    assert body["system"] == "Be brief."
    assert body["messages"] == [
        {"role": "user", "content": "Oslo and Bergen?"},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "c1", "name": "get_weather", "input": {"city": "Oslo"}},
                {"type": "tool_use", "id": "c2", "name": "get_weather", "input": {}},  # not an object
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "c1", "content": "12 C"},
                {"type": "tool_result", "tool_use_id": "c2", "content": "no such city", "is_error": True},
                {"type": "text", "text": "Thanks."},
            ],
        },
    ]
    assert body["tools"] == [
        {"name": "get_weather", "description": "The weather in a city.", "input_schema": {"type": "object"}}
    ]
    assert body["tool_choice"] == {"type": "auto"}


def test_openai_messages_carry_tool_calls_and_tool_messages() -> None:
    body = body_of("openai", ChatRequest("m", HISTORY, tools=(TOOL,), parallel_tool_calls=False))
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Oslo and Bergen?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                },
                {
                    "id": "c2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": "not json"},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "12 C"},
        {"role": "tool", "tool_call_id": "c2", "content": "Error: no such city"},
        {"role": "user", "content": "Thanks."},
    ]
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city.",
                "parameters": {"type": "object"},
            },
        }
    ]
    assert "tool_choice" not in body and body["parallel_tool_calls"] is False


@pytest.mark.parametrize(
    ("choice", "anthropic_choice", "openai_choice"),
    [
        (ToolChoice(ToolChoiceMode.NONE), {"type": "none"}, "none"),
        (ToolChoice(ToolChoiceMode.REQUIRED), {"type": "any"}, "required"),
        (
            ToolChoice(ToolChoiceMode.NAMED, "get_weather"),
            {"type": "tool", "name": "get_weather"},
            {"type": "function", "function": {"name": "get_weather"}},
        ),
    ],
)
def test_tool_choice_in_each_format(
    choice: ToolChoice, anthropic_choice: dict[str, Any], openai_choice: object
) -> None:
    request = ChatRequest("m", (Message(Role.USER, "hi"),), tools=(TOOL,), tool_choice=choice)
    assert body_of("anthropic", request)["tool_choice"] == anthropic_choice
    assert body_of("openai", request)["tool_choice"] == openai_choice


def test_a_request_without_tools_is_sent_as_before() -> None:
    turns = (Message(Role.USER, "a"), Message(Role.USER, "b"), Message(Role.ASSISTANT, "c"))
    anthropic_body = body_of("anthropic", ChatRequest("m", turns))
    assert anthropic_body["messages"] == [
        {"role": "user", "content": "a\nb"},
        {"role": "assistant", "content": "c"},
    ]
    assert "tools" not in anthropic_body and "tools" not in body_of("openai", ChatRequest("m", turns))
