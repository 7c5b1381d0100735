"""The `fit` context policy: shorten a conversation that does not fit the local model's context.

A conversation fits when its prompt leaves room for an answer of `answer_reserve_tokens` (the
request's max_tokens, at most a quarter of the context). Until it fits, in this order, each step
only as far as needed:

1. tool definitions are condensed: descriptions cut to their first sentence, then dropped, and
   `description` / `examples` / `title` keys removed from the schemas (the grammar still enforces
   the full schemas: only the prompt is shortened);
2. the oldest turns are dropped, whole: a turn starts at a user message, so a tool call is never
   kept without its result or the other way round; the most recent turn always stays;
3. the system prompt is cut to its head;
4. long messages of the remaining turns are cut to their head and tail.

If even that does not fit, `ContextOverflow` is raised. The prompt is measured by the caller's
`measure` (rendering and tokenizing it); every step re-measures, with a binary search where a step
has a size to choose.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from hotspare.core.errors import ContextOverflow
from hotspare.core.types import ChatRequest, Message, Role, ToolSpec

DEFAULT_ANSWER_TOKENS = 1024
"""Room kept for the answer when the request does not say how long it may be."""

CUT_MARK = "\n[... {} characters omitted to fit the local model's context ...]\n"
_SCHEMA_NOTES = frozenset({"description", "examples", "title", "$comment", "markdownDescription"})

Measure = Callable[[ChatRequest], Awaitable[int]]


class ContextPolicy(StrEnum):
    """What the local model does with a conversation longer than its context."""

    REJECT = "reject"  # refuse it with a context-length error that names the limit
    FIT = "fit"  # shorten it (see the module docstring) and say so in a response header


@dataclass(frozen=True, slots=True)
class Fitted:
    """`request` shortened (or not) to `num_tokens` of prompt; it was `num_original_tokens`."""

    request: ChatRequest
    num_original_tokens: int
    num_tokens: int

    @property
    def is_shortened(self) -> bool:
        return self.num_tokens != self.num_original_tokens


def answer_reserve_tokens(request: ChatRequest, max_context_tokens: int) -> int:
    wanted = request.sampling.max_tokens or DEFAULT_ANSWER_TOKENS
    return max(1, min(wanted, max_context_tokens // 4))


async def fit(request: ChatRequest, measure: Measure, max_context_tokens: int) -> Fitted:
    """`request` as it fits `max_context_tokens` with room for an answer; raises ContextOverflow."""
    limit = max_context_tokens - answer_reserve_tokens(request, max_context_tokens)
    original = await measure(request)
    if original <= limit:
        return Fitted(request, original, original)
    best, size = request, original
    for shorten in (_condense_tools, _drop_old_turns, _cut_system, _cut_long_messages):
        best, size = await shorten(best, size, measure, limit)
        if size <= limit:
            return Fitted(best, original, size)
    raise ContextOverflow(original, max_context_tokens)


# --- 1. tool definitions -------------------------------------------------------------------------


async def _condense_tools(
    request: ChatRequest, size: int, measure: Measure, limit: int
) -> tuple[ChatRequest, int]:
    for keep_description in (True, False):
        tools = tuple(_condensed_tool(tool, keep_description) for tool in request.tools)
        shorter = dataclasses.replace(request, tools=tools)
        size = await measure(shorter)
        if size <= limit:
            return shorter, size
    return shorter, size


def _condensed_tool(tool: ToolSpec, keep_description: bool) -> ToolSpec:
    description = _first_sentence(tool.description) if keep_description else ""
    return ToolSpec(tool.name, description, schema_without_notes(tool.parameters))


def _first_sentence(text: str, max_chars: int = 160) -> str:
    match = re.match(r"\s*(.+?[.!?])(\s|$)", text, re.DOTALL)
    sentence = (match.group(1) if match else text).strip().replace("\n", " ")
    return sentence if len(sentence) <= max_chars else sentence[: max_chars - 3] + "..."


def schema_without_notes(schema: Any) -> Any:
    """`schema` without documentation keys (keeps every key under `properties`, which are names).
    Validation is unchanged: a schema of only a description allows any value, like `{}`."""
    if isinstance(schema, list):
        return [schema_without_notes(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "properties" and isinstance(value, dict):
            out[key] = {name: schema_without_notes(sub) for name, sub in value.items()}
        elif key not in _SCHEMA_NOTES:
            out[key] = schema_without_notes(value)
    return out


# --- 2. old turns --------------------------------------------------------------------------------


def _turn_starts(messages: tuple[Message, ...]) -> list[int]:
    """Indexes where a turn (a user message and what follows it) starts."""
    return [i for i, m in enumerate(messages) if m.role is Role.USER]


async def _drop_old_turns(
    request: ChatRequest, size: int, measure: Measure, limit: int
) -> tuple[ChatRequest, int]:
    system = tuple(m for m in request.messages[:1] if m.role is Role.SYSTEM)
    starts = [i for i in _turn_starts(request.messages) if i >= len(system)]
    if len(starts) < 2:
        return request, size

    def keeping_from(start: int) -> ChatRequest:
        return dataclasses.replace(request, messages=system + request.messages[start:])

    return await _smallest_cut(
        request, size, measure, limit, len(starts) - 1, lambda n: keeping_from(starts[n])
    )


# --- 3. the system prompt ------------------------------------------------------------------------


async def _cut_system(
    request: ChatRequest, size: int, measure: Measure, limit: int
) -> tuple[ChatRequest, int]:
    if not request.messages or request.messages[0].role is not Role.SYSTEM:
        return request, size
    text = request.messages[0].content
    steps = 16

    def with_head(step: int) -> ChatRequest:
        keep = len(text) * (steps - step) // steps
        head = text[:keep] + CUT_MARK.format(len(text) - keep) if keep < len(text) else text
        return dataclasses.replace(request, messages=(Message(Role.SYSTEM, head), *request.messages[1:]))

    return await _smallest_cut(request, size, measure, limit, steps, with_head)


# --- 4. long messages ----------------------------------------------------------------------------


async def _cut_long_messages(
    request: ChatRequest, size: int, measure: Measure, limit: int
) -> tuple[ChatRequest, int]:
    longest = max((len(m.content) for m in request.messages), default=0)
    steps = 16

    def cut_to(step: int) -> ChatRequest:
        max_chars = max(64, longest * (steps - step) // steps)
        messages = tuple(
            dataclasses.replace(m, content=_head_and_tail(m.content, max_chars)) for m in request.messages
        )
        return dataclasses.replace(request, messages=messages)

    return await _smallest_cut(request, size, measure, limit, steps, cut_to)


def _head_and_tail(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    half = max_chars // 2
    return text[:half] + CUT_MARK.format(len(text) - 2 * half) + text[-half:]


# --- shared --------------------------------------------------------------------------------------


async def _smallest_cut(
    request: ChatRequest,
    size: int,
    measure: Measure,
    limit: int,
    max_step: int,
    shortened: Callable[[int], ChatRequest],
) -> tuple[ChatRequest, int]:
    """The least shortened `shortened(step)`, step in 1..max_step (larger is shorter), that fits;
    or the shortest one if none does. Binary search: sizes shrink as steps grow."""
    shortest = shortened(max_step)
    shortest_size = await measure(shortest)
    if shortest_size > limit:
        return shortest, shortest_size
    best, best_size = shortest, shortest_size
    low, high = 1, max_step - 1
    while low <= high:
        step = (low + high) // 2
        candidate = shortened(step)
        candidate_size = await measure(candidate)
        if candidate_size <= limit:
            best, best_size, high = candidate, candidate_size, step - 1
        else:
            low = step + 1
    return best, best_size
