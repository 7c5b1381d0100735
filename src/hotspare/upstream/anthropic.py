"""Anthropic Messages API upstream: request JSON, SSE events, error bodies, stream continuation."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from hotspare.core.errors import BackendUnavailable, FailureClass, Overloaded, UpstreamError
from hotspare.core.types import (
    ApiFormat,
    ChatRequest,
    Finish,
    FinishReason,
    Message,
    Role,
    StreamEvent,
    ToolCallDelta,
    ToolCallStart,
    ToolChoiceMode,
    Usage,
)
from hotspare.formats.anthropic import STOP_NAMES, STOP_REASONS, error_event
from hotspare.formats.sse import encode_event
from hotspare.upstream.base import Upstream
from hotspare.upstream.sse import SseEvent
from hotspare.upstream.stream import StreamParser

API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096  # Anthropic requires max_tokens; a ChatRequest may leave it open


def _event(name: str, payload: Mapping[str, Any]) -> bytes:
    return encode_event(payload, name)  # the framing the api renderers use (formats/sse.py)


class AnthropicParser(StreamParser):
    def __init__(self, upstream: str) -> None:
        super().__init__()
        self._upstream = upstream
        self.model = ""
        self.message_id = ""
        self.input_tokens = 0
        self.output_tokens: int | None = None
        self.stop_reason: str | None = None
        self.stop_sequence: str | None = None
        self.open_index: int | None = None  # the content block now open
        self.open_is_text = False
        self.next_index = 0
        self.tool_blocks: dict[int, int] = {}  # content block index -> tool call number

    def feed(self, event: SseEvent) -> list[StreamEvent]:
        if not event.data:
            return []
        data = self._loads(self._upstream, event.data)
        kind = data.get("type", event.event)
        if kind == "content_block_delta":
            return self._on_delta(data)
        if kind == "message_start":
            message = data.get("message") or {}
            self.model = str(message.get("model", ""))
            self.message_id = str(message.get("id", ""))
            self.input_tokens = int((message.get("usage") or {}).get("input_tokens", 0))
        elif kind == "content_block_start":
            index = int(data.get("index", self.next_index))
            self.open_index, self.next_index = index, index + 1
            block = data.get("content_block") or {}
            self.open_is_text = block.get("type") == "text"
            if not self.open_is_text:
                self._note_other()
            if block.get("type") == "tool_use":
                return self._on_tool_use(index, block)
        elif kind == "content_block_stop":
            self.open_index = None
        elif kind == "message_delta":
            reason = (data.get("delta") or {}).get("stop_reason")
            if reason is not None and reason not in STOP_REASONS:
                raise UpstreamError(
                    FailureClass.STREAM_ERROR,
                    f"unknown stop_reason {str(reason)[:40]!r}",
                    upstream=self._upstream,
                )
            self.stop_reason = reason or self.stop_reason
            self.stop_sequence = (data.get("delta") or {}).get("stop_sequence")
            self.output_tokens = int((data.get("usage") or {}).get("output_tokens", 0))
        elif kind == "message_stop":
            self.is_done = True
            return [self._finish()]
        elif kind == "error":
            raise self._in_band_error(data)
        return []  # ping, or an event type newer than this code: passed through, ignored here

    def _on_delta(self, data: Mapping[str, Any]) -> list[StreamEvent]:
        delta = data.get("delta") or {}
        if delta.get("type") == "text_delta":
            text = delta.get("text")
            if not isinstance(text, str):
                raise self._malformed(self._upstream, "text_delta without text")
            return [self._note_text(text)]
        self._note_other()
        call = self.tool_blocks.get(int(data.get("index", -1)))
        piece = delta.get("partial_json")
        if call is not None and delta.get("type") == "input_json_delta" and isinstance(piece, str) and piece:
            return [ToolCallDelta(call, piece)]
        return []  # thinking, signatures, citations: nothing a converted answer carries

    def _on_tool_use(self, index: int, block: Mapping[str, Any]) -> list[StreamEvent]:
        call_id, name, given = block.get("id"), block.get("name"), block.get("input")
        if not isinstance(call_id, str) or not isinstance(name, str):
            raise self._malformed(self._upstream, "tool_use block without id and name")
        self.tool_blocks[index] = len(self.tool_blocks)
        out: list[StreamEvent] = [ToolCallStart(self.tool_blocks[index], call_id, name)]
        if isinstance(given, dict) and given:  # streamed input usually starts empty and comes in deltas
            out.append(ToolCallDelta(self.tool_blocks[index], json.dumps(given)))
        return out

    def _in_band_error(self, data: Mapping[str, Any]) -> UpstreamError:
        error = data.get("error") or {}
        failure = (
            FailureClass.OVERLOADED if error.get("type") == "overloaded_error" else FailureClass.STREAM_ERROR
        )
        return UpstreamError(
            failure, f"error event ({error.get('type', 'unknown')})", upstream=self._upstream
        )

    def _finish(self) -> Finish:
        reason = STOP_REASONS.get(self.stop_reason or "", FinishReason.END_TURN)
        output = self.output_tokens if self.output_tokens is not None else self.num_text_events
        return Finish(reason, Usage(self.input_tokens, output), self.model, self.stop_sequence)

    def render_message(self, text: str, finish: Finish) -> bytes:
        message = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": STOP_NAMES[finish.reason],
            "stop_sequence": finish.stop_sequence,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": finish.usage.output_tokens},
        }
        return json.dumps(message).encode()

    def stated_finish(self) -> Finish | None:
        return self._finish() if self.stop_reason is not None else None

    def render_delta(self, text: str) -> bytes:
        prefix = b""
        if self.open_index is None or not self.open_is_text:
            prefix = self._close_block()
            self.open_index, self.open_is_text = self.next_index, True
            self.next_index += 1
            prefix += _event(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": self.open_index,
                    "content_block": {"type": "text", "text": ""},
                },
            )
        delta = {"type": "text_delta", "text": text}
        return prefix + _event(
            "content_block_delta", {"type": "content_block_delta", "index": self.open_index, "delta": delta}
        )

    def _close_block(self) -> bytes:
        if self.open_index is None:
            return b""
        index, self.open_index = self.open_index, None
        return _event("content_block_stop", {"type": "content_block_stop", "index": index})

    def render_finish(self, finish: Finish) -> bytes:
        delivered = self.output_tokens if self.output_tokens is not None else self.num_text_events
        stop = {"stop_reason": STOP_NAMES[finish.reason], "stop_sequence": finish.stop_sequence}
        usage = {"output_tokens": delivered + finish.usage.output_tokens}
        return (
            self._close_block()
            + _event("message_delta", {"type": "message_delta", "delta": stop, "usage": usage})
            + _event("message_stop", {"type": "message_stop"})
        )

    def render_terminator(self) -> bytes:
        return self._close_block() + _event("message_stop", {"type": "message_stop"})

    def render_error(self, error: UpstreamError | None, message: str) -> bytes:
        # Anthropic streams have an error event for overload: an overloaded upstream's break is
        # reported as one; any other as no backend available (their rows in formats/errors.py).
        overloaded = error is not None and error.failure is FailureClass.OVERLOADED
        return error_event(Overloaded(message) if overloaded else BackendUnavailable(message))


class AnthropicUpstream(Upstream):
    kind = ApiFormat.ANTHROPIC_MESSAGES
    chat_path = "/v1/messages"

    def new_parser(self, client_body: Mapping[str, Any] | None) -> StreamParser:
        return AnthropicParser(self.name)

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"x-api-key": key}

    def default_headers(self) -> dict[str, str]:
        return {"anthropic-version": API_VERSION}

    def classify_error_body(self, status: int, body: Mapping[str, Any]) -> FailureClass | None:
        error = body.get("error")
        kind = error.get("type") if isinstance(error, dict) else None
        if status == 529 or kind == "overloaded_error":
            return FailureClass.OVERLOADED
        message = str(error.get("message", "")) if isinstance(error, dict) else ""
        # Anthropic marks a too-long prompt only in the message text; this is the one place that
        # reads it, and it turns it into a type for everyone else.
        if status == 400 and kind == "invalid_request_error" and "prompt is too long" in message:
            return FailureClass.CONTEXT_LENGTH
        return None

    def build_body(self, request: ChatRequest) -> dict[str, Any]:
        s = request.sampling
        system = "\n\n".join(m.content for m in request.messages if m.role is Role.SYSTEM)
        body: dict[str, Any] = {
            "model": self.config.upstream_model(request.model),
            "max_tokens": s.max_tokens or DEFAULT_MAX_TOKENS,
            "messages": _turns(request.messages),
            "stream": True,
            "temperature": min(s.temperature, 1.0),
            **_tool_fields(request),
        }
        if system:
            body["system"] = system
        if s.top_p < 1.0:
            body["top_p"] = s.top_p
        if s.top_k > 0:
            body["top_k"] = s.top_k
        if s.stop:
            body["stop_sequences"] = list(s.stop)
        return body


def _turns(messages: tuple[Message, ...]) -> list[dict[str, Any]]:
    """Core messages as Anthropic turns: tool calls as `tool_use` blocks, tool results as
    `tool_result` blocks in the next user turn; adjacent user turns joined into one (as before tools
    were converted, plain text stays a plain string)."""
    turns: list[dict[str, Any]] = []
    for m in messages:
        if m.role is Role.SYSTEM:
            continue
        if m.role is Role.TOOL:
            result: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": m.tool_call_id or "",
                "content": m.content,
            }
            _add(turns, "user", [result | ({"is_error": True} if m.is_error else {})])
        elif m.role is Role.ASSISTANT and m.tool_calls:
            text = [{"type": "text", "text": m.content}] if m.content else []
            uses = [
                {"type": "tool_use", "id": c.id, "name": c.name, "input": _input(c.arguments)}
                for c in m.tool_calls
            ]
            _add(turns, "assistant", [*text, *uses])
        else:
            _add(turns, "assistant" if m.role is Role.ASSISTANT else "user", m.content)
    return turns


def _add(turns: list[dict[str, Any]], role: str, content: str | list[dict[str, Any]]) -> None:
    """Append a turn, or join it to the previous user turn (Anthropic alternates roles)."""
    if not turns or turns[-1]["role"] != role or role != "user":
        turns.append({"role": role, "content": content})
        return
    previous = turns[-1]["content"]
    if isinstance(previous, str) and isinstance(content, str):
        turns[-1]["content"] = f"{previous}\n{content}"
        return
    as_blocks = [{"type": "text", "text": previous}] if isinstance(previous, str) else previous
    turns[-1]["content"] = [
        *as_blocks,
        *([{"type": "text", "text": content}] if isinstance(content, str) else content),
    ]


def _input(arguments: str) -> dict[str, Any]:
    """A call's JSON arguments as the object `tool_use.input` must be ({} when they are not one)."""
    try:
        value = json.loads(arguments) if arguments else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _tool_fields(request: ChatRequest) -> dict[str, Any]:
    """`tools` and `tool_choice` for a request that offers tools (none when it offers none)."""
    if not request.tools:
        return {}
    tools = [
        {"name": t.name, "description": t.description, "input_schema": t.parameters or {"type": "object"}}
        for t in request.tools
    ]
    mode = request.tool_choice.mode
    choice: dict[str, Any] = {"type": _CHOICE_TYPES[mode]}
    if mode is ToolChoiceMode.NAMED:
        choice["name"] = request.tool_choice.name
    if not request.parallel_tool_calls and mode is not ToolChoiceMode.NONE:
        choice["disable_parallel_tool_use"] = True
    return {"tools": tools, "tool_choice": choice}


_CHOICE_TYPES = {
    ToolChoiceMode.AUTO: "auto",
    ToolChoiceMode.NONE: "none",
    ToolChoiceMode.REQUIRED: "any",
    ToolChoiceMode.NAMED: "tool",
}
