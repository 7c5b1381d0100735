"""Core answers -> OpenAI Chat Completions wire format, with exact assertions."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hotspare.api import anthropic_render, openai_render
from hotspare.api.answer import Answer
from hotspare.core.types import Finish, FinishReason, Usage

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
