"""The one internal representation of a chat.

Every API format (OpenAI Chat Completions, OpenAI Responses, Anthropic Messages) converts its request
into a `ChatRequest` once, and renders the `StreamEvent`s a backend produces back into its own wire
format once. Backends (the local engine, upstream providers) only ever see these types.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol


class Role(StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


class ApiFormat(StrEnum):
    """The wire format a client spoke; errors and answers go back in the same one."""

    OPENAI_CHAT = "openai_chat"
    OPENAI_RESPONSES = "openai_responses"
    ANTHROPIC_MESSAGES = "anthropic_messages"


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A call the assistant made; `arguments` is JSON text, exactly as the model produced it."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A function the model may call; `parameters` is a JSON schema object."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)


class ToolChoiceMode(StrEnum):
    AUTO = "auto"  # the model answers in text or calls tools, as it sees fit
    NONE = "none"  # no tool calls
    REQUIRED = "required"  # at least one call, to any tool
    NAMED = "named"  # a call to the tool `ToolChoice.name`


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """Whether and which tools the model must call. `name` is set exactly when `mode` is NAMED."""

    mode: ToolChoiceMode = ToolChoiceMode.AUTO
    name: str | None = None


@dataclass(frozen=True, slots=True)
class JsonOutput:
    """Structured output: the answer is one JSON value satisfying `schema`; None means any JSON object."""

    schema: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Message:
    """One turn. `content` is plain text (text parts joined); tool calls and results ride alongside."""

    role: Role
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    is_error: bool = False


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to pick tokens.

    `max_tokens` None means "as many as fit in the context"; a backend clamps larger values to what
    fits rather than refusing. `temperature` 0 means greedy. `top_k` 0 and `top_p` 1 disable those
    filters. Penalties follow OpenAI (frequency/presence, additive) and llama.cpp (repeat, multiplicative).
    """

    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repeat_penalty: float = 1.0
    grammar: str | None = None
    grammar_triggers: tuple[str, ...] = ()
    """With triggers, `grammar` is lazy: text is free until one of these literal strings appears,
    and from its start on the grammar constrains every token. Empty: it constrains from the first."""


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A chat as every backend sees it. `model` is the name the client asked for."""

    model: str
    messages: tuple[Message, ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stream: bool = False
    tools: tuple[ToolSpec, ...] = ()
    request_id: str = ""
    tool_choice: ToolChoice = field(default_factory=ToolChoice)
    parallel_tool_calls: bool = True
    json_output: JsonOutput | None = None
    num_choices: int = 1
    """Answers wanted to this one prompt (OpenAI `n`). A backend's `stream` yields the first; the local
    backends hand out the others (`LocalBackend.more_choices`)."""


class FinishReason(StrEnum):
    END_TURN = "end_turn"  # the model ended its answer (EOS / end-of-turn token)
    LENGTH = "length"  # max_tokens or the context ran out
    STOP_SEQUENCE = "stop_sequence"  # one of the request's stop strings matched
    TOOL_CALLS = "tool_calls"
    CONTENT_FILTER = "content_filter"  # the provider refused or filtered it (Anthropic: refusal): an answer
    PAUSED = "paused"  # Anthropic's pause_turn: a server-tool turn to be resumed, not finished


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one answer. `cached_tokens` is the part of the prompt served from the KV cache."""

    input_tokens: int
    output_tokens: int
    cached_tokens: int = 0


@dataclass(frozen=True, slots=True)
class TextDelta:
    """The next piece of answer text (never splits a UTF-8 character)."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCallStart:
    """The model began tool call number `index` (0, 1, ... in answer order) to `name`."""

    index: int
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """The next piece of call `index`'s arguments; a call's pieces joined are its JSON arguments."""

    index: int
    arguments: str


@dataclass(frozen=True, slots=True)
class ContextFitted:
    """The conversation did not fit the model's context and was shortened to fit (the `fit` policy).
    Sent at most once, just before the answer's first other event."""

    num_original_tokens: int
    num_fitted_tokens: int


@dataclass(frozen=True, slots=True)
class Finish:
    """The last event of every successful stream."""

    reason: FinishReason
    usage: Usage
    model: str
    stop_sequence: str | None = None


StreamEvent = TextDelta | ToolCallStart | ToolCallDelta | ContextFitted | Finish


class ChatBackend(Protocol):
    """Anything that can answer a `ChatRequest`: the local engine, an upstream, the router.

    `stream` yields at most one `ContextFitted` first, then the answer -- `TextDelta`s, and for each
    tool call one `ToolCallStart` followed by its `ToolCallDelta`s (calls come one after another,
    never interleaved, and text may precede them) -- and then exactly one `Finish` (reason TOOL_CALLS
    when the answer ended with calls). Failures raise an exception from `hotspare.core.errors`.
    Closing the iterator early cancels the request and frees
    what it held. `count_tokens` returns the prompt's size in the backend's own tokens.
    """

    name: str

    def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]: ...

    async def count_tokens(self, request: ChatRequest) -> int: ...
