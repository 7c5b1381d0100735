"""Anthropic Messages requests -> core types (answers are rendered by api/anthropic_render.py).

Requests: every field the real API accepts is accepted. Custom tools, `tool_choice` and JSON output
(`output_config.format` / `output_format`) become core types the local model honours (see
hotspare.agents); what it cannot honour (thinking, metadata, service_tier, cache_control,
context_management, ...) is accepted and ignored, so a client written for Claude keeps working.
Unknown fields are ignored too (api/unknown_fields.py logs and counts them): the SDK's own blocks grow
fields (`toolset_name` on a tool_use block in anthropic 2.16) that a tool loop sends back.

What the local engine serves is capped (see `check_local_limits`): at most MAX_STOP_SEQUENCES stop
sequences of at most MAX_STOP_CHARS characters each, because every one is checked against every token
of every sequence in a batch. A request over a cap is refused with the reason on the local path; a
passthrough forwards it unchanged (the provider decides).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Discriminator, Field, Tag

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
    content: Annotated[list[ResultPart], BeforeValidator(text_as_parts)] | None = None
    is_error: bool | None = None
    cache_control: Any = None


class ThinkingBlock(WireModel):
    """Earlier reasoning of a Claude model: not shown to the local model."""

    type: Literal["thinking", "redacted_thinking"]
    thinking: str = ""
    signature: str = ""
    data: str = ""


class OtherBlock(WireModel):
    """Any other block type (image, document, server tool results, ...): refused when converted."""

    keeps_extras = True
    type: str


_TAGGED_BLOCKS = {"text", "tool_use", "tool_result", "thinking", "redacted_thinking"}


def _result_part_tag(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return "text" if kind == "text" else "other"


ResultPart = Annotated[
    Annotated[TextBlock, Tag("text")] | Annotated[OtherBlock, Tag("other")], Discriminator(_result_part_tag)
]
ToolResultBlock.model_rebuild()


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
    # "system" mid-conversation: the mid-conversation-system beta (Claude Code sends it)
    role: Literal["user", "assistant", "system"]
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


MAX_STOP_SEQUENCES = 64
"""Stop sequences the local engine accepts in one request (Anthropic documents no limit)."""


def check_local_limits(body: Conversation) -> None:
    """Refuse (InvalidRequest) what the local engine will not serve: see the module docstring."""
    if isinstance(body, MessagesRequest):
        check_stops(body.stop_sequences or [], MAX_STOP_SEQUENCES, "stop_sequences")


def to_chat_request(
    body: Conversation, request_id: str = "", media: MediaPolicy = MediaPolicy.REJECT
) -> ChatRequest:
    """The core request for `body`; raises InvalidRequest for content the local model cannot read
    (media, unless `media` is PLACEHOLDER) or a malformed tool_choice / output format."""
    system = "\n".join(block.text for block in body.system or ())
    messages = [Message(Role.SYSTEM, system)] if system else []
    for index, message in enumerate(body.messages):
        messages.extend(_to_messages(message, index, media))
    choice, parallel = _tool_choice(body.tool_choice)
    return ChatRequest(
        model=body.model,
        messages=tuple(messages),
        sampling=_sampling(body) if isinstance(body, MessagesRequest) else SamplingParams(),
        stream=bool(body.stream) if isinstance(body, MessagesRequest) else False,
        tools=_tools(body.tools or []),
        request_id=request_id,
        tool_choice=choice,
        parallel_tool_calls=parallel,
        json_output=_json_output(body),
    )


def media_kinds(body: Conversation) -> list[str]:
    """The kinds of blocks in `body` the local model cannot read ("image", "document", ...), in order."""
    kinds = []
    for message in body.messages:
        for block in message.content:
            if isinstance(block, OtherBlock):
                kinds.append(block.type)
            elif isinstance(block, ToolResultBlock):
                kinds.extend(part.type for part in block.content or () if isinstance(part, OtherBlock))
    return kinds


def _tool_choice(value: Any) -> tuple[ToolChoice, bool]:
    """The tool choice and whether parallel calls are allowed."""
    if value is None:
        return ToolChoice(), True
    kind = value.get("type") if isinstance(value, dict) else None
    parallel = not (isinstance(value, dict) and value.get("disable_parallel_tool_use"))
    if kind == "tool" and isinstance(value.get("name"), str):
        return ToolChoice(ToolChoiceMode.NAMED, value["name"]), parallel
    modes = {"auto": ToolChoiceMode.AUTO, "any": ToolChoiceMode.REQUIRED, "none": ToolChoiceMode.NONE}
    if kind in modes:
        return ToolChoice(modes[kind]), parallel
    raise InvalidRequest(
        'tool_choice: expected {"type": "auto" | "any" | "none"} or {"type": "tool", "name": ...}',
        "tool_choice",
    )


def _json_output(body: Conversation) -> JsonOutput | None:
    """JSON output from `output_config.format` (or the older beta `output_format`)."""
    config = body.output_config if isinstance(body.output_config, dict) else {}
    where, spec = "output_config.format", config.get("format")
    if spec is None:
        where, spec = "output_format", body.output_format
    if spec is None:
        return None
    if isinstance(spec, dict) and spec.get("type") == "json_schema" and isinstance(spec.get("schema"), dict):
        return JsonOutput(spec["schema"])
    raise InvalidRequest(f'{where}: expected {{"type": "json_schema", "schema": {{...}}}}', where)


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


def _to_messages(message: InputMessage, index: int, media: MediaPolicy) -> list[Message]:
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
            where = f"messages[{index}].content[{number}].content"
            text = "\n".join(_text_of(part, where, media) for part in block.content or ())
            is_error = bool(block.is_error)
            results.append(Message(Role.TOOL, text, tool_call_id=block.tool_use_id, is_error=is_error))
        elif isinstance(block, OtherBlock):
            texts.append(_text_of(block, f"messages[{index}].content[{number}]", media))
    text = "\n".join(texts)
    if message.role == "system":
        return [Message(Role.SYSTEM, text)]
    if message.role == "assistant":
        return [Message(Role.ASSISTANT, text, tool_calls=tuple(calls))]
    return [*results, Message(Role.USER, text)] if text or not results else results


def _text_of(block: TextBlock | OtherBlock, where: str, media: MediaPolicy) -> str:
    if isinstance(block, TextBlock):
        return block.text
    if media is MediaPolicy.PLACEHOLDER:
        return media_placeholder(block.type)
    raise InvalidRequest(
        f"{where}: {block.type} content is not supported: the local model reads text only",
        where.rsplit("[", 1)[0] if where.endswith("]") else where,
    )
