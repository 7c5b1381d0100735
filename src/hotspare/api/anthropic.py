"""Anthropic Messages <-> core types.

Requests: every field the real API accepts is accepted; those the local model cannot honour
(thinking, tool_choice, metadata, service_tier, cache_control, ...) are accepted and ignored, so a
client written for Claude keeps working. Unknown fields are refused, as Anthropic refuses them.
Answers: a `message`, or the full SSE event sequence (message_start, content_block_start, ping,
content_block_delta..., content_block_stop, message_delta, message_stop), with pings in long gaps.

Usage follows Anthropic's accounting: `input_tokens` is the part of the prompt that was not read from
the cache, `cache_read_input_tokens` the part that was; together they are the whole prompt.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Discriminator, Field, Tag

from hotspare.api.errors import client_error, error_reply
from hotspare.api.sse import Heartbeat, encode_event, with_heartbeats
from hotspare.api.wire import WireModel, text_as_parts
from hotspare.core.errors import BackendUnavailable, InvalidRequest
from hotspare.core.types import (
    ApiFormat,
    ChatRequest,
    Finish,
    FinishReason,
    Message,
    Role,
    SamplingParams,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolSpec,
    Usage,
)

# --- request -------------------------------------------------------------------------------------


class TextBlock(WireModel):
    type: Literal["text"]
    text: str
    cache_control: Any = None
    citations: Any = None


class ToolUseBlock(WireModel):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]
    cache_control: Any = None
    caller: Any = None


class ToolResultBlock(WireModel):
    type: Literal["tool_result"]
    tool_use_id: str
    content: Annotated[list[TextBlock], BeforeValidator(text_as_parts)] | None = None
    is_error: bool | None = None
    cache_control: Any = None


class ThinkingBlock(WireModel):
    """Earlier reasoning of a Claude model: not shown to the local model."""

    type: Literal["thinking", "redacted_thinking"]
    thinking: str = ""
    signature: str = ""
    data: str = ""


class OtherBlock(WireModel, extra="allow"):
    """Any other block type (image, document, server tool results, ...): refused when converted."""

    type: str


_TAGGED_BLOCKS = {"text", "tool_use", "tool_result", "thinking", "redacted_thinking"}


def _block_tag(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    if kind in ("thinking", "redacted_thinking"):
        return "thinking"
    return kind if kind in _TAGGED_BLOCKS else "other"


ContentBlock = Annotated[
    Annotated[TextBlock, Tag("text")]
    | Annotated[ToolUseBlock, Tag("tool_use")]
    | Annotated[ToolResultBlock, Tag("tool_result")]
    | Annotated[ThinkingBlock, Tag("thinking")]
    | Annotated[OtherBlock, Tag("other")],
    Discriminator(_block_tag),
]


class InputMessage(WireModel):
    role: Literal["user", "assistant"]
    content: Annotated[list[ContentBlock], BeforeValidator(text_as_parts)]


class Conversation(WireModel):
    """The fields a messages request and a count_tokens request share. `Any` fields are ignored."""

    model: str
    messages: list[InputMessage] = Field(min_length=1)
    system: Annotated[list[TextBlock], BeforeValidator(text_as_parts)] | None = None
    # Tool definitions change shape often (server tools, new options); only custom tools (those with
    # an input_schema) are passed on, the rest are ignored.
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    thinking: Any = None
    cache_control: Any = None
    output_config: Any = None
    output_format: Any = None
    mcp_servers: Any = None
    context_management: Any = None
    speed: Any = None
    user_profile_id: Any = None
    workspace_id: Any = None


class MessagesRequest(Conversation):
    """POST /v1/messages."""

    max_tokens: int = Field(ge=1)
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    stream: bool | None = None
    metadata: Any = None
    service_tier: Any = None
    container: Any = None
    inference_geo: Any = None
    diagnostics: Any = None


class CountTokensRequest(Conversation):
    """POST /v1/messages/count_tokens."""


def to_chat_request(body: Conversation, request_id: str = "") -> ChatRequest:
    """The core request for `body`; raises InvalidRequest for content the local model cannot read."""
    system = "\n".join(block.text for block in body.system or ())
    messages = [Message(Role.SYSTEM, system)] if system else []
    for index, message in enumerate(body.messages):
        messages.extend(_to_messages(message, index))
    return ChatRequest(
        model=body.model,
        messages=tuple(messages),
        sampling=_sampling(body) if isinstance(body, MessagesRequest) else SamplingParams(),
        stream=bool(body.stream) if isinstance(body, MessagesRequest) else False,
        tools=_tools(body.tools or []),
        request_id=request_id,
    )


def _sampling(body: MessagesRequest) -> SamplingParams:
    return SamplingParams(
        max_tokens=body.max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=body.top_k or 0,
        stop=tuple(stop for stop in body.stop_sequences or () if stop),
    )


def _tools(tools: list[dict[str, Any]]) -> tuple[ToolSpec, ...]:
    specs = []
    for index, tool in enumerate(tools):
        if "input_schema" not in tool:
            continue  # a server tool (web search, code execution, ...): nothing local can run it
        name, description, schema = tool.get("name"), tool.get("description", ""), tool["input_schema"]
        if not isinstance(name, str) or not isinstance(description, str) or not isinstance(schema, dict):
            raise InvalidRequest(
                f"tools[{index}]: a tool needs a string name and description and an object input_schema",
                f"tools[{index}]",
            )
        specs.append(ToolSpec(name, description, schema))
    return tuple(specs)


def _to_messages(message: InputMessage, index: int) -> list[Message]:
    """One Anthropic turn as core messages: tool results become tool messages ahead of the text."""
    texts: list[str] = []
    calls: list[ToolCall] = []
    results: list[Message] = []
    for number, block in enumerate(message.content):
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ToolUseBlock):
            calls.append(ToolCall(block.id, block.name, json.dumps(block.input)))
        elif isinstance(block, ToolResultBlock):
            text = "\n".join(part.text for part in block.content or ())
            is_error = bool(block.is_error)
            results.append(Message(Role.TOOL, text, tool_call_id=block.tool_use_id, is_error=is_error))
        elif isinstance(block, OtherBlock):
            raise InvalidRequest(
                f"messages[{index}].content[{number}]: {block.type} content is not supported: the local "
                "model reads text only",
                f"messages[{index}].content",
            )
    text = "\n".join(texts)
    if message.role == "assistant":
        return [Message(Role.ASSISTANT, text, tool_calls=tuple(calls))]
    return [*results, Message(Role.USER, text)] if text or not results else results


# --- response ------------------------------------------------------------------------------------

_STOP_REASONS = {
    FinishReason.END_TURN: "end_turn",
    FinishReason.STOP_SEQUENCE: "stop_sequence",
    FinishReason.LENGTH: "max_tokens",
    FinishReason.TOOL_CALLS: "tool_use",
}


def stop_reason(reason: FinishReason) -> str:
    return _STOP_REASONS[reason]


def usage_body(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.input_tokens - usage.cached_tokens,
        "output_tokens": usage.output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": usage.cached_tokens,
    }


def message_body(text: str, finish: Finish, message_id: str) -> dict[str, Any]:
    """A whole `message` for an answer that has finished."""
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": finish.model,
        "content": [{"type": "text", "text": text}],
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
    return [
        _event({"type": "message_start", "message": message}),
        _event({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        _event({"type": "ping"}),
    ]


def _closing(finish: Finish) -> list[bytes]:
    delta = {"stop_reason": stop_reason(finish.reason), "stop_sequence": finish.stop_sequence}
    return [
        _event({"type": "content_block_stop", "index": 0}),
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
    async with aclosing(with_heartbeats(events, heartbeat_s)) as paced:
        try:
            async for event in paced:
                if isinstance(event, Heartbeat):
                    yield _event({"type": "ping"})
                elif isinstance(event, TextDelta):
                    delta = {"type": "text_delta", "text": event.text}
                    yield _event({"type": "content_block_delta", "index": 0, "delta": delta})
                else:
                    for closing in _closing(event):
                        yield closing
                    return
            raise BackendUnavailable("the answer ended without finishing")
        except Exception as exc:  # the stream has begun: the error goes in-band, in the API's shape
            yield _event(error_reply(client_error(exc), ApiFormat.ANTHROPIC_MESSAGES).body)
