"""OpenAI Chat Completions <-> core types.

Requests: every field the real API accepts is accepted; those the local model cannot honour
(logprobs, response_format, tool_choice, service_tier, ...) are accepted and ignored, so a client
written for the cloud keeps working. Unknown fields are refused, as OpenAI refuses them.
Answers: a `chat.completion`, or `chat.completion.chunk`s over SSE ending in `data: [DONE]`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from hotspare.api.errors import client_error, error_reply
from hotspare.api.sse import Heartbeat, encode_comment, encode_event, with_heartbeats
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


def to_chat_request(body: ChatCompletionRequest, request_id: str = "") -> ChatRequest:
    """The core request for `body`; raises InvalidRequest for what the local model cannot do at all."""
    if body.n is not None and body.n > 1:
        raise InvalidRequest(f"n: only n=1 is supported (the local model answers once), got {body.n}", "n")
    messages = tuple(_to_message(message, index) for index, message in enumerate(body.messages))
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


def _to_message(message: ChatMessage, index: int) -> Message:
    where = f"messages[{index}]"
    if isinstance(message, SystemMessage):
        return Message(Role.SYSTEM, _join_text(message.content))
    if isinstance(message, UserMessage):
        for number, part in enumerate(message.content):
            if isinstance(part, MediaPart):
                raise InvalidRequest(
                    f"{where}.content[{number}]: {part.type} content is not supported: the local model "
                    "reads text only",
                    f"{where}.content",
                )
        return Message(Role.USER, _join_text(message.content))
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


def completion_body(text: str, finish: Finish, completion_id: str, created: int) -> dict[str, Any]:
    """A whole `chat.completion` for an answer that has finished."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": finish.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": finish_reason(finish.reason),
            }
        ],
        "usage": usage_body(finish.usage),
        "system_fingerprint": None,
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

    def delta(self, delta: dict[str, Any], reason: FinishReason | None = None) -> bytes:
        finish = finish_reason(reason) if reason is not None else None
        return self.chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}])

    def finish(self, finish: Finish) -> list[bytes]:
        self.model = finish.model
        closing = [self.delta({}, finish.reason)]
        if self.include_usage:
            closing.append(self.chunk([], finish.usage))
        return [*closing, encode_event("[DONE]")]


async def stream_chunks(
    events: AsyncIterator[StreamEvent], chunks: ChunkStream, heartbeat_s: float
) -> AsyncIterator[bytes]:
    """The SSE body of a streamed answer. An error after the stream began becomes an in-band
    `{"error": ...}` event (what the OpenAI SDKs raise from). Closing this closes `events`."""
    yield chunks.delta({"role": "assistant", "content": ""})
    async with aclosing(with_heartbeats(events, heartbeat_s)) as paced:
        try:
            async for event in paced:
                if isinstance(event, Heartbeat):
                    yield encode_comment("keep-alive")
                elif isinstance(event, TextDelta):
                    yield chunks.delta({"content": event.text})
                else:
                    for chunk in chunks.finish(event):
                        yield chunk
                    return
            raise BackendUnavailable("the answer ended without finishing")
        except Exception as exc:  # the stream has begun: the error goes in-band, in the API's shape
            yield encode_event(error_reply(client_error(exc), ApiFormat.OPENAI_CHAT).body)
