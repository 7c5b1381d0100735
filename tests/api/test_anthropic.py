"""Anthropic Messages wire format <-> core types, with exact assertions."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hotspare.api import anthropic
from hotspare.api.wire import UnknownField, parse_body, unknown_fields
from hotspare.core.errors import InvalidRequest
from hotspare.core.types import (
    ChatRequest,
    Message,
    Role,
    SamplingParams,
    ToolCall,
    ToolSpec,
)


def convert(**body: Any) -> ChatRequest:
    body.setdefault("model", "claude-sonnet-4-5")
    body.setdefault("max_tokens", 16)
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return anthropic.to_chat_request(parse_body(json.dumps(body).encode(), anthropic.MessagesRequest), "r1")


def test_system_and_turns_become_core_messages() -> None:
    chat = convert(
        system=[{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
        messages=[
            {"role": "user", "content": "What is 6*7?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    {"type": "text", "text": "Let me compute."},
                    {"type": "tool_use", "id": "t1", "name": "calc", "input": {"expr": "6*7"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "42"},
                    {"type": "text", "text": "Thanks"},
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t2",
                        "is_error": True,
                        "content": [{"type": "text", "text": "boom"}],
                    }
                ],
            },
        ],
    )
    assert chat.messages == (
        Message(Role.SYSTEM, "be brief"),
        Message(Role.USER, "What is 6*7?"),
        Message(Role.ASSISTANT, "Let me compute.", tool_calls=(ToolCall("t1", "calc", '{"expr": "6*7"}'),)),
        Message(Role.TOOL, "42", tool_call_id="t1"),
        Message(Role.USER, "Thanks"),
        Message(Role.TOOL, "boom", tool_call_id="t2", is_error=True),
    )
    assert (chat.model, chat.request_id, chat.stream) == ("claude-sonnet-4-5", "r1", False)


def test_system_as_a_string() -> None:
    assert convert(system="terse").messages[0] == Message(Role.SYSTEM, "terse")


def test_sampling_fields_map_one_to_one() -> None:
    chat = convert(
        max_tokens=9, temperature=0.0, top_p=0.9, top_k=40, stop_sequences=["\n\nHuman:", ""], stream=True
    )
    assert chat.sampling == SamplingParams(
        max_tokens=9, temperature=0.0, top_p=0.9, top_k=40, stop=("\n\nHuman:",)
    )
    assert chat.stream is True


def test_provider_specific_fields_are_accepted_and_ignored() -> None:
    chat = convert(
        metadata={"user_id": "u-1"},
        thinking={"type": "enabled", "budget_tokens": 1024},
        tool_choice={"type": "auto"},
        service_tier="auto",
        tools=[
            {"name": "calc", "description": "math", "input_schema": {"type": "object"}},
            {"type": "web_search_20250305", "name": "web_search", "max_uses": 2},
        ],
    )
    assert chat.tools == (ToolSpec("calc", "math", {"type": "object"}),)
    assert chat.sampling == SamplingParams(max_tokens=16)


def test_count_tokens_request_has_no_sampling() -> None:
    body = parse_body(
        b'{"model": "m", "system": "s", "messages": [{"role": "user", "content": "hi"}]}',
        anthropic.CountTokensRequest,
    )
    chat = anthropic.to_chat_request(body)
    assert chat.messages == (Message(Role.SYSTEM, "s"), Message(Role.USER, "hi"))
    assert chat.sampling == SamplingParams()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"max_tokens": 0}, "max_tokens: Input should be greater than or equal to 1"),
        ({"max_tokens": -1}, "max_tokens: Input should be greater than or equal to 1"),
        ({"max_tokens": "16"}, "max_tokens: Input should be a valid integer"),
        ({"max_tokens": 1.5}, "max_tokens: Input should be a valid integer"),
        ({"temperature": 1.5}, "temperature: Input should be less than or equal to 1"),
        ({"top_k": -1}, "top_k: Input should be greater than or equal to 0"),
        ({"stop_sequences": "END"}, "stop_sequences: Input should be a valid list"),
        ({"messages": []}, "messages: List should have at least 1 item after validation, not 0"),
        (
            {"messages": [{"role": "tool", "content": "x"}]},
            "messages[0].role: Input should be 'user', 'assistant' or 'system'",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]},
            "messages[0].content[0].text: Input should be a valid string",
        ),
        ({"system": 5}, "system: Input should be a string or a list of content parts"),
    ],
)
def test_bad_fields_are_named_in_the_error(body: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        convert(**body)
    assert caught.value.message == message


def test_unknown_fields_are_kept_aside_not_refused() -> None:
    """anthropic 2.16's ToolUseBlock carries `toolset_name`; Claude Code sends fields a release ahead.
    Both are accepted and listed; an unknown block type's own fields are its content, not listed."""
    use = {"type": "tool_use", "id": "t1", "name": "f", "input": {}, "toolset_name": None, "caller": None}
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
    raw = {
        "model": "m",
        "max_tokens": 8,
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [use]},
            {"role": "user", "content": [image], "new_message_option": True},
        ],
        "brand_new_option": 1,
    }
    body = parse_body(json.dumps(raw).encode(), anthropic.MessagesRequest)
    assert unknown_fields(body) == [
        UnknownField("MessagesRequest", "brand_new_option"),
        UnknownField("ToolUseBlock", "messages[1].content[0].toolset_name"),
        UnknownField("InputMessage", "messages[2].new_message_option"),
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"stop_sequences": ["s"] * 65},
            "stop_sequences: 65 stop sequences; the local model accepts at most 64",
        ),
        (
            {"stop_sequences": ["ok", "y" * 300]},
            "stop_sequences[1]: a stop sequence of 300 characters; the local model accepts at most 256",
        ),
    ],
)
def test_what_the_local_engine_does_not_serve_is_refused(body: dict[str, Any], message: str) -> None:
    raw = {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}], **body}
    parsed = parse_body(json.dumps(raw).encode(), anthropic.MessagesRequest)
    with pytest.raises(InvalidRequest) as caught:
        anthropic.check_local_limits(parsed)
    assert (caught.value.message, caught.value.param) == (message, "stop_sequences")


def test_missing_max_tokens_is_named() -> None:
    with pytest.raises(InvalidRequest, match=r"^max_tokens: field required$"):
        parse_body(
            b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}', anthropic.MessagesRequest
        )


def test_images_are_refused_with_where_they_are() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
    with pytest.raises(InvalidRequest) as caught:
        convert(messages=[{"role": "user", "content": [{"type": "text", "text": "see"}, image]}])
    assert caught.value.message == (
        "messages[0].content[1]: image content is not supported: the local model reads text only"
    )


def test_a_custom_tool_without_a_name_is_refused() -> None:
    with pytest.raises(InvalidRequest, match=r"^tools\[0\]: a tool needs a string name"):
        convert(tools=[{"input_schema": {"type": "object"}}])
