"""Tool calls and context notices rendered in each API, from a scripted backend, read by the SDKs."""

from __future__ import annotations

import anthropic
import openai

from hotspare.core.types import (
    ContextFitted,
    FinishReason,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    ToolCallStart,
)

from .conftest import MakeClient
from .fakes import FakeBackend, finish

CALLS: list[StreamEvent] = [
    ContextFitted(9000, 6000),
    TextDelta("Checking."),
    ToolCallStart(0, "call_a", "get_weather"),
    ToolCallDelta(0, '{"city": '),
    ToolCallDelta(0, '"Paris"}'),
    ToolCallStart(1, "call_b", "now"),
    ToolCallDelta(1, "{}"),
    finish(FinishReason.TOOL_CALLS, output_tokens=9),
]
OPENAI_BODY: dict[str, object] = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
ANTHROPIC_BODY: dict[str, object] = {**OPENAI_BODY, "max_tokens": 16}


def sdk_openai(make_client: MakeClient) -> openai.OpenAI:
    http = make_client(FakeBackend(events=CALLS))
    return openai.OpenAI(base_url="http://localhost/v1", api_key="x", http_client=http, max_retries=0)


def sdk_anthropic(make_client: MakeClient) -> anthropic.Anthropic:
    http = make_client(FakeBackend(events=CALLS))
    return anthropic.Anthropic(base_url="http://localhost", api_key="x", http_client=http, max_retries=0)


def test_openai_message_has_text_and_tool_calls(make_client: MakeClient) -> None:
    raw = sdk_openai(make_client).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-hotspare-context-fit"] == "9000->6000 tokens"
    choice = raw.parse().choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Checking."
    calls = [
        (c.id, c.function.name, c.function.arguments)
        for c in choice.message.tool_calls or ()
        if c.type == "function"
    ]
    assert calls == [("call_a", "get_weather", '{"city": "Paris"}'), ("call_b", "now", "{}")]


def test_openai_stream_has_tool_call_deltas(make_client: MakeClient) -> None:
    chunks = list(
        sdk_openai(make_client).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    deltas = [
        (d.index, d.id, d.function.name if d.function else None, d.function.arguments if d.function else None)
        for c in chunks
        for choice in c.choices
        for d in choice.delta.tool_calls or ()
    ]
    assert deltas == [
        (0, "call_a", "get_weather", ""),
        (0, None, None, '{"city": '),
        (0, None, None, '"Paris"}'),
        (1, "call_b", "now", ""),
        (1, None, None, "{}"),
    ]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_anthropic_message_has_text_and_tool_use_blocks(make_client: MakeClient) -> None:
    raw = sdk_anthropic(make_client).messages.with_raw_response.create(
        model="claude-haiku-4-5", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-hotspare-context-fit"] == "9000->6000 tokens"
    message = raw.parse()
    assert message.stop_reason == "tool_use"
    assert [block.model_dump(exclude_none=True) for block in message.content] == [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "call_b", "name": "now", "input": {}},
    ]


def test_anthropic_stream_has_tool_use_blocks_with_json_deltas(make_client: MakeClient) -> None:
    with sdk_anthropic(make_client).messages.stream(
        model="claude-haiku-4-5", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        events = [(e.type, getattr(e, "index", None)) for e in stream]
        message = stream.get_final_message()
    starts = [index for kind, index in events if kind == "content_block_start"]
    assert starts == [0, 1, 2]
    assert ("content_block_delta", 1) in events and message.stop_reason == "tool_use"
    assert [getattr(b, "input", None) for b in message.content] == [None, {"city": "Paris"}, {}]
