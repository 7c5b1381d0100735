"""Grammars per request, checked by llama.cpp's own grammar parser (no model weights needed)."""

from __future__ import annotations

import pytest

from hotspare.agents.grammar import Constraint
from hotspare.agents.grammar import constraint_for as constraint_with
from hotspare.core.errors import InvalidRequest
from hotspare.core.types import (
    ChatRequest,
    JsonOutput,
    Message,
    Role,
    ToolChoice,
    ToolChoiceMode,
    ToolSpec,
)
from hotspare.engine.backends.gbnf import GrammarBuilder

WEATHER = ToolSpec("get_weather", "", {"type": "object", "properties": {"city": {"type": "string"}}})
ODD = ToolSpec("odd", "", {"type": "object", "properties": {"x": {"$ref": "https://example.com/remote"}}})


def constraint_for(request: ChatRequest) -> Constraint | None:
    return constraint_with(request, GrammarBuilder)


def request(**kw: object) -> ChatRequest:
    return ChatRequest("m", (Message(Role.USER, "hi"),), **kw)  # type: ignore[arg-type]


def test_no_tools_and_no_json_means_no_grammar() -> None:
    assert constraint_for(request()) is None
    assert constraint_for(request(tools=(WEATHER,), tool_choice=ToolChoice(ToolChoiceMode.NONE))) is None


def test_auto_is_lazy_from_the_call_tag_and_forced_is_not() -> None:
    auto = constraint_for(request(tools=(WEATHER,)))
    forced = constraint_for(request(tools=(WEATHER,), tool_choice=ToolChoice(ToolChoiceMode.REQUIRED)))
    assert auto is not None and auto.triggers == ("<tool_call>",)
    assert forced is not None and forced.triggers == ()
    assert "calls ::= call ([ \\t\\n]{0,4} call){0,3}" in auto.grammar
    assert "calls ::= call\n" in forced.grammar


def test_a_named_choice_allows_that_tool_only() -> None:
    choice = ToolChoice(ToolChoiceMode.NAMED, "odd")
    constraint = constraint_for(request(tools=(WEATHER, ODD), tool_choice=choice))
    assert constraint is not None
    assert '"\\"odd\\""' in constraint.grammar and "get_weather" not in constraint.grammar


def test_an_unconvertible_schema_degrades_to_any_object() -> None:
    constraint = constraint_for(request(tools=(ODD,), tool_choice=ToolChoice(ToolChoiceMode.REQUIRED)))
    assert constraint is not None and constraint.num_degraded_schemas == 1


def test_json_output_with_auto_tools_allows_either() -> None:
    constraint = constraint_for(request(tools=(WEATHER,), json_output=JsonOutput()))
    assert constraint is not None and constraint.grammar.startswith("root ::= calls | ")


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"tool_choice": ToolChoice(ToolChoiceMode.REQUIRED)}, "the request has no tools"),
        (
            {"tools": (WEATHER,), "tool_choice": ToolChoice(ToolChoiceMode.NAMED, "nope")},
            "no tool named 'nope'",
        ),
    ],
)
def test_impossible_choices_are_refused(kw: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        constraint_for(request(**kw))
