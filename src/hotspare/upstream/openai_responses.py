"""The OpenAI Responses wire format of an OpenAI-kind upstream, for passthrough: reading its SSE events
and rendering the rest of a stream that another backend took over.

The parser follows the one assistant message whose text the client is reading; other output items
(reasoning, tool calls) are passed through untouched, and a tool call marks the answer as one a
takeover cannot continue as text. Rendered events continue the upstream's `sequence_number`s.
"""

from __future__ import annotations

import json
from typing import Any

from hotspare.core.errors import FailureClass, UpstreamError
from hotspare.core.types import Finish, FinishReason, StreamEvent, Usage
from hotspare.formats.sse import encode_event
from hotspare.upstream.sse import SseEvent
from hotspare.upstream.stream import StreamParser

RESPONSES_PATH = "/v1/responses"

TAKEOVER_COMMENT = b": hotspare takeover\n\n"
"""Sent (SSE comment, ignored by clients) before the events of a stream another backend finished, so
that whoever records the stream knows the upstream's own copy of the response is incomplete."""

_TERMINAL = {"response.completed": "completed", "response.incomplete": "incomplete"}
_TEXT_ITEMS = frozenset({"message", "reasoning"})


def _event(payload: dict[str, Any]) -> bytes:
    return encode_event(payload, payload["type"])  # the framing the api renderers use (formats/sse.py)


