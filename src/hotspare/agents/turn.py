"""One request as the local engine runs it: fitted to the context, rendered with its tools, sampled
under its grammar, and its output read back as text and tool calls.

    turn = await prepare_turn(request, renderer, max_context_tokens, policy)
    answer = AnswerReader(turn)
    ... answer.text(piece) for each piece the engine generates, answer.finish(finish) at the end
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from hotspare.agents.calls import ToolCallParser
from hotspare.agents.fit import ContextPolicy, fit
from hotspare.agents.grammar import NewGrammar, constraint_for
from hotspare.agents.prompt import PromptInput, offered_tools, one_system_message, prompt_input
from hotspare.core.types import (
    ChatRequest,
    ContextFitted,
    Finish,
    FinishReason,
    SamplingParams,
    StreamEvent,
    TextDelta,
)


@dataclass(frozen=True, slots=True)
class Renderer:
    """How the engine turns a prompt input into text and counts its tokens; `native_tools` says
    whether its chat template renders tools itself; `new_grammar` makes the builder of the grammars
    it constrains answers with (agents/grammar.py)."""

    render: Callable[[PromptInput], str]
    count_tokens: Callable[[str], Awaitable[int]]
    native_tools: bool
    new_grammar: NewGrammar

    def prompt(self, request: ChatRequest) -> str:
        return self.render(prompt_input(request, self.native_tools))

    async def measure(self, request: ChatRequest) -> int:
        return await self.count_tokens(self.prompt(request))


@dataclass(frozen=True, slots=True)
class Turn:
    """The prompt text and sampling of one request, and how to read its output."""

    prompt: str
    sampling: SamplingParams
    reads_tool_calls: bool
    fitted: ContextFitted | None = None
    model_stop: tuple[str, ...] = ()  # the model's own stop strings that the request did not ask for


def with_model_stop(
    sampling: SamplingParams, model_stop: tuple[str, ...]
) -> tuple[SamplingParams, tuple[str, ...]]:
    """`sampling` also stopping at the model's own stop strings (the catalogue's `stop`: where a base
    model's transcript would go on with the next speaker), after the request's own; and the strings
    it added."""
    added = tuple(dict.fromkeys(s for s in model_stop if s not in sampling.stop))
    if not added:
        return sampling, ()
    return dataclasses.replace(sampling, stop=(*sampling.stop, *added)), added


async def prepare_turn(
    request: ChatRequest,
    renderer: Renderer,
    max_context_tokens: int,
    policy: ContextPolicy,
    model_stop: tuple[str, ...] = (),
) -> Turn:
    """Raises InvalidRequest (a tool_choice naming no tool) or, with `fit`, ContextOverflow when
    even the shortest form does not fit. With `reject` an overlong prompt is the engine's to refuse.
    `model_stop`: the model's own stop strings, added to the request's (see `with_model_stop`)."""
    constraint = constraint_for(
        request, renderer.new_grammar
    )  # from the full tool schemas, whatever the prompt shows
    sampling, added = with_model_stop(request.sampling, model_stop)
    if constraint is not None:
        sampling = dataclasses.replace(
            sampling, grammar=constraint.grammar, grammar_triggers=constraint.triggers
        )
    fitted: ContextFitted | None = None
    request = dataclasses.replace(request, messages=one_system_message(request.messages))
    if policy is ContextPolicy.FIT:
        result = await fit(request, renderer.measure, max_context_tokens)
        request = result.request
        if result.is_shortened:
            fitted = ContextFitted(result.num_original_tokens, result.num_tokens)
    return Turn(renderer.prompt(request), sampling, bool(offered_tools(request)), fitted, added)


class AnswerReader:
    """Turns the engine's raw output of one turn into core events: `ContextFitted` (if any) before
    the first event, tool calls parsed out of the text, and the finish reason TOOL_CALLS when the
    answer ended with calls. A stop at one of the model's own stop strings is the end of its turn
    (the client did not ask for that string)."""

    def __init__(self, turn: Turn) -> None:
        self._parser = ToolCallParser() if turn.reads_tool_calls else None
        self._notice = turn.fitted
        self._model_stop = turn.model_stop

    def text(self, piece: str) -> list[StreamEvent]:
        events: list[StreamEvent] = [TextDelta(piece)]
        if self._parser is not None:
            events = self._parser.push(piece)
        return self._with_notice(events)

    def finish(self, finish: Finish) -> list[StreamEvent]:
        events = self._parser.close() if self._parser is not None else []
        if finish.reason is FinishReason.STOP_SEQUENCE and finish.stop_sequence in self._model_stop:
            finish = dataclasses.replace(finish, reason=FinishReason.END_TURN, stop_sequence=None)
        if self._parser is not None and self._parser.num_calls and finish.reason is FinishReason.END_TURN:
            finish = dataclasses.replace(finish, reason=FinishReason.TOOL_CALLS)
        return self._with_notice([*events, finish])

    def _with_notice(self, events: list[StreamEvent]) -> list[StreamEvent]:
        if self._notice is None or not events:
            return events
        notice, self._notice = self._notice, None
        return [notice, *events]
