"""OpenAI Chat Completions wire format <-> core types, with exact assertions."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hotspare.api import openai
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
    body.setdefault("model", "gpt-4o")
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return openai.to_chat_request(parse_body(json.dumps(body).encode(), openai.ChatCompletionRequest), "id-1")


def test_roles_and_content_forms_become_core_messages() -> None:
    chat = convert(
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "developer", "content": [{"type": "text", "text": "and kind"}]},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
        ]
    )
    assert chat.messages == (
        Message(Role.SYSTEM, "be brief"),
        Message(Role.SYSTEM, "and kind"),
        Message(Role.USER, "a\nb"),
        Message(Role.ASSISTANT, "", tool_calls=(ToolCall("c1", "f", "{}"),)),
        Message(Role.TOOL, "42", tool_call_id="c1"),
    )
    assert chat.model == "gpt-4o"
    assert chat.request_id == "id-1"
    assert chat.stream is False


def test_sampling_fields_map_one_to_one() -> None:
    chat = convert(
        max_tokens=5,
        temperature=0,
        top_p=0.5,
        stop=["\n\n", "", "END"],
        seed=3,
        n=1,
        frequency_penalty=0.25,
        presence_penalty=-0.5,
        stream=True,
    )
    assert chat.sampling == SamplingParams(
        max_tokens=5,
        temperature=0.0,
        top_p=0.5,
        seed=3,
        stop=("\n\n", "END"),
        frequency_penalty=0.25,
        presence_penalty=-0.5,
    )
    assert chat.stream is True


def test_defaults_leave_the_answer_length_to_the_backend() -> None:
    assert convert().sampling == SamplingParams()


def test_max_completion_tokens_wins_over_max_tokens_and_a_single_stop_string_is_one_stop() -> None:
    sampling = convert(max_tokens=100, max_completion_tokens=7, stop="###").sampling
    assert (sampling.max_tokens, sampling.stop) == (7, ("###",))


def test_fields_the_local_model_cannot_honour_are_accepted_and_ignored() -> None:
    chat = convert(
        user="u",
        metadata={"k": "v"},
        store=False,
        logprobs=False,
        response_format={"type": "text"},
        service_tier="auto",
        reasoning_effort="low",
        parallel_tool_calls=True,
        tool_choice="auto",
        stream_options={"include_usage": True},
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    )
    assert chat.tools == (ToolSpec("f", "", {"type": "object"}),)
    assert chat.sampling == SamplingParams()


@pytest.mark.parametrize(
    ("body", "message", "param"),
    [
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "messages[0].content[0]: image_url content is not supported: the local model reads text only",
            "messages[0].content",
        ),
    ],
)
def test_requests_the_local_model_cannot_answer_are_refused(
    body: dict[str, Any], message: str, param: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        convert(**body)
    assert (caught.value.message, caught.value.param) == (message, param)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"messages": []}, "messages: List should have at least 1 item after validation, not 0"),
        ({"max_tokens": 0}, "max_tokens: Input should be greater than or equal to 1"),
        ({"max_tokens": -5}, "max_tokens: Input should be greater than or equal to 1"),
        ({"max_completion_tokens": 0}, "max_completion_tokens: Input should be greater than or equal to 1"),
        ({"max_tokens": "5"}, "max_tokens: Input should be a valid integer"),
        ({"temperature": 3}, "temperature: Input should be less than or equal to 2"),
        ({"stop": 5}, "stop: Input should be a valid string"),
        ({"stream": "yes"}, "stream: Input should be a valid boolean"),
        ({"messages": [{"role": "user"}]}, "messages[0].content: field required"),
        (
            {"messages": [{"role": "user", "content": 5}]},
            "messages[0].content: Input should be a string or a list of content parts",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "messages[0].content[0].text: field required",
        ),
        (
            {"messages": [{"role": "robot", "content": "x"}]},
            "messages[0].role: Input tag 'robot' found using 'role' does not match any of the expected "
            "tags: 'system', 'developer', 'user', 'assistant', 'tool'",
        ),
        (
            {"messages": [{"content": "x"}]},
            "messages[0].role: Unable to extract tag using discriminator 'role'",
        ),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id: field required"),
    ],
)
def test_bad_fields_are_named_in_the_error(body: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        convert(**body)
    assert caught.value.message == message
    assert caught.value.param == message.split(":")[0]


def test_unknown_fields_are_kept_aside_not_refused() -> None:
    """What the official SDK sends back in a tool loop (`annotations` on its assistant message) and
    any invented field: accepted, and listed with where they were."""
    raw = {
        "model": "gpt-4o",
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "x", "annotations": [], "tool_calls": None, "extra_thing": 1},
        ],
        "brand_new_option": {"a": 1},
    }
    body = parse_body(json.dumps(raw).encode(), openai.ChatCompletionRequest)
    assert openai.to_chat_request(body).messages[1] == Message(Role.ASSISTANT, "x")
    assert unknown_fields(body) == [
        UnknownField("ChatCompletionRequest", "brand_new_option"),
        UnknownField("AssistantMessage", "messages[1].annotations"),
        UnknownField("AssistantMessage", "messages[1].extra_thing"),
    ]


@pytest.mark.parametrize(
    ("body", "message", "param"),
    [
        ({"n": 129}, "n: 129 choices; at most 128 are accepted", "n"),
        (
            {"stop": ["a", "b", "c", "d", "e"]},
            "stop: 5 stop sequences; the local model accepts at most 4",
            "stop",
        ),
        (
            {"stop": "x" * 257},
            "stop[0]: a stop sequence of 257 characters; the local model accepts at most 256",
            "stop",
        ),
    ],
)
def test_what_the_local_engine_does_not_serve_is_refused(
    body: dict[str, Any], message: str, param: str
) -> None:
    parsed = parse_body(
        json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], **body}).encode(),
        openai.ChatCompletionRequest,
    )
    with pytest.raises(InvalidRequest) as caught:
        openai.check_local_limits(parsed)
    assert (caught.value.message, caught.value.param) == (message, param)


def test_the_limits_themselves_are_served() -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "n": 128,
        "stop": ["a", "b", "c", "x" * 256],
    }
    openai.check_local_limits(parse_body(json.dumps(body).encode(), openai.ChatCompletionRequest))


def test_missing_model_is_named() -> None:
    with pytest.raises(InvalidRequest, match=r"^model: field required$"):
        parse_body(b'{"messages": [{"role": "user", "content": "hi"}]}', openai.ChatCompletionRequest)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "the request body is not valid JSON (line 1, column 2)"),
        (b"", "the request body is not valid JSON (line 1, column 1)"),
        (b"[1, 2]", "the request body must be a JSON object, not an array"),
        (b'"\xc3\x28"', "the request body is not valid JSON"),
    ],
)
def test_malformed_bodies_are_refused(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_body(raw, openai.ChatCompletionRequest)
    assert caught.value.message == message