class ResponsesParser(StreamParser):
    def __init__(self, upstream: str) -> None:
        super().__init__()
        self._upstream = upstream
        self.response: dict[str, Any] = {}  # the latest whole response object the upstream sent
        self.done_items: dict[int, dict[str, Any]] = {}  # output_index -> finished item
        self.message_id: str | None = None
        self.message_index: int | None = None
        self.next_index = 0  # the output_index a new item would get
        self.next_sequence = 0
        self.usage: Usage | None = None
        self.continued = ""  # text rendered after a takeover

    def feed(self, event: SseEvent) -> list[StreamEvent]:
        if not event.data:
            return []
        data = self._loads(self._upstream, event.data)
        kind = data.get("type")
        if isinstance(data.get("sequence_number"), int):
            self.next_sequence = data["sequence_number"] + 1
        if kind in ("error", "response.failed"):
            raise UpstreamError(FailureClass.STREAM_ERROR, f"{kind} in stream", upstream=self._upstream)
        if isinstance(data.get("response"), dict):
            self.response = data["response"]
        if kind == "response.output_item.added":
            self._item_added(data)
        elif kind == "response.output_item.done":
            self._item_done(data)
        elif kind == "response.output_text.delta" and data.get("item_id") == self.message_id:
            delta = data.get("delta")
            if isinstance(delta, str) and delta:
                return [self._note_text(delta)]
        elif isinstance(kind, str) and kind.endswith(".delta"):
            self.num_content_events += 1  # reasoning or tool-call arguments: content, for idle_s
        elif kind in _TERMINAL:
            self.is_done = True
            return [self._finish(self._terminal_reason(kind))]
        return []

    def _terminal_reason(self, kind: str) -> FinishReason:
        if kind != "response.incomplete":
            return FinishReason.END_TURN
        details = self.response.get("incomplete_details") or {}
        filtered = isinstance(details, dict) and details.get("reason") == "content_filter"
        return FinishReason.CONTENT_FILTER if filtered else FinishReason.LENGTH

    def _item_added(self, data: dict[str, Any]) -> None:
        item = data.get("item")
        index = data.get("output_index")
        if not isinstance(item, dict) or not isinstance(index, int):
            raise self._malformed(self._upstream, "output_item.added without item or output_index")
        self.next_index = max(self.next_index, index + 1)
        self.has_content = True
        if item.get("type") == "message" and self.message_id is None:
            self.message_id, self.message_index = str(item.get("id", "")), index
        elif item.get("type") not in _TEXT_ITEMS:
            self._note_other()

    def _item_done(self, data: dict[str, Any]) -> None:
        item, index = data.get("item"), data.get("output_index")
        if isinstance(item, dict) and isinstance(index, int):
            self.done_items[index] = item

    def _finish(self, reason: FinishReason) -> Finish:
        usage = self.response.get("usage")
        if isinstance(usage, dict):
            details = usage.get("input_tokens_details") or {}
            self.usage = Usage(
                int(usage.get("input_tokens", 0)),
                int(usage.get("output_tokens", 0)),
                int(details.get("cached_tokens", 0) or 0),
            )
        return Finish(
            reason, self.usage or Usage(0, self.num_text_events), str(self.response.get("model", ""))
        )

    def stated_finish(self) -> Finish | None:
        return None  # the terminal event is the only statement of an end

    # --- rendering -------------------------------------------------------------------------------
    def _render(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self.next_sequence, **fields}
        self.next_sequence += 1
        return _event(payload)

    def _where(self) -> dict[str, Any]:
        return {"item_id": self.message_id, "output_index": self.message_index, "content_index": 0}

    def _open_message(self) -> bytes:
        if self.message_id is not None and self.message_index is not None:
            return b""
        self.message_id, self.message_index = (
            "msg_takeover_" + str(self.response.get("id", "")),
            self.next_index,
        )
        self.next_index += 1
        item = {
            "id": self.message_id,
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return self._render(
            "response.output_item.added", output_index=self.message_index, item=item
        ) + self._render("response.content_part.added", **self._where(), part=part)

    def render_delta(self, text: str) -> bytes:
        head = TAKEOVER_COMMENT if not self.continued else b""
        out = head + self._open_message()
        self.continued += text
        return out + self._render("response.output_text.delta", **self._where(), delta=text, logprobs=[])

    def _message(self, status: str) -> dict[str, Any]:
        part = {"type": "output_text", "text": self.text + self.continued, "annotations": [], "logprobs": []}
        return {
            "id": self.message_id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": [part],
        }

    def _output(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        items = dict(self.done_items)
        if self.message_index is not None:
            items[self.message_index] = message
        return [items[index] for index in sorted(items)]

    def render_finish(self, finish: Finish) -> bytes:
        status = _status(finish)
        out = (TAKEOVER_COMMENT if not self.continued else b"") + self._open_message()
        message = self._message(status)
        part = message["content"][0]
        out += self._render("response.output_text.done", **self._where(), text=part["text"], logprobs=[])
        out += self._render("response.content_part.done", **self._where(), part=part)
        out += self._render("response.output_item.done", output_index=self.message_index, item=message)
        input_tokens = self.usage.input_tokens if self.usage else finish.usage.input_tokens
        output_tokens = self.num_text_events + finish.usage.output_tokens
        usage = {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
        }
        reason = "content_filter" if finish.reason is FinishReason.CONTENT_FILTER else "max_output_tokens"
        incomplete = {"reason": reason} if status == "incomplete" else None
        response = {
            **self.response,
            "status": status,
            "incomplete_details": incomplete,
            "output": self._output(message),
            "usage": usage,
        }
        return out + self._render(f"response.{status}", response=response)

    def render_error(self, error: UpstreamError | None, message: str) -> bytes:
        body = {"type": "server_error", "code": "server_error", "message": message, "param": None}
        failed = {**self.response, "status": "failed", "error": {"code": "server_error", "message": message}}
        return self._render(
            "error", code="server_error", message=message, param=None, error=body
        ) + self._render("response.failed", response=failed)

    def render_message(self, text: str, finish: Finish) -> bytes:
        """The upstream's own final response object (a non-streaming client's answer)."""
        if self.response.get("status") in ("completed", "incomplete"):
            return json.dumps(self.response).encode()
        message = self._message(_status(finish))
        return json.dumps({**self.response, "output": self._output(message)}).encode()


def _status(finish: Finish) -> str:
    complete = finish.reason in (FinishReason.END_TURN, FinishReason.STOP_SEQUENCE, FinishReason.TOOL_CALLS)
    return "completed" if complete else "incomplete"
