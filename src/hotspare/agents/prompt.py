"""Tools, tool turns and JSON-output instructions in the prompt.

A chat template that knows tools (its source uses a `tools` variable) gets them natively: the
conversation unchanged and `tools` as OpenAI-style function objects. Any other template gets the
documented fallback format (docs/agents.md), which needs nothing from the template:

* the system message gains a `# Tools` section listing each tool as one JSON signature inside
  `<tools></tools>`, and says to call one as `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`;
* an assistant turn's tool calls are written into its text in that same syntax;
* tool results become user turns wrapped in `<tool_response></tool_response>` (an error result is
  prefixed `Error: `); results and text of one user turn are merged into one message.

With `tool_choice` none the tools are not listed at all. A JSON-output request adds one line to the
system message asking for JSON (and the schema); the grammar is what guarantees it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hotspare.agents.syntax import (
    CALL_CLOSE,
    CALL_OPEN,
    RESULT_CLOSE,
    RESULT_OPEN,
    format_call,
    format_result,
)
from hotspare.core.types import ChatRequest, JsonOutput, Message, Role, ToolChoiceMode, ToolSpec

TOOLS_HEADER = (
    "# Tools\n\n"
    "You may call functions to help with the request. Their JSON signatures are inside "
    "<tools></tools>:\n<tools>\n"
)
TOOLS_FOOTER = (
    "</tools>\n\n"
    f"To call a function, answer with its name and JSON arguments inside {CALL_OPEN}{CALL_CLOSE} tags:\n"
    f'{CALL_OPEN}\n{{"name": "<function-name>", "arguments": <arguments-json-object>}}\n{CALL_CLOSE}\n'
    f"Function results come back inside {RESULT_OPEN}{RESULT_CLOSE} tags."
)


@dataclass(frozen=True, slots=True)
class PromptInput:
    """What the chat template renders: `messages`, and `tools` for a template that takes them."""

    messages: tuple[Message, ...]
    tools: list[dict[str, Any]] | None = None


def template_knows_tools(source: str) -> bool:
    """Whether a Jinja chat template renders a `tools` variable (then it gets tools natively)."""
    return "tools" in source


def offered_tools(request: ChatRequest) -> tuple[ToolSpec, ...]:
    return () if request.tool_choice.mode is ToolChoiceMode.NONE else request.tools


def prompt_input(request: ChatRequest, native: bool) -> PromptInput:
    """The messages (and tools) to render for `request`; see the module docstring."""
    tools = offered_tools(request)
    messages = one_system_message(request.messages)
    if native:
        messages = _with_system_note(messages, _json_note(request.json_output))
        return PromptInput(messages, [_function(tool) for tool in tools] or None)
    note = "\n\n".join(part for part in (_tools_section(tools), _json_note(request.json_output)) if part)
    return PromptInput(_with_system_note(as_plain_turns(messages), note))


def one_system_message(messages: tuple[Message, ...]) -> tuple[Message, ...]:
    """System messages later in the conversation (Anthropic's mid-conversation system messages)
    joined to the first one: most chat templates accept a system message only at the start."""
    systems = [m.content for m in messages if m.role is Role.SYSTEM]
    if len(systems) <= 1 and (not systems or messages[0].role is Role.SYSTEM):
        return messages
    rest = tuple(m for m in messages if m.role is not Role.SYSTEM)
    return (Message(Role.SYSTEM, "\n\n".join(s for s in systems if s)), *rest)


def _function(tool: ToolSpec) -> dict[str, Any]:
    function = {"name": tool.name, "description": tool.description, "parameters": tool.parameters}
    return {"type": "function", "function": function}


def _tools_section(tools: tuple[ToolSpec, ...]) -> str:
    if not tools:
        return ""
    signatures = "".join(
        json.dumps(
            {"name": t.name, "description": t.description, "parameters": t.parameters}, ensure_ascii=False
        )
        + "\n"
        for t in tools
    )
    return TOOLS_HEADER + signatures + TOOLS_FOOTER


def _json_note(output: JsonOutput | None) -> str:
    if output is None:
        return ""
    if output.schema is None:
        return "Answer with a single JSON object and nothing else."
    schema = json.dumps(output.schema, ensure_ascii=False)
    return f"Answer with a single JSON value and nothing else, matching this JSON schema: {schema}"


def _with_system_note(messages: tuple[Message, ...], note: str) -> tuple[Message, ...]:
    if not note:
        return messages
    if messages and messages[0].role is Role.SYSTEM:
        first = messages[0]
        text = f"{first.content}\n\n{note}" if first.content else note
        return (Message(Role.SYSTEM, text), *messages[1:])
    return (Message(Role.SYSTEM, note), *messages)


def as_plain_turns(messages: tuple[Message, ...]) -> tuple[Message, ...]:
    """Tool calls written into assistant text, tool results as user turns; adjacent user turns merged:
    a history any chat template accepts without tools. (A cross-format upstream gets real tool turns
    instead: see upstream/anthropic.py and upstream/openai.py.)"""
    out: list[Message] = []
    for message in messages:
        if message.role is Role.ASSISTANT and message.tool_calls:
            calls = "\n".join(format_call(c.name, c.arguments) for c in message.tool_calls)
            text = f"{message.content}\n{calls}" if message.content else calls
            out.append(Message(Role.ASSISTANT, text))
        elif message.role in (Role.TOOL, Role.USER):
            text = (
                format_result(message.content, message.is_error)
                if message.role is Role.TOOL
                else message.content
            )
            if out and out[-1].role is Role.USER:
                out[-1] = Message(Role.USER, f"{out[-1].content}\n{text}")
            else:
                out.append(Message(Role.USER, text))
        else:
            out.append(message)
    return tuple(out)
