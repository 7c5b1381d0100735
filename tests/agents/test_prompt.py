"""Tools in the prompt: the documented fallback format for templates without tools."""

from __future__ import annotations

from hotspare.agents.prompt import TOOLS_HEADER, prompt_input
from hotspare.core.types import (
    ChatRequest,
    JsonOutput,
    Message,
    Role,
    ToolCall,
    ToolChoice,
    ToolChoiceMode,
    ToolSpec,
)

TOOL = ToolSpec("f", "Does f.", {"type": "object"})
HISTORY = (
    Message(Role.SYSTEM, "Be brief."),
    Message(Role.USER, "Run f."),
    Message(Role.ASSISTANT, "Sure.", tool_calls=(ToolCall("c1", "f", '{"a": 1}'),)),
    Message(Role.TOOL, "boom", tool_call_id="c1", is_error=True),
    Message(Role.USER, "And now?"),
)


def test_fallback_writes_tools_calls_and_results_as_text() -> None:
    rendered = prompt_input(ChatRequest("m", HISTORY, tools=(TOOL,)), native=False)
    system, user, assistant, results = rendered.messages
    assert rendered.tools is None
    assert system.content.startswith("Be brief.\n\n" + TOOLS_HEADER)
    assert '{"name": "f", "description": "Does f.", "parameters": {"type": "object"}}' in system.content
    assert user == Message(Role.USER, "Run f.")
    assert assistant == Message(
        Role.ASSISTANT, 'Sure.\n<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>'
    )
    assert results == Message(Role.USER, "<tool_response>\nError: boom\n</tool_response>\nAnd now?")


def test_native_templates_get_tools_and_the_history_unchanged() -> None:
    rendered = prompt_input(ChatRequest("m", HISTORY, tools=(TOOL,)), native=True)
    assert rendered.messages == HISTORY
    assert rendered.tools == [
        {
            "type": "function",
            "function": {"name": "f", "description": "Does f.", "parameters": {"type": "object"}},
        }
    ]


def test_tool_choice_none_lists_no_tools_and_json_output_asks_for_json() -> None:
    choice = ToolChoice(ToolChoiceMode.NONE)
    rendered = prompt_input(
        ChatRequest("m", HISTORY[1:2], tools=(TOOL,), tool_choice=choice, json_output=JsonOutput()), False
    )
    assert rendered.messages == (
        Message(Role.SYSTEM, "Answer with a single JSON object and nothing else."),
        Message(Role.USER, "Run f."),
    )
