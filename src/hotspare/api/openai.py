"""OpenAI Chat Completions <-> core types.

Requests: every field the real API accepts is accepted. Tools (`tools`, `tool_choice`,
`parallel_tool_calls`) and `response_format` become core types the local model honours (see
hotspare.agents); those it cannot honour (logprobs, service_tier, ...) are accepted and ignored, so a
client written for the cloud keeps working. Unknown fields are refused, as OpenAI refuses them.
Answers: a `chat.completion`, or `chat.completion.chunk`s over SSE ending in `data: [DONE]`; tool
calls as `message.tool_calls` / `delta.tool_calls` with `finish_reason: tool_calls`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from hotspare.api.answer import Answer
from hotspare.api.errors import client_error, error_reply
from hotspare.api.sse import Heartbeat, encode_comment, encode_event, with_heartbeats
from hotspare.api.wire import MediaPolicy, WireModel, media_placeholder, text_as_parts
from hotspare.core.errors import BackendUnavailable, InvalidRequest
from hotspare.core.types import (
    ApiFormat,
    ChatRequest,
    ContextFitted,
    Finish,
    FinishReason,
    JsonOutput,
    Message,
    Role,
    SamplingParams,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    ToolChoice,
    ToolChoiceMode,
    ToolSpec,
    Usage,
)

# --- request -------------------------------------------------------------------------------------


class TextPart(WireModel):
    type: Literal["text"]
    text: str


class RefusalPart(WireModel):
    type: Literal["refusal"]
    refusal: str


class MediaPart(WireModel):
    """An image, audio or file part: understood, but the local model reads text only."""

    type: Literal["image_url", "input_audio", "file"]
    image_url: Any = None
    input_audio: Any = None
    file: Any = None


UserPart = Annotated[TextPart | MediaPart, Field(discriminator="type")]
AssistantPart = Annotated[TextPart | RefusalPart, Field(discriminator="type")]
TextContent = Annotated[list[TextPart], BeforeValidator(text_as_parts)]


class FunctionCall(WireModel):
    name: str
    arguments: str


class ToolCallModel(WireModel):
    id: str
    type: Literal["function"]
    function: FunctionCall


class SystemMessage(WireModel):
    role: Literal["system", "developer"]
    content: TextContent
    name: str | None = None


class UserMessage(WireModel):
    role: Literal["user"]
    content: Annotated[list[UserPart], BeforeValidator(text_as_parts)]
    name: str | None = None


class AssistantMessage(WireModel):
    role: Literal["assistant"]
    content: Annotated[list[AssistantPart], BeforeValidator(text_as_parts)] | None = None
    name: str | None = None
    tool_calls: list[ToolCallModel] | None = None
    refusal: str | None = None
    audio: Any = None
    function_call: Any = None


class ToolMessage(WireModel):
    role: Literal["tool"]
    content: TextContent
    tool_call_id: str


ChatMessage = Annotated[
    SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")
]


class FunctionSpec(WireModel):
    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=dict)
    strict: bool | None = None


class ToolModel(WireModel):
    type: Literal["function"]
    function: FunctionSpec


class StreamOptions(WireModel):
    include_usage: bool = False
    include_obfuscation: bool = True


class ChatCompletionRequest(WireModel):
    """POST /v1/chat/completions. Fields typed `Any` are accepted and ignored."""

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = Field(default=None, ge=1)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    tools: list[ToolModel] | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    response_format: Any = None
    logit_bias: Any = None
    service_tier: Any = None
    reasoning_effort: Any = None
    verbosity: Any = None
    modalities: Any = None
    audio: Any = None
    prediction: Any = None
    web_search_options: Any = None
    prompt_cache_key: Any = None
    prompt_cache_retention: Any = None
    safety_identifier: Any = None
    functions: Any = None
    function_call: Any = None

    @property
    def includes_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


def to_chat_request(
    body: ChatCompletionRequest, request_id: str = "", media: MediaPolicy = MediaPolicy.REJECT
) -> ChatRequest:
    """The core request for `body` (one choice of it: `n` is the caller's to repeat); raises
    InvalidRequest for what the local model cannot do at all."""
    messages = tuple(_to_message(message, index, media) for index, message in enumerate(body.messages))
    tools = tuple(
        ToolSpec(tool.function.name, tool.function.description, tool.function.parameters)
        for tool in body.tools or ()
    )
    return ChatRequest(
        model=body.model,
        messages=messages,
        sampling=_sampling(body),
        stream=bool(body.stream),
        tools=tools,
        request_id=request_id,
        tool_choice=_tool_choice(body.tool_choice),
        parallel_tool_calls=body.parallel_tool_calls is not False,
        json_output=_json_output(body.response_format),
    )


def media_kinds(body: ChatCompletionRequest) -> list[str]:
    """The kinds of media parts in `body` ("image_url", "file", ...), in order."""
    return [
        part.type
        for message in body.messages
        if isinstance(message, UserMessage)
        for part in message.content
        if isinstance(part, MediaPart)
    ]


def _tool_choice(value: Any) -> ToolChoice:
    if value is None or value == "auto":
        return ToolChoice()
    if value in ("none", "required"):
        return ToolChoice(ToolChoiceMode(value))
    if isinstance(value, dict) and value.get("type") == "function":
        name = (value.get("function") or {}).get("name") if isinstance(value.get("function"), dict) else None
        if isinstance(name, str):
            return ToolChoice(ToolChoiceMode.NAMED, name)
    if isinstance(value, dict) and value.get("type") == "allowed_tools":
        mode = (value.get("allowed_tools") or {}).get("mode", "auto")
        if mode in ("auto", "required"):
            return ToolChoice(ToolChoiceMode(mode))
    raise InvalidRequest(
        'tool_choice: expected "none", "auto", "required" or {"type": "function", "function": {"name": ...}}',
        "tool_choice",
    )


def _json_output(value: Any) -> JsonOutput | None:
    kind = value.get("type") if isinstance(value, dict) else None
    if value is None or kind == "text":
        return None
    if kind == "json_object":
        return JsonOutput()
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if isinstance(spec, dict) and isinstance(spec.get("name"), str) and isinstance(schema, dict | None):
            return JsonOutput(schema or {"type": "object"})
        raise InvalidRequest(
            "response_format.json_schema: needs a name and an object schema", "response_format.json_schema"
        )
    raise InvalidRequest(
        'response_format: type must be "text", "json_object" or "json_schema"', "response_format.type"
    )


def _sampling(body: ChatCompletionRequest) -> SamplingParams:
    stops = [body.stop] if isinstance(body.stop, str) else (body.stop or [])
    return SamplingParams(
        max_tokens=body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        seed=body.seed,
        stop=tuple(stop for stop in stops if stop),
        frequency_penalty=body.frequency_penalty or 0.0,
        presence_penalty=body.presence_penalty or 0.0,
    )


def _to_message(message: ChatMessage, index: int, media: MediaPolicy) -> Message:
    where = f"messages[{index}]"
    if isinstance(message, SystemMessage):
        return Message(Role.SYSTEM, _join_text(message.content))
    if isinstance(message, UserMessage):
        texts = []
        for number, part in enumerate(message.content):
            if isinstance(part, TextPart):
                texts.append(part.text)
            elif media is MediaPolicy.PLACEHOLDER:
                texts.append(media_placeholder(part.type))
            else:
                raise InvalidRequest(
                    f"{where}.content[{number}]: {part.type} content is not supported: the local model "
                    "reads text only",
                    f"{where}.content",
                )
        return Message(Role.USER, "\n".join(texts))
    if isinstance(message, AssistantMessage):
        text = _join_text(message.content or [])
        calls = tuple(ToolCall(c.id, c.function.name, c.function.arguments) for c in message.tool_calls or ())
        return Message(Role.ASSISTANT, text, tool_calls=calls)
    return Message(Role.TOOL, _join_text(message.content), tool_call_id=message.tool_call_id)


def _join_text(parts: list[TextPart] | list[UserPart] | list[AssistantPart]) -> str:
    return "\n".join(part.text for part in parts if isinstance(part, TextPart))


# --- response ------------------------------------------------------------------------------------

_FINISH_REASONS = {
    FinishReason.END_TURN: "stop",
    FinishReason.STOP_SEQUENCE: "stop",
    FinishReason.LENGTH: "length",
    FinishReason.TOOL_CALLS: "tool_calls",
}


def finish_reason(reason: FinishReason) -> str:
    return _FINISH_REASONS[reason]


def usage_body(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


def completion_body(answers: list[Answer], completion_id: str, created: int) -> dict[str, Any]:
    """A whole `chat.completion` for answers that have finished (one choice each; usage summed)."""
    usage = Usage(
        answers[0].finish.usage.input_tokens,
        sum(a.finish.usage.output_tokens for a in answers),
        answers[0].finish.usage.cached_tokens,
    )
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": answers[0].finish.model,
        "choices": [_choice(index, answer) for index, answer in enumerate(answers)],
        "usage": usage_body(usage),
        "system_fingerprint": None,
    }


def _choice(index: int, answer: Answer) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": answer.text, "refusal": None}
    if answer.tool_calls:
        message["content"] = answer.text or None
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in answer.tool_calls
        ]
    return {
        "index": index,
        "message": message,
        "logprobs": None,
        "finish_reason": finish_reason(answer.finish.reason),
    }


class ChunkStream:
    """Renders one answer's events as `chat.completion.chunk` SSE events.

    `model` names the model in the chunks before the answer finishes; the closing chunks name the one
    the `Finish` reports.
    """

    def __init__(self, completion_id: str, created: int, model: str, include_usage: bool) -> None:
        self.completion_id = completion_id
        self.created = created
        self.model = model
        self.include_usage = include_usage

    def chunk(self, choices: list[dict[str, Any]], usage: Usage | None = None) -> bytes:
        body: dict[str, Any] = {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": choices,
        }
        if self.include_usage:
            body["usage"] = usage_body(usage) if usage is not None else None
        return encode_event(body)

    def delta(self, delta: dict[str, Any], reason: FinishReason | None = None, choice: int = 0) -> bytes:
        finish = finish_reason(reason) if reason is not None else None
        return self.chunk([{"index": choice, "delta": delta, "logprobs": None, "finish_reason": finish}])

    def event(self, event: TextDelta | ToolCallStart | ToolCallDelta, choice: int = 0) -> bytes:
        """The chunk of one answer event: text content, or a tool call's start or argument piece."""
        if isinstance(event, TextDelta):
            return self.delta({"content": event.text}, choice=choice)
        call: dict[str, Any] = {"index": event.index}
        if isinstance(event, ToolCallStart):
            call |= {"id": event.id, "type": "function", "function": {"name": event.name, "arguments": ""}}
        else:
            call["function"] = {"arguments": event.arguments}
        return self.delta({"tool_calls": [call]}, choice=choice)

    def finish(self, finish: Finish) -> list[bytes]:
        return [*self.finish_choice(finish), *self.close(finish.usage)]

    def finish_choice(self, finish: Finish, choice: int = 0) -> list[bytes]:
        self.model = finish.model
        return [self.delta({}, finish.reason, choice)]

    def close(self, usage: Usage) -> list[bytes]:
        """The usage chunk (if asked for) and `[DONE]`, after every choice has finished."""
        closing = [self.chunk([], usage)] if self.include_usage else []
        return [*closing, encode_event("[DONE]")]


async def stream_chunks(
    events: AsyncIterator[StreamEvent],
    chunks: ChunkStream,
    heartbeat_s: float,
    more_choices: Sequence[Callable[[], AsyncIterator[StreamEvent]]] = (),
) -> AsyncIterator[bytes]:
    """The SSE body of a streamed answer: choice 0 from `events`, then (n > 1) one more choice from
    each of `more_choices`, opened in turn. An error after the stream began becomes an in-band
    `{"error": ...}` event (what the OpenAI SDKs raise from). Closing this closes what is open."""
    output_tokens, finish = 0, None
    try:
        for choice, opened in enumerate([lambda: events, *more_choices]):
            finish = None
            async for chunk in _choice_chunks(opened(), chunks, heartbeat_s, choice):
                if isinstance(chunk, Finish):
                    finish = chunk
                else:
                    yield chunk
            if finish is None:
                raise BackendUnavailable("the answer ended without finishing")
            output_tokens += finish.usage.output_tokens
    except Exception as exc:  # the stream has begun: the error goes in-band, in the API's shape
        yield encode_event(error_reply(client_error(exc), ApiFormat.OPENAI_CHAT).body)
        return
    assert finish is not None
    for chunk in chunks.close(dataclasses.replace(finish.usage, output_tokens=output_tokens)):
        yield chunk


async def _choice_chunks(
    events: AsyncIterator[StreamEvent], chunks: ChunkStream, heartbeat_s: float, choice: int
) -> AsyncIterator[bytes | Finish]:
    """One choice's chunks, then its Finish (not rendered: the caller closes the stream)."""
    yield chunks.delta({"role": "assistant", "content": ""}, choice=choice)
    async with aclosing(with_heartbeats(events, heartbeat_s)) as paced:
        async for event in paced:
            if isinstance(event, Heartbeat):
                yield encode_comment("keep-alive")
            elif isinstance(event, ContextFitted):
                continue  # told in a response header
            elif isinstance(event, TextDelta | ToolCallStart | ToolCallDelta):
                yield chunks.event(event, choice)
            else:
                for chunk in chunks.finish_choice(event, choice):
                    yield chunk
                yield event
                return
