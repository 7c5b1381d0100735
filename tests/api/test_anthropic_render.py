"""Core answers -> Anthropic Messages wire format, with exact assertions (finish reasons: see
test_openai_render.py)."""

from __future__ import annotations

from hotspare.api import anthropic_render
from hotspare.api.answer import Answer
from hotspare.core.types import Finish, FinishReason, Usage

FINISH = Finish(FinishReason.STOP_SEQUENCE, Usage(12, 4, cached_tokens=5), "smollm2-135m-instruct", "END")


def test_message_body_follows_anthropic_usage_accounting() -> None:
    assert anthropic_render.message_body(Answer("abc", [], FINISH), "msg_1") == {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "smollm2-135m-instruct",
        "content": [{"type": "text", "text": "abc"}],
        "stop_reason": "stop_sequence",
        "stop_sequence": "END",
        "usage": {
            "input_tokens": 7,
            "output_tokens": 4,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 5,
        },
    }
