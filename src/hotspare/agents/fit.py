"""The `fit` context policy: shorten a conversation that does not fit the local model's context, the
same way on every turn, so that turn k+1's prompt starts with turn k's and the prefix cache holds it.

A conversation fits when its prompt leaves room for an answer of `answer_reserve_tokens` (the
request's max_tokens, at most a quarter of the context). One that does not is shortened in two parts:

1. The fixed part, the system prompt and the tools, is shortened on its own, measured without the
   history, until it takes at most FIXED_SHARE of the room: tool descriptions cut to their first
   sentence, then dropped with the schemas' `description` / `examples` / `title` keys (the grammar
   still enforces the full schemas: only the prompt is shortened), then the system prompt cut to its
   head. It depends only on the system prompt, the tools and the limit, which an agent keeps
   byte-identical from turn to turn: every turn condenses them the same way.
2. The history loses its oldest turns, whole (a turn starts at a user message, so a tool call is never
   kept without its result; the most recent turn always stays), and in large steps: a turn can be
   the first kept only if it is a *checkpoint*, the first turn to start past a multiple of half the
   history's room (counted in characters from the conversation's start, at the fixed part's own
   characters per token, so the checkpoints of a conversation never move as it grows). The earliest
   checkpoint whose history fits is kept. After a drop about half the room is free, so the next drop
   (the one turn that misses the cache) comes only after the conversation has grown by that much
   again: not on every turn, as dropping just enough did.

Measured reason (the agent-outage issue, Claude Code through the 8k embedded model): dropping just
enough old turns, and condensing tools only as far as each request needed, rendered turn 2 differently
from turn 1: 27.8 % of its 6,126 prompt tokens came from the cache.

Only if the most recent turn alone is still too long are long messages cut to their head and tail
(then the prompt is not prefix-stable, but nothing else would fit). If even that does not fit,
`ContextOverflow` is raised. The prompt is measured by the caller's `measure` (rendering and
tokenizing it); where a step has a size to choose, a binary search.
"""

from __future__ import annotations

import dataclasses
import json
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


FIXED_SHARE = 0.5
"""The most of the prompt's room the system prompt and tools may take once a conversation is fitted."""

DEFAULT_CHARS_PER_TOKEN = 3.0
"""Places the history's checkpoints when there is no fixed part to measure the ratio on."""


async def fit(request: ChatRequest, measure: Measure, max_context_tokens: int) -> Fitted:
    """`request` as it fits `max_context_tokens` with room for an answer; raises ContextOverflow."""
    limit = max_context_tokens - answer_reserve_tokens(request, max_context_tokens)
    original = await measure(request)
    if original <= limit:
        return Fitted(request, original, original)
    best, fixed_size = await _fit_fixed(request, measure, int(limit * FIXED_SHARE))
    size = original if best is request else await measure(best)
    chars_per_token = _chars_per_token(best, fixed_size)
    best, size = await _drop_old_turns(best, size, measure, limit, fixed_size, chars_per_token)
    if size > limit:
        best, size = await _cut_long_messages(best, size, measure, limit)
    if size <= limit:
        return Fitted(best, original, size)
    raise ContextOverflow(original, max_context_tokens)


# --- 1. the fixed part: system prompt and tools --------------------------------------------------


def _fixed_part(request: ChatRequest) -> ChatRequest:
    """`request` without its history: what every turn of the conversation starts with."""
    return dataclasses.replace(request, messages=_system(request.messages))


def _chars_per_token(request: ChatRequest, fixed_size: int) -> float:
    """The fixed part's characters per token: the same on every turn (it is), and close enough to
    the history's to space its checkpoints (the ratio is only used for that)."""
    chars = sum(len(m.content) for m in _system(request.messages)) + sum(
        len(t.name) + len(t.description) + len(json.dumps(t.parameters)) for t in request.tools
    )
    return chars / fixed_size if chars >= 256 and fixed_size > 0 else DEFAULT_CHARS_PER_TOKEN


def _system(messages: tuple[Message, ...]) -> tuple[Message, ...]:
    return tuple(m for m in messages[:1] if m.role is Role.SYSTEM)


async def _fit_fixed(request: ChatRequest, measure: Measure, fixed_limit: int) -> tuple[ChatRequest, int]:
    """`request` with tools condensed, then the system prompt cut, until its fixed part measures at
    most `fixed_limit`; and that part's size. Every step measures the fixed part only."""

    async def measure_fixed(candidate: ChatRequest) -> int:
        return await measure(_fixed_part(candidate))

    size = await measure_fixed(request)
    if size <= fixed_limit:
        return request, size
    request, size = await _condense_tools(request, size, measure_fixed, fixed_limit)
    if size <= fixed_limit:
        return request, size
    return await _cut_system(request, size, measure_fixed, fixed_limit)


# --- 1. tool definitions -------------------------------------------------------------------------


async def _condense_tools(
    request: ChatRequest, size: int, measure: Measure, limit: int
) -> tuple[ChatRequest, int]:
    if not request.tools:
        return request, size
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


def _num_chars(message: Message) -> int:
    return len(message.content) + sum(len(c.name) + len(c.arguments) for c in message.tool_calls)


def checkpoints(messages: tuple[Message, ...], spacing_chars: int) -> list[int]:
    """The turn starts (indexes into `messages`, after a leading system message) where a fitted
    history may begin: the first turn to start at or past each multiple of `spacing_chars` counted
    from the conversation's start, and the last turn. A pure function of the prefix up to each
    index: a conversation that grows keeps its checkpoints."""
    first = len(_system(messages))
    starts = [i for i in _turn_starts(messages) if i > first]
    out: list[int] = []
    chars, start_of = 0, {}
    for i in range(first, len(messages)):
        start_of[i] = chars
        chars += _num_chars(messages[i])
    reached = 0
    for start in starts:
        band = start_of[start] // max(spacing_chars, 1)
        if band > reached:
            out.append(start)
            reached = band
    if starts and (not out or out[-1] != starts[-1]):
        out.append(starts[-1])
    return out


async def _drop_old_turns(
    request: ChatRequest, size: int, measure: Measure, limit: int, fixed_size: int, chars_per_token: float
) -> tuple[ChatRequest, int]:
    if size <= limit:
        return request, size
    system = _system(request.messages)
    spacing = int(max(limit - fixed_size, 1) / 2 * chars_per_token)
    cuts = checkpoints(request.messages, spacing)
    if not cuts:
        return request, size

    def keeping_from(n: int) -> ChatRequest:
        return dataclasses.replace(request, messages=system + request.messages[cuts[n - 1] :])

    return await _smallest_cut(request, size, measure, limit, len(cuts), keeping_from)


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
