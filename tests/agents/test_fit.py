"""The `fit` policy with a fake measure (characters as tokens): what is cut, in which order."""

from __future__ import annotations

import pytest

from hotspare.agents import fit as fit_module
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


async def test_old_turns_go_whole_from_a_checkpoint_and_the_last_stays() -> None:
    system = Message(Role.SYSTEM, "S" * 20)
    turns = [
        Message(Role.USER, "u1" * 20),
        Message(Role.ASSISTANT, "", tool_calls=(ToolCall("c", "f", "{}"),)),
        Message(Role.TOOL, "r" * 40, tool_call_id="c"),
        Message(Role.USER, "u2" * 20),
        Message(Role.ASSISTANT, "a2" * 20),
        Message(Role.USER, "last"),
    ]
    # room 190, fixed part 20: checkpoints every 85 tokens' worth of characters (297); the history
    # (170 characters) has none but its last turn, so a drop keeps only that
    fitted = await fit(chat([system, *turns]), measure, 200)
    assert fitted.request.messages == (system, turns[-1])


def test_checkpoints_are_the_first_turns_past_each_multiple_and_the_last() -> None:
    system = Message(Role.SYSTEM, "S" * 1000)  # not counted: the history starts after it
    turns = []
    for i in range(10):
        turns += [Message(Role.USER, f"q{i}".ljust(30)), Message(Role.ASSISTANT, "a" * 70)]
    messages = (system, *turns)
    # each turn is 100 characters: turn i starts at 100 * i; spacing 250 -> turns 3 (300), 5 (500),
    # 8 (800), and the last (9)
    assert fit_module.checkpoints(messages, 250) == [7, 11, 17, 19]
    # a longer conversation keeps the checkpoints of its prefix
    longer = (*messages, Message(Role.USER, "more"), Message(Role.ASSISTANT, "b" * 500))
    assert fit_module.checkpoints(longer, 250)[:3] == [7, 11, 17]


async def test_then_the_system_prompt_is_cut_to_its_head() -> None:
    fitted = await fit(
        chat([Message(Role.SYSTEM, "H" * 60 + "T" * 300), Message(Role.USER, "q")]), measure, 240
    )
    system = fitted.request.messages[0].content
    # the system prompt may take at most half the room (230 // 2)
    assert system.startswith("H" * 40) and "characters omitted" in system and len(system) <= 115


async def test_a_growing_conversation_keeps_its_fitted_prefix_between_rare_drops() -> None:
    """Turn k+1's fitted messages start with turn k's (but at a drop, which is rare)."""
    tools = tuple(
        ToolSpec(f"tool{i}", "Does a thing. " + "Detail. " * 30, {"type": "object"}) for i in range(8)
    )
    history = [Message(Role.SYSTEM, "You are an agent. " * 20)]
    previous: tuple[Message, ...] | None = None
    previous_tools = None
    num_drops = num_tool_changes = 0
    for k in range(60):
        history += [Message(Role.USER, f"question {k} " * 5)]
        fitted = (await fit(chat(history, tools), measure, 3000)).request
        if previous is not None:
            shared = fitted.messages[: len(previous)] == previous
            num_drops += not shared
            num_tool_changes += fitted.tools != previous_tools
        previous, previous_tools = fitted.messages, fitted.tools
        history += [Message(Role.ASSISTANT, f"answer {k} " * 12)]
    assert 1 <= num_drops <= 60 // 5  # a drop at most once in five turns here
    # the tools are condensed once, when the conversation first outgrows the context, then the same way
    assert num_tool_changes == 1


async def test_what_cannot_fit_is_refused_naming_the_limit() -> None:
    with pytest.raises(ContextOverflow, match="at most 40 tokens"):
        await fit(chat([Message(Role.USER, "x" * 500)]), measure, 40)
