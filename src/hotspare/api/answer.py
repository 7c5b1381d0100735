"""A backend's answer as every API's renderer reads it: collected whole (`collect`, for the
non-streaming form of any API) or paced for a stream (`paced_answer`), and what every API does with
answer-level notices (response headers)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from hotspare.api.sse import Heartbeat, close_stream, closing_stream, with_heartbeats
from hotspare.core.errors import BackendUnavailable
from hotspare.core.types import (
    ContextFitted,
    Finish,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
)

AnswerEvent = TextDelta | ToolCallStart | ToolCallDelta
"""The events that carry an answer's content (text, a tool call's start or a piece of its arguments)."""

CONTEXT_FIT_HEADER = "x-hotspare-context-fit"
"""Set when the conversation was shortened to fit the local model's context: `<before>-><after> tokens`."""


def context_fit_header(notice: ContextFitted) -> dict[str, str]:
    return {CONTEXT_FIT_HEADER: f"{notice.num_original_tokens}->{notice.num_fitted_tokens} tokens"}


@dataclass(slots=True)
class ToolCallBuilder:
    """The tool calls of an answer, assembled from their start and argument pieces."""

    calls: list[ToolCall] = field(default_factory=list)
    _arguments: list[list[str]] = field(default_factory=list)

    def add(self, event: ToolCallStart | ToolCallDelta) -> None:
        if isinstance(event, ToolCallStart):
            self.calls.append(ToolCall(event.id, event.name, ""))
            self._arguments.append([])
        else:
            self._arguments[event.index].append(event.arguments)

    def build(self) -> list[ToolCall]:
        return [
            ToolCall(c.id, c.name, "".join(parts))
            for c, parts in zip(self.calls, self._arguments, strict=True)
        ]


@dataclass(frozen=True, slots=True)
class Answer:
    text: str
    tool_calls: list[ToolCall]
    finish: Finish
    fitted: ContextFitted | None = None


async def collect(events: AsyncIterator[StreamEvent]) -> Answer:
    """The whole answer of `events` (closed however this ends)."""
    async with closing_stream(events):
        texts: list[str] = []
        calls = ToolCallBuilder()
        fitted: ContextFitted | None = None
        async for event in events:
            if isinstance(event, TextDelta):
                texts.append(event.text)
            elif isinstance(event, ToolCallStart | ToolCallDelta):
                calls.add(event)
            elif isinstance(event, ContextFitted):
                fitted = event
            else:
                return Answer("".join(texts), calls.build(), event, fitted)
    raise BackendUnavailable("the answer ended without finishing")


async def collect_all(choices: Sequence[AsyncIterator[StreamEvent]], max_at_once: int) -> list[Answer]:
    """Whole answers of several streams (an OpenAI request's n choices), in order: at most
    `max_at_once` read side by side (a backend that starts each choice when it is first read generates
    no more at once; the llama.cpp engine started them all and runs max_running), and the first
    failure cancels the others (an `Overloaded` must not leave the rest generating to max_tokens for
    nobody) and is raised. Every stream is closed when this returns, read or not."""
    gate = asyncio.Semaphore(max_at_once)
    failed = asyncio.Event()  # set by the first failure: choices still waiting for the gate never start

    async def one(events: AsyncIterator[StreamEvent]) -> Answer | None:
        async with gate:
            if failed.is_set():
                return None
            try:
                return await collect(events)
            except BaseException:
                failed.set()
                raise

    tasks = [asyncio.ensure_future(one(events)) for events in choices]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()  # a no-op for those done
        await asyncio.gather(*tasks, return_exceptions=True)
        for events in choices:
            await close_stream(events)  # idempotent; those never read are closed here
    for task in tasks:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error
    answers = [task.result() for task in tasks]
    if any(answer is None for answer in answers):  # only after a failure, which was raised above
        raise BackendUnavailable("a choice of the answer was not generated")
    return [answer for answer in answers if answer is not None]


async def paced_answer(
    events: AsyncIterator[StreamEvent], heartbeat_s: float
) -> AsyncGenerator[Heartbeat | AnswerEvent | Finish, None]:
    """`events` as a streaming renderer reads them: a `Heartbeat` after every `heartbeat_s` of
    silence (the renderer sends its API's keep-alive), no `ContextFitted` (told in a response
    header), ending with the `Finish`. Raises BackendUnavailable if `events` ends without one, and
    whatever `events` raises. Closing this closes `events`; callers hold it in `aclosing`."""
    async with aclosing(with_heartbeats(events, heartbeat_s)) as paced:
        async for event in paced:
            if isinstance(event, ContextFitted):
                continue
            yield event
            if isinstance(event, Finish):
                return
    raise BackendUnavailable("the answer ended without finishing")


def arguments_object(arguments: str) -> dict[str, Any]:
    """A call's JSON arguments as an object; {} when they are not one (a call cut short)."""
    try:
        value = json.loads(arguments) if arguments else {}
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
