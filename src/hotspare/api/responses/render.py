"""Core answers -> OpenAI Responses wire format: the `response` object and its SSE event sequence.

Streaming sends, each with a `sequence_number` counting from 0:

    response.created, response.in_progress,
    response.output_item.added, response.content_part.added,
    response.output_text.delta ..., response.output_text.done,
    response.content_part.done, response.output_item.done,
    response.completed (or response.incomplete when max_output_tokens ran out)

An error after the stream began ends it with an `error` event (its fields both flat, as the API
reference documents, and nested under `error`, as the live API sends and the SDKs raise from) and
`response.failed` carrying the output so far -- never a truncated answer presented as complete.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from hotspare.api.answer import paced_answer
from hotspare.api.errors import client_error
from hotspare.api.responses.request import ResponsesRequest
from hotspare.api.sse import Heartbeat
from hotspare.core.errors import BackendUnavailable, HotspareError
from hotspare.core.types import (
    ApiFormat,
    Finish,
    FinishReason,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    ToolCallStart,
    Usage,
)
from hotspare.formats.errors import error_reply
from hotspare.formats.sse import encode_comment, encode_event


def new_response_id() -> str:
    return "resp_" + uuid.uuid4().hex + uuid.uuid4().hex[:16]


def new_item_id(prefix: str) -> str:
    return f"{prefix}_" + uuid.uuid4().hex + uuid.uuid4().hex[:16]


@dataclass(frozen=True, slots=True)
class Shell:
    """What every rendering of one response shares: its id, creation time and the request it echoes."""

    id: str
    created_at: int
    model: str
    request: ResponsesRequest

    @classmethod
    def new(cls, request: ResponsesRequest, model: str) -> Shell:
        return cls(new_response_id(), int(time.time()), model, request)


def usage_body(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens},
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }


def response_object(
    shell: Shell,
    status: str,
    output: list[dict[str, Any]],
    usage: Usage | None = None,
    error: dict[str, Any] | None = None,
    model: str | None = None,
) -> dict[str, Any]:
    """A whole `response` object; `status` is in_progress, completed, incomplete or failed."""
    r = shell.request
    text = r.text.model_dump(by_alias=True, exclude_none=True) if r.text is not None else {}
    text.setdefault("format", {"type": "text"})
    incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
    return {
        "id": shell.id,
        "object": "response",
        "created_at": shell.created_at,
        "status": status,
        "background": False,
        "error": error,
        "incomplete_details": incomplete,
        "instructions": r.instructions,
        "max_output_tokens": r.max_output_tokens,
        "max_tool_calls": None,
        "model": model or shell.model,
        "output": output,
        "parallel_tool_calls": True if r.parallel_tool_calls is None else r.parallel_tool_calls,
        "previous_response_id": r.previous_response_id,
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "store": r.store is not False,
        "temperature": 1.0 if r.temperature is None else r.temperature,
        "text": text,
        "tool_choice": "auto" if r.tool_choice is None else r.tool_choice,
        "tools": r.tools or [],
        "top_logprobs": 0,
        "top_p": 1.0 if r.top_p is None else r.top_p,
        "truncation": "disabled",
        "usage": usage_body(usage) if usage is not None else None,
        "user": r.user,
        "metadata": r.metadata or {},
    }


def status_of(finish: Finish) -> str:
    return "completed" if finish.reason in _COMPLETED else "incomplete"


_COMPLETED = frozenset({FinishReason.END_TURN, FinishReason.STOP_SEQUENCE, FinishReason.TOOL_CALLS})


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(item_id: str, text: str | None, status: str) -> dict[str, Any]:
    content = [] if text is None else [text_part(text)]
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": content}


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


@dataclass
class _Open:
    """The output item being streamed: a message's text or a function call's arguments."""

    index: int
    item_id: str
    kind: str  # "message" | "function_call"
    text: str = ""
    call_id: str = ""
    name: str = ""


@dataclass
class EventRenderer:
    """Renders one answer's events as Responses SSE events, numbering them; `output` collects the
    finished items. Feeding every event and ignoring the bytes gives the non-streaming answer too.
    Not thread-safe."""

    shell: Shell
    sequence_number: int = 0
    output: list[dict[str, Any]] = field(default_factory=list)
    current: _Open | None = None

    def event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self.sequence_number, **fields}
        self.sequence_number += 1
        return encode_event(payload, event=kind)

    def opening(self) -> list[bytes]:
        response = response_object(self.shell, "in_progress", [])
        return [
            self.event("response.created", response=response),
            self.event("response.in_progress", response=response),
        ]

    def delta(self, text: str) -> list[bytes]:
        out = [] if self._is_open("message") else [*self._close("completed"), *self._open_message()]
        assert self.current is not None
        self.current.text += text
        out.append(self.event("response.output_text.delta", **self._where(), delta=text, logprobs=[]))
        return out

    def call_start(self, start: ToolCallStart) -> list[bytes]:
        out = self._close("completed")
        self.current = _Open(len(self.output), new_item_id("fc"), "function_call", "", start.id, start.name)
        item = call_item(self.current.item_id, start.id, start.name, "", "in_progress")
        out.append(self.event("response.output_item.added", output_index=self.current.index, item=item))
        return out

    def call_delta(self, delta: ToolCallDelta) -> list[bytes]:
        if not self._is_open("function_call"):
            return []
        assert self.current is not None
        self.current.text += delta.arguments
        where = {"item_id": self.current.item_id, "output_index": self.current.index}
        return [self.event("response.function_call_arguments.delta", **where, delta=delta.arguments)]

    def closing(self, finish: Finish) -> tuple[list[bytes], dict[str, Any]]:
        """The closing events, and the final response object they announce."""
        status = status_of(finish)
        out = self._open_message() if not self.output and self.current is None else []
        out += self._close(status)
        response = response_object(self.shell, status, self.output, finish.usage, model=finish.model)
        out.append(self.event(f"response.{status}", response=response))
        return out, response

    def failure(self, exc: HotspareError) -> list[bytes]:
        body = error_reply(exc, ApiFormat.OPENAI_RESPONSES).body["error"]
        code = body.get("code") or body.get("type") or "server_error"
        error = {"code": code, "message": exc.message}
        if self.current is not None:  # left as it was: no closing events after a failure
            self.output.append(self._item(self.current, "incomplete"))
            self.current = None
        failed = response_object(self.shell, "failed", self.output, error=error)
        return [
            self.event("error", code=code, message=exc.message, param=body.get("param"), error=body),
            self.event("response.failed", response=failed),
        ]

    def _is_open(self, kind: str) -> bool:
        return self.current is not None and self.current.kind == kind

    def _where(self) -> dict[str, Any]:
        assert self.current is not None
        return {"item_id": self.current.item_id, "output_index": self.current.index, "content_index": 0}

    def _open_message(self) -> list[bytes]:
        self.current = _Open(len(self.output), new_item_id("msg"), "message")
        added = message_item(self.current.item_id, None, "in_progress")
        return [
            self.event("response.output_item.added", output_index=self.current.index, item=added),
            self.event("response.content_part.added", **self._where(), part=text_part("")),
        ]

    def _close(self, status: str) -> list[bytes]:
        """Finish the open item (if any) with `status`, appending it to `output`."""
        current, self.current = self.current, None
        if current is None:
            return []
        where = {"item_id": current.item_id, "output_index": current.index}
        item = self._item(current, status)
        if current.kind == "message":
            text = current.text
            done = [
                self.event("response.output_text.done", **where, content_index=0, text=text, logprobs=[]),
                self.event("response.content_part.done", **where, content_index=0, part=text_part(text)),
            ]
        else:
            args = current.text
            done = [
                self.event(
                    "response.function_call_arguments.done", **where, name=current.name, arguments=args
                )
            ]
        self.output.append(item)
        return [*done, self.event("response.output_item.done", output_index=current.index, item=item)]

    @staticmethod
    def _item(current: _Open, status: str) -> dict[str, Any]:
        if current.kind == "message":
            return message_item(current.item_id, current.text, status)
        return call_item(current.item_id, current.call_id, current.name, current.text, status)

    def feed(self, event: StreamEvent) -> list[bytes]:
        """The events for one core event (the Finish's closing events are `closing`'s)."""
        if isinstance(event, TextDelta):
            return self.delta(event.text)
        if isinstance(event, ToolCallStart):
            return self.call_start(event)
        if isinstance(event, ToolCallDelta):
            return self.call_delta(event)
        return []  # ContextFitted: nothing in this API shows it


async def final_response(events: AsyncIterator[StreamEvent], shell: Shell) -> dict[str, Any]:
    """The whole response to a non-streaming request. Closing is the caller's (or this ends `events`)."""
    renderer = EventRenderer(shell)
    async with aclosing(events) as stream:  # type: ignore[type-var]
        async for event in stream:
            if isinstance(event, Finish):
                return renderer.closing(event)[1]
            renderer.feed(event)
    raise BackendUnavailable("the answer ended without finishing")


async def stream_events(
    events: AsyncIterator[StreamEvent],
    renderer: EventRenderer,
    heartbeat_s: float,
    on_done: Callable[[dict[str, Any]], Awaitable[None]],
) -> AsyncIterator[bytes]:
    """The SSE body of a streamed answer; `on_done` gets the final response object once the answer
    finished. Closing this closes `events`."""
    for chunk in renderer.opening():
        yield chunk
    try:
        async with aclosing(paced_answer(events, heartbeat_s)) as paced:
            async for event in paced:
                if isinstance(event, Heartbeat):
                    yield encode_comment("keep-alive")
                elif isinstance(event, Finish):
                    closing, response = renderer.closing(event)
                    await on_done(response)
                    for chunk in closing:
                        yield chunk
                else:
                    for chunk in renderer.feed(event):
                        yield chunk
    except Exception as exc:  # the stream has begun: the error goes in-band
        for chunk in renderer.failure(client_error(exc)):
            yield chunk
