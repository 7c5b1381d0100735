"""OpenAI Chat Completions upstream (any OpenAI-compatible server): request JSON, SSE chunks, errors,
stream continuation."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from hotspare.core.errors import BackendUnavailable, FailureClass, UpstreamError
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
from hotspare.formats.openai_chat import FINISH_NAMES, FINISH_REASONS, error_event
from hotspare.formats.sse import encode_event
from hotspare.upstream.base import ClientCall, Upstream
from hotspare.upstream.openai_responses import RESPONSES_PATH, ResponsesParser
from hotspare.upstream.sse import SseEvent
from hotspare.upstream.stream import StreamParser


def _data(payload: Mapping[str, Any] | str) -> bytes:
    return encode_event(payload)  # the framing the api renderers use (formats/sse.py)


class OpenAIParser(StreamParser):
    """Follows choice 0. With `num_choices` > 1 (a passthrough client's `n`), the answer is complete
    only when every choice stated its finish, and a takeover is refused: it could finish choice 0
    only, and the other choices would end silently cut (the client gets the error event instead)."""

    def __init__(self, upstream: str, include_usage: bool, num_choices: int = 1) -> None:
        super().__init__()
        self._upstream = upstream
        self.include_usage = include_usage  # whether the client asked for the usage chunk
        self.num_choices = num_choices
        self.finished_choices: set[int] = set()
        self.id = ""
        self.created = 0
        self.model = ""
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.tool_calls: dict[int, int] = {}  # the chunk's tool call index -> tool call number

    def feed(self, event: SseEvent) -> list[StreamEvent]:
        if not event.data:
            return []
        if event.data.strip() == "[DONE]":
            self.is_done = True
            return [self._finish()]
        data = self._loads(self._upstream, event.data)
        if data.get("error"):
            raise UpstreamError(FailureClass.STREAM_ERROR, "error in stream", upstream=self._upstream)
        self.id = str(data.get("id", self.id))
        self.created = int(data.get("created", self.created) or 0)
        self.model = str(data.get("model", self.model))
        usage = data.get("usage")
        if isinstance(usage, dict):
            self.usage = Usage(int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)))
        choices = data.get("choices")
        if not isinstance(choices, list):
            raise self._malformed(self._upstream, "chunk without choices")
        out: list[StreamEvent] = []
        for choice in choices:
            if isinstance(choice, dict) and choice.get("finish_reason") is not None:
                self.finished_choices.add(int(choice.get("index", 0)))
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            self._on_finish_reason(choice.get("finish_reason"))
            delta = choice.get("delta") or {}
            if delta.get("tool_calls") or delta.get("function_call"):
                self._note_other()
            text = delta.get("content")
            if isinstance(text, str) and text:
                out.append(self._note_text(text))
            for call in delta.get("tool_calls") or ():
                out.extend(self._on_tool_call(call))
        return out

    def _on_finish_reason(self, reason: object) -> None:
        if reason is None:
            return
        if reason not in FINISH_REASONS:
            raise UpstreamError(
                FailureClass.STREAM_ERROR,
                f"unknown finish_reason {str(reason)[:40]!r}",
                upstream=self._upstream,
            )
        self.finish_reason = str(reason)

    def _on_tool_call(self, call: Any) -> list[StreamEvent]:
        """A `delta.tool_calls` entry: the call's start (its first entry has id and name), then
        pieces of its arguments."""
        index = call.get("index") if isinstance(call, dict) else None
        if not isinstance(index, int):
            raise self._malformed(self._upstream, "tool call without an index")
        function = call.get("function") or {}
        out: list[StreamEvent] = []
        if index not in self.tool_calls:
            call_id, name = call.get("id"), function.get("name")
            if not isinstance(call_id, str) or not isinstance(name, str):
                raise self._malformed(self._upstream, "tool call without id and name")
            self.tool_calls[index] = len(self.tool_calls)
            out.append(ToolCallStart(self.tool_calls[index], call_id, name))
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            out.append(ToolCallDelta(self.tool_calls[index], arguments))
        return out

    def _finish(self) -> Finish:
        reason = FINISH_REASONS.get(self.finish_reason or "", FinishReason.END_TURN)
        usage = self.usage or Usage(0, self.num_text_events)
        return Finish(reason, usage, self.model)

    def render_message(self, text: str, finish: Finish) -> bytes:
        prompt = self.usage.input_tokens if self.usage else finish.usage.input_tokens
        completion = finish.usage.output_tokens
        message = {"role": "assistant", "content": text, "refusal": None}
        body = {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": FINISH_NAMES[finish.reason],
                }
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        }
        return json.dumps(body).encode()

    @property
    def is_continuable(self) -> bool:
        return super().is_continuable and self.num_choices == 1

    def stated_finish(self) -> Finish | None:
        if self.finish_reason is None or len(self.finished_choices) < self.num_choices:
            return None
        return self._finish()

    def _chunk(self, model: str, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return _data(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": model,
                "choices": choices,
                **extra,
            }
        )

    def render_delta(self, text: str) -> bytes:
        return self._chunk(self.model, [{"index": 0, "delta": {"content": text}, "finish_reason": None}])

    def render_finish(self, finish: Finish) -> bytes:
        out = b""
        if self.finish_reason is None:
            choice = {"index": 0, "delta": {}, "finish_reason": FINISH_NAMES[finish.reason]}
            out += self._chunk(finish.model, [choice])
        if self.include_usage:
            prompt = self.usage.input_tokens if self.usage else finish.usage.input_tokens
            completion = self.num_text_events + finish.usage.output_tokens
            usage = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            }
            out += self._chunk(finish.model, [], usage=usage)
        return out + _data("[DONE]")

    def render_terminator(self) -> bytes:
        return _data("[DONE]")

    def render_error(self, error: UpstreamError | None, message: str) -> bytes:
        return error_event(BackendUnavailable(message))


class OpenAIUpstream(Upstream):
    """Chat Completions, and passthrough of the Responses API (upstream/openai_responses.py)."""

    kind = ApiFormat.OPENAI_CHAT
    chat_path = "/v1/chat/completions"

    def new_parser(self, client_body: Mapping[str, Any] | None) -> StreamParser:
        body = client_body or {}
        options = body.get("stream_options") or {}
        n = body.get("n")
        num_choices = n if isinstance(n, int) and n > 1 else 1
        return OpenAIParser(
            self.name, include_usage=bool(options.get("include_usage")), num_choices=num_choices
        )

    def passes_through(self, api: ApiFormat) -> bool:
        return api in (ApiFormat.OPENAI_CHAT, ApiFormat.OPENAI_RESPONSES)

    def passthrough_path(self, api: ApiFormat) -> str:
        return RESPONSES_PATH if api is ApiFormat.OPENAI_RESPONSES else self.chat_path

    def passthrough_parser(self, call: ClientCall) -> StreamParser:
        if call.api_format is ApiFormat.OPENAI_RESPONSES:
            return ResponsesParser(self.name)
        return super().passthrough_parser(call)

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"authorization": f"Bearer {key}"}

    def default_headers(self) -> dict[str, str]:
        return {}

    def classify_error_body(self, status: int, body: Mapping[str, Any]) -> FailureClass | None:
        error = body.get("error")
        code = error.get("code") if isinstance(error, dict) else None
        if status == 400 and code == "context_length_exceeded":
            return FailureClass.CONTEXT_LENGTH
        return None

    def build_body(self, request: ChatRequest) -> dict[str, Any]:
        s = request.sampling
        body: dict[str, Any] = {
            "model": self.config.upstream_model(request.model),
            "messages": [_message(m) for m in request.messages],
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": s.temperature,
            **_tool_fields(request),
        }
        if s.max_tokens is not None:
            body["max_tokens"] = s.max_tokens
        if s.top_p < 1.0:
            body["top_p"] = s.top_p
        if s.stop:
            body["stop"] = list(s.stop)
        if s.seed is not None:
            body["seed"] = s.seed
        if s.frequency_penalty:
            body["frequency_penalty"] = s.frequency_penalty
        if s.presence_penalty:
            body["presence_penalty"] = s.presence_penalty
        return body


def _message(m: Message) -> dict[str, Any]:
    """One core message as a Chat Completions message: tool calls as `tool_calls`, a tool result as
    a `tool` message (which has no error flag: an error result says so in its text)."""
    if m.role is Role.TOOL:
        content = f"Error: {m.content}" if m.is_error else m.content
        return {"role": "tool", "tool_call_id": m.tool_call_id or "", "content": content}
    if m.role is Role.ASSISTANT and m.tool_calls:
        calls = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments or "{}"}}
            for c in m.tool_calls
        ]
        return {"role": "assistant", "content": m.content or None, "tool_calls": calls}
    return {"role": str(m.role), "content": m.content}


def _tool_fields(request: ChatRequest) -> dict[str, Any]:
    """`tools`, `tool_choice` and `parallel_tool_calls` for a request that offers tools."""
    if not request.tools:
        return {}
    tools = [
        {
            "type": "function",
            "function": {
                "name": t.name,
                "description": t.description,
                "parameters": t.parameters or {"type": "object", "properties": {}},
            },
        }
        for t in request.tools
    ]
    choice = request.tool_choice
    fields: dict[str, Any] = {"tools": tools}
    if choice.mode is ToolChoiceMode.NAMED:
        fields["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    elif choice.mode is not ToolChoiceMode.AUTO:
        fields["tool_choice"] = str(choice.mode)  # "none" | "required"
    if not request.parallel_tool_calls:
        fields["parallel_tool_calls"] = False
    return fields
