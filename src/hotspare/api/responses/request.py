"""OpenAI Responses requests <-> core types.

A request is a top-level body (unknown fields ignored, see api/unknown_fields.py) whose `input`
is a string or a list of items. Items are read by their `type`; fields of an item that hotspare does
not use are ignored, because clients echo back whole output items (ids, statuses, annotations).

`to_chat_request` turns the earlier turns of a conversation (resolved from the store) plus this
request into one `ChatRequest`, and says what, if anything, only an upstream speaking the Responses
format could serve (`Conversion.local_refusal`): built-in tools, images and files, item references,
forced tool calls and structured output, none of which the local model can honour yet.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hotspare.api.errors import invalid_body
from hotspare.api.wire import WireModel
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


class TextFormat(WireModel):
    type: Literal["text", "json_schema", "json_object"]
    name: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextConfig(WireModel):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ResponsesRequest(WireModel):
    """POST /v1/responses. Fields typed `Any` are accepted and not used by the local model."""

    model: str
    input: str | list[dict[str, Any]] | None = None
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    store: bool | None = None
    stream: bool | None = None
    previous_response_id: str | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    stream_options: Any = None
    include: Any = None
    reasoning: Any = None
    truncation: Any = None
    max_tool_calls: Any = None
    top_logprobs: Any = None
    service_tier: Any = None
    background: Any = None
    prompt: Any = None
    prompt_cache_key: Any = None
    prompt_cache_retention: Any = None
    safety_identifier: Any = None
    conversation: Any = None
    context_management: Any = None
    client_metadata: Any = None


def input_items(body: ResponsesRequest) -> list[dict[str, Any]]:
    """The request's `input` as a list of items (a string is one user message)."""
    if body.input is None:
        return []
    if isinstance(body.input, str):
        return [{"type": "message", "role": "user", "content": body.input}]
    return body.input


# --- items ---------------------------------------------------------------------------------------


class _Item(BaseModel):
    """Lenient: clients send back output items whole, with fields the local model has no use for."""

    model_config = ConfigDict(extra="ignore", frozen=True)


ItemT = TypeVar("ItemT", bound=_Item)


class MessageItem(_Item):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[dict[str, Any]]


class FunctionCallItem(_Item):
    type: Literal["function_call", "custom_tool_call"]
    call_id: str
    name: str
    arguments: str = ""
    input: str | None = None  # custom tools carry free text instead of JSON arguments


class FunctionCallOutputItem(_Item):
    type: Literal["function_call_output", "custom_tool_call_output"]
    call_id: str
    output: str | list[dict[str, Any]]


# Items that record a built-in tool's work (or a model's hidden reasoning): no text the local model
# could use, so a conversation carrying them from an upstream's turns continues without them.
SKIPPED_ITEM_TYPES = frozenset(
    {
        "reasoning",
        "web_search_call",
        "file_search_call",
        "computer_call",
        "computer_call_output",
        "image_generation_call",
        "code_interpreter_call",
        "local_shell_call",
        "local_shell_call_output",
        "shell_call",
        "shell_call_output",
        "apply_patch_call",
        "apply_patch_call_output",
        "mcp_list_tools",
        "mcp_approval_request",
        "mcp_approval_response",
        "mcp_call",
        "compaction",
    }
)
TEXT_PART_TYPES = frozenset({"input_text", "output_text", "text", "summary_text", "reasoning_text"})
MEDIA_PART_TYPES = frozenset({"input_image", "input_file", "input_audio"})


@dataclass(frozen=True, slots=True)
class Conversion:
    """A Responses request as the core sees it. `local_refusal` is set when only an upstream that
    speaks the Responses format can answer it: why the local model cannot."""

    chat: ChatRequest
    local_refusal: str | None


def to_chat_request(
    body: ResponsesRequest, history: Iterable[dict[str, Any]], request_id: str = ""
) -> Conversion:
    """The core request for `body` after the earlier items `history` (oldest first). Raises
    InvalidRequest for an item that is malformed or of an unknown type."""
    refusals: list[str] = []
    messages: list[Message] = []
    if body.instructions:
        messages.append(Message(Role.SYSTEM, body.instructions))
    for item in history:
        _append_item(messages, item, "previous_response_id", refusals)
    for index, item in enumerate(input_items(body)):
        _append_item(messages, item, f"input[{index}]", refusals)
    refusals.extend(_tool_refusals(body))
    chat = ChatRequest(
        model=body.model,
        messages=tuple(messages),
        sampling=SamplingParams(
            max_tokens=body.max_output_tokens,
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
        ),
        stream=bool(body.stream),
        tools=tuple(_tool_specs(body.tools or ())),
        request_id=request_id,
        tool_choice=_tool_choice(body.tool_choice, refusals),
        parallel_tool_calls=body.parallel_tool_calls is not False,
        json_output=_json_output(body),
    )
    return Conversion(chat, "; ".join(refusals) if refusals else None)


