"""The `fit` policy with a fake measure (characters as tokens): what is cut, in which order."""

from __future__ import annotations

import pytest

from hotspare.agents.fit import fit
from hotspare.core.errors import ContextOverflow
from hotspare.core.types import ChatRequest, Message, Role, SamplingParams, ToolCall, ToolSpec


async def measure(request: ChatRequest) -> int:
    tools = sum(len(t.name) + len(t.description) + len(str(t.parameters)) for t in request.tools)
    return tools + sum(len(m.content) + 10 * len(m.tool_calls) for m in request.messages)


def chat(messages: list[Message], tools: tuple[ToolSpec, ...] = ()) -> ChatRequest:
    return ChatRequest("m", tuple(messages), SamplingParams(max_tokens=10), tools=tools)


TOOL = ToolSpec("f", "Reads a file. " + "More detail. " * 40, {"type": "object", "description": "x" * 100})


async def test_a_request_that_fits_is_unchanged() -> None:
    request = chat([Message(Role.USER, "hi")], (TOOL,))
    fitted = await fit(request, measure, 4096)
    assert fitted.request is request and not fitted.is_shortened


async def test_tools_are_condensed_first() -> None:
    request = chat([Message(Role.USER, "hi")], (TOOL,))
    fitted = await fit(request, measure, 200)
    assert fitted.request.tools == (ToolSpec("f", "Reads a file.", {"type": "object"}),)
    assert fitted.request.messages == request.messages and fitted.num_tokens <= 190


async def test_old_turns_go_whole_and_the_last_stays() -> None:
    system = Message(Role.SYSTEM, "S" * 20)
    turns = [
        Message(Role.USER, "u1" * 20),
        Message(Role.ASSISTANT, "", tool_calls=(ToolCall("c", "f", "{}"),)),
        Message(Role.TOOL, "r" * 40, tool_call_id="c"),
        Message(Role.USER, "u2" * 20),
        Message(Role.ASSISTANT, "a2" * 20),
        Message(Role.USER, "last"),
    ]
    fitted = await fit(chat([system, *turns]), measure, 200)
    assert fitted.request.messages == (system, *turns[3:])


async def test_then_the_system_prompt_is_cut_to_its_head() -> None:
    fitted = await fit(
        chat([Message(Role.SYSTEM, "H" * 60 + "T" * 300), Message(Role.USER, "q")]), measure, 240
    )
    system = fitted.request.messages[0].content
    assert system.startswith("H" * 60) and "characters omitted" in system and fitted.num_tokens <= 230


async def test_what_cannot_fit_is_refused_naming_the_limit() -> None:
    with pytest.raises(ContextOverflow, match="at most 40 tokens"):
        await fit(chat([Message(Role.USER, "x" * 500)]), measure, 40)
