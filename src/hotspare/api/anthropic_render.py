"""Core answers -> Anthropic Messages: a whole `message`, or the full SSE event sequence
(message_start, ping, per content block content_block_start / content_block_delta... /
content_block_stop, message_delta, message_stop), with pings in long gaps. Tool calls are `tool_use`
blocks (streamed as `input_json_delta`s). The request side is api/anthropic.py.

Usage follows Anthropic's accounting: `input_tokens` is the part of the prompt that was not read from
the cache, `cache_read_input_tokens` the part that was; together they are the whole prompt.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from hotspare.api.answer import Answer, AnswerEvent, arguments_object, paced_answer
from hotspare.api.errors import client_error
from hotspare.api.sse import Heartbeat
from hotspare.core.types import (
    Finish,
    StreamEvent,
    ToolCallDelta,
    ToolCallStart,
    Usage,
)
from hotspare.formats.anthropic import error_event, stop_reason
from hotspare.formats.sse import encode_event


def usage_body(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.input_tokens - usage.cached_tokens,
        "output_tokens": usage.output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": usage.cached_tokens,
    }


def message_body(answer: Answer, message_id: str) -> dict[str, Any]:
    """A whole `message` for an answer that has finished: its text, then its tool calls."""
    content: list[dict[str, Any]] = []
    if answer.text or not answer.tool_calls:
        content.append({"type": "text", "text": answer.text})
    for call in answer.tool_calls:
        content.append(
            {"type": "tool_use", "id": call.id, "name": call.name, "input": arguments_object(call.arguments)}
        )
    finish = answer.finish
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": finish.model,
        "content": content,
        "stop_reason": stop_reason(finish.reason),
        "stop_sequence": finish.stop_sequence,
        "usage": usage_body(finish.usage),
    }


def count_tokens_body(num_tokens: int) -> dict[str, Any]:
    return {"input_tokens": num_tokens}


def _event(data: dict[str, Any]) -> bytes:
    return encode_event(data, event=str(data["type"]))


def _opening(message_id: str, model: str, num_prompt_tokens: int) -> list[bytes]:
    message: dict[str, Any] = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage_body(Usage(input_tokens=num_prompt_tokens, output_tokens=0)),
    }
    return [_event({"type": "message_start", "message": message})]


class _Blocks:
    """The content blocks of a streamed answer: each opened when its first event arrives (a text
    block for text, a tool_use block per call), the previous one closed then."""

    def __init__(self) -> None:
        self.index = -1
        self.kind: str | None = None  # of the open block

    def event(self, event: AnswerEvent) -> list[bytes]:
        if isinstance(event, ToolCallDelta):
            delta = {"type": "input_json_delta", "partial_json": event.arguments}
            return [_event({"type": "content_block_delta", "index": self.index, "delta": delta})]
        if isinstance(event, ToolCallStart):
            block = {"type": "tool_use", "id": event.id, "name": event.name, "input": {}}
            return self._open("tool_use", block)
        out = [] if self.kind == "text" else self._open("text", {"type": "text", "text": ""})
        delta = {"type": "text_delta", "text": event.text}
        return [*out, _event({"type": "content_block_delta", "index": self.index, "delta": delta})]

    def _open(self, kind: str, block: dict[str, Any]) -> list[bytes]:
        out = self.close()
        self.index, self.kind = self.index + 1, kind
        out.append(_event({"type": "content_block_start", "index": self.index, "content_block": block}))
        if self.index == 0:
            out.append(_event({"type": "ping"}))  # where Anthropic sends its first ping
        return out

    def close(self) -> list[bytes]:
        if self.kind is None:
            return []
        self.kind = None
        return [_event({"type": "content_block_stop", "index": self.index})]

    def finish(self, finish: Finish) -> list[bytes]:
        # An answer with no content at all still has its (empty) text block, as Anthropic's do.
        opening = self._open("text", {"type": "text", "text": ""}) if self.index < 0 else []
        delta = {"stop_reason": stop_reason(finish.reason), "stop_sequence": finish.stop_sequence}
        return [
            *opening,
            *self.close(),
            _event({"type": "message_delta", "delta": delta, "usage": usage_body(finish.usage)}),
            _event({"type": "message_stop"}),
        ]


async def stream_events(
    events: AsyncIterator[StreamEvent],
    message_id: str,
    model: str,
    num_prompt_tokens: int,
    heartbeat_s: float,
) -> AsyncIterator[bytes]:
    """The SSE body of a streamed answer. An error after the stream began becomes an `error` event
    (what the Anthropic SDKs raise from). Closing this closes `events`."""
    for opening in _opening(message_id, model, num_prompt_tokens):
        yield opening
    blocks = _Blocks()
    try:
        async with aclosing(paced_answer(events, heartbeat_s)) as paced:
            async for event in paced:
                if isinstance(event, Heartbeat):
                    yield _event({"type": "ping"})
                elif isinstance(event, Finish):
                    for closing in blocks.finish(event):
                        yield closing
                else:
                    for chunk in blocks.event(event):
                        yield chunk
    except Exception as exc:  # the stream has begun: the error goes in-band, in the API's shape
        yield error_event(client_error(exc))
