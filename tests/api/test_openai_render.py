"""Core answers -> OpenAI Chat Completions wire format, with exact assertions."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from hotspare.api import anthropic_render, openai_render
from hotspare.api.answer import Answer, collect_all
from hotspare.core.errors import BackendUnavailable
from hotspare.core.types import Finish, FinishReason, TextDelta, Usage

FINISH = Finish(FinishReason.LENGTH, Usage(10, 3, cached_tokens=4), "smollm2-135m-instruct")


def test_completion_body_reports_the_model_that_answered() -> None:
    assert openai_render.completion_body([Answer("abc", [], FINISH)], "chatcmpl-1", 1700000000) == {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "smollm2-135m-instruct",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "abc", "refusal": None},
                "logprobs": None,
                "finish_reason": "length",
            }
        ],
        "usage": {
            "prompt_tokens": 10,
            "completion_tokens": 3,
            "total_tokens": 13,
            "prompt_tokens_details": {"cached_tokens": 4},
        },
        "system_fingerprint": None,
    }


def decode(event: bytes) -> Any:
    text = event.decode()
    assert text.startswith("data: ") and text.endswith("\n\n")
    payload = text.removeprefix("data: ").removesuffix("\n\n")
    return payload if payload == "[DONE]" else json.loads(payload)


def test_chunks_with_usage_end_with_a_usage_chunk_and_done() -> None:
    chunks = openai_render.ChunkStream("chatcmpl-1", 5, "local", include_usage=True)
    first = decode(chunks.delta({"role": "assistant", "content": ""}))
    assert first == {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 5,
        "model": "local",
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": None,
            }
        ],
        "usage": None,
    }
    closing = [decode(chunk) for chunk in chunks.finish(FINISH)]
    assert closing[0]["choices"] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}]
    assert closing[0]["model"] == "smollm2-135m-instruct"
    assert closing[1]["choices"] == []
    assert closing[1]["usage"] == openai_render.usage_body(FINISH.usage)
    assert closing[2] == "[DONE]"


def test_chunks_without_usage_have_no_usage_field() -> None:
    chunks = openai_render.ChunkStream("chatcmpl-1", 5, "local", include_usage=False)
    closing = [decode(chunk) for chunk in chunks.finish(FINISH)]
    assert "usage" not in closing[0]
    assert len(closing) == 2 and closing[1] == "[DONE]"


@pytest.mark.parametrize(
    ("reason", "openai_wire", "anthropic_wire"),
    [
        (FinishReason.END_TURN, "stop", "end_turn"),
        (FinishReason.STOP_SEQUENCE, "stop", "stop_sequence"),
        (FinishReason.LENGTH, "length", "max_tokens"),
        (FinishReason.TOOL_CALLS, "tool_calls", "tool_use"),
    ],
)
def test_finish_reasons_in_each_api(reason: FinishReason, openai_wire: str, anthropic_wire: str) -> None:
    assert openai_render.finish_reason(reason) == openai_wire
    assert anthropic_render.stop_reason(reason) == anthropic_wire


# ----- n choices (issue 17 point 1) -----


class Choice:
    """A choice's events, each after `delay_s`; records whether it was closed (read or not)."""

    def __init__(self, text: str, delay_s: float, usage: Usage) -> None:
        self.events: list[Any] = [TextDelta(c) for c in text] + [Finish(FinishReason.END_TURN, usage, "m")]
        self.delay_s = delay_s
        self.is_closed = False

    def __aiter__(self) -> Choice:
        return self

    async def __anext__(self) -> Any:
        if self.is_closed or not self.events:
            raise StopAsyncIteration
        await asyncio.sleep(self.delay_s)
        return self.events.pop(0)

    async def aclose(self) -> None:
        self.is_closed = True


async def test_n_choices_stream_interleaved_and_the_prompt_is_counted_once() -> None:
    """Before: choice 1 was read only after choice 0 ended, and usage took the last choice's prompt."""
    first = Choice("aaaa", 0.01, Usage(10, 4, 0))
    second = Choice("bb", 0.015, Usage(10, 2, 9))
    chunks = openai_render.ChunkStream("id", 0, "m", include_usage=True)
    body = [c async for c in openai_render.stream_chunks(first, chunks, 10.0, [second])]
    events = [json.loads(line[6:]) for line in b"".join(body).decode().split("\n\n") if line[6:7] == "{"]
    indexes = [
        e["choices"][0]["index"] for e in events if e["choices"] and e["choices"][0]["delta"].get("content")
    ]
    assert (
        indexes.index(1) < len(indexes) - indexes[::-1].index(0) - 1
    )  # choice 1 began before choice 0 ended
    assert sorted(indexes) == [0, 0, 0, 0, 1, 1]
    assert events[-1]["usage"]["prompt_tokens"] == 10 and events[-1]["usage"]["completion_tokens"] == 6
    assert events[-1]["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}  # choice 0's
    assert first.is_closed and second.is_closed


async def test_collect_all_closes_the_choices_it_never_read() -> None:
    failing = Choice("", 0.0, Usage(1, 1))
    failing.events = []  # ends without a Finish: an error
    waiting = Choice("x", 0.0, Usage(1, 1))
    with pytest.raises(BackendUnavailable):
        await collect_all([failing, waiting], max_at_once=1)
    assert waiting.is_closed and waiting.events  # never read, closed all the same
