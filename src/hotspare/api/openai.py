"""OpenAI Chat Completions requests -> core types (answers are rendered by api/openai_render.py).

Requests: every field the real API accepts is accepted. Tools (`tools`, `tool_choice`,
`parallel_tool_calls`) and `response_format` become core types the local model honours (see
hotspare.agents); those it cannot honour (logprobs, service_tier, ...) are accepted and ignored, so a
client written for the cloud keeps working. Unknown fields are ignored too (api/unknown_fields.py
logs and counts them): the SDK's own objects grow fields (`annotations` on an assistant message) that a
tool loop sends back.

What the local engine serves is capped (see `check_local_limits`), as OpenAI caps it: `n` at most
MAX_CHOICES, at most MAX_STOP_SEQUENCES stop sequences of at most MAX_STOP_CHARS characters. A request
over a cap is refused with the reason on the local path; a passthrough forwards it unchanged.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from hotspare.api.wire import MediaPolicy, WireModel, check_stops, media_placeholder, text_as_parts
from hotspare.core.errors import InvalidRequest
from hotspare.core.types import (
    ChatRequest,
    JsonOutput,
    Message,
    Role,
    SamplingParams,
    ToolCall,
    ToolChoice,
    ToolChoiceMode,
    ToolSpec,
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


MAX_CHOICES = 128
"""`n` at most, as OpenAI refuses more."""
MAX_STOP_SEQUENCES = 4
"""Stop sequences at most, as OpenAI refuses more."""


def check_local_limits(body: ChatCompletionRequest) -> None:
    """Refuse (InvalidRequest) what the local engine will not serve: see the module docstring."""
    if (body.n or 1) > MAX_CHOICES:
        raise InvalidRequest(f"n: {body.n} choices; at most {MAX_CHOICES} are accepted", "n")
    check_stops(_stops(body), MAX_STOP_SEQUENCES, "stop")


def _stops(body: ChatCompletionRequest) -> list[str]:
    return [body.stop] if isinstance(body.stop, str) else (body.stop or [])


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
        num_choices=body.n or 1,
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
    stops = _stops(body)
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