def _append_item(messages: list[Message], item: dict[str, Any], where: str, refusals: list[str]) -> None:
    kind = item.get("type", "message") if isinstance(item, dict) else None
    if kind in SKIPPED_ITEM_TYPES:
        return
    if kind == "item_reference":
        refusals.append(f"{where}: item_reference items need the provider's own storage")
        return
    if kind == "message":
        message = _parse(MessageItem, item, where)
        messages.append(_message(message, where, refusals))
    elif kind in ("function_call", "custom_tool_call"):
        call = _parse(FunctionCallItem, item, where)
        arguments = call.input if call.input is not None else call.arguments
        _append_call(messages, ToolCall(call.call_id, call.name, arguments))
    elif kind in ("function_call_output", "custom_tool_call_output"):
        output = _parse(FunctionCallOutputItem, item, where)
        text = output.output if isinstance(output.output, str) else _join(output.output, where, refusals)
        messages.append(Message(Role.TOOL, text, tool_call_id=output.call_id))
    else:
        raise InvalidRequest(f"{where}.type: unknown input item type {kind!r}", f"{where}.type")


def _append_call(messages: list[Message], call: ToolCall) -> None:
    """A call joins the assistant turn it follows (text, or earlier calls of the same turn)."""
    if messages and messages[-1].role is Role.ASSISTANT:
        last = messages[-1]
        messages[-1] = Message(Role.ASSISTANT, last.content, tool_calls=(*last.tool_calls, call))
    else:
        messages.append(Message(Role.ASSISTANT, "", tool_calls=(call,)))


def _message(item: MessageItem, where: str, refusals: list[str]) -> Message:
    role = {"user": Role.USER, "assistant": Role.ASSISTANT}.get(item.role, Role.SYSTEM)
    text = item.content if isinstance(item.content, str) else _join(item.content, where, refusals)
    return Message(role, text)


def _join(parts: list[dict[str, Any]], where: str, refusals: list[str]) -> str:
    texts: list[str] = []
    for number, part in enumerate(parts):
        kind = part.get("type")
        if kind in TEXT_PART_TYPES and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
        elif kind in MEDIA_PART_TYPES:
            refusals.append(f"{where}.content[{number}]: {kind} content (the local model reads text only)")
        else:
            raise InvalidRequest(
                f"{where}.content[{number}]: unknown content part type {kind!r}", f"{where}.content"
            )
    return "\n".join(texts)


def _parse(model: type[ItemT], item: dict[str, Any], where: str) -> ItemT:
    try:
        return model.model_validate(item)
    except ValidationError as exc:
        problem = invalid_body(exc, item)
        raise InvalidRequest(
            f"{where}.{problem.message}", f"{where}.{problem.param or ''}".rstrip(".")
        ) from exc


# --- tools and output format ----------------------------------------------------------------------


def _tool_specs(tools: Iterable[dict[str, Any]]) -> Iterable[ToolSpec]:
    for tool in tools:
        if tool.get("type") == "namespace" and isinstance(tool.get("tools"), list):
            yield from _tool_specs(item for item in tool["tools"] if isinstance(item, dict))
        elif tool.get("type") == "function" and isinstance(tool.get("name"), str):
            parameters = tool.get("parameters")
            description = tool.get("description")
            yield ToolSpec(
                tool["name"],
                description if isinstance(description, str) else "",
                parameters if isinstance(parameters, dict) else {},
            )


def _tool_refusals(body: ResponsesRequest) -> list[str]:
    refusals: list[str] = []
    for index, tool in enumerate(body.tools or ()):
        kind = tool.get("type")
        if not isinstance(kind, str):
            raise InvalidRequest(f"tools[{index}].type: field required", f"tools[{index}].type")
        if kind == "function":
            if not isinstance(tool.get("name"), str):
                raise InvalidRequest(f"tools[{index}].name: field required", f"tools[{index}].name")
        elif kind not in ("custom", "namespace"):  # a namespace groups function tools
            refusals.append(f"tools[{index}]: the built-in tool {kind!r} is not available on the local model")
    return refusals


def _tool_choice(value: str | dict[str, Any] | None, refusals: list[str]) -> ToolChoice:
    """`auto`, `none`, `required` or one named function; forcing anything else is refused locally."""
    if value is None:
        return ToolChoice()
    if isinstance(value, str) and value in ("auto", "none", "required"):
        return ToolChoice(ToolChoiceMode(value))
    kind = value.get("type") if isinstance(value, dict) else None
    if isinstance(value, dict) and kind == "function" and isinstance(value.get("name"), str):
        return ToolChoice(ToolChoiceMode.NAMED, value["name"])
    if isinstance(kind, str):  # a built-in tool, allowed_tools, custom or mcp
        refusals.append(f"tool_choice {kind}: not supported by the local model")
        return ToolChoice()
    raise InvalidRequest(
        'tool_choice: expected "none", "auto", "required" or {"type": "function", "name": ...}', "tool_choice"
    )


def _json_output(body: ResponsesRequest) -> JsonOutput | None:
    """`text.format` json_schema (its schema) or json_object (any JSON object) as structured output."""
    fmt = body.text.format if body.text is not None else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return JsonOutput()
    return JsonOutput(fmt.schema_ or {"type": "object"})
