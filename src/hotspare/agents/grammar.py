"""The grammar that constrains one answer: tool calls whose arguments satisfy the tool's schema,
and JSON answers that satisfy the requested schema.

| request                                   | grammar                          | applies           |
| ----------------------------------------- | -------------------------------- | ----------------- |
| no tools (or tool_choice none), no JSON   | none                             |                   |
| tools, tool_choice auto                   | one or more calls                | lazily, from `<tool_call>` |
| tools, tool_choice required / named       | one call (named: to that tool)   | from the first token |
| JSON output, no tools offered             | one JSON value                   | from the first token |
| JSON output and tools, tool_choice auto   | calls, or one JSON value         | from the first token |

"One or more" is one when `parallel_tool_calls` is false, else up to `MAX_PARALLEL_CALLS`. A forced
call is exactly one: a small model offered "another call or stop" after a forced call tends to call
again and again. Once the grammar is complete only an end-of-generation token can follow, so the
model stops right after.

The grammar text is GBNF, llama.cpp's grammar format. The rules for JSON schemas come from a
`GrammarBuilder` the engine hands in (engine/backends/gbnf.py): this package imports no engine.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from hotspare.agents.fit import schema_without_notes
from hotspare.agents.prompt import offered_tools
from hotspare.agents.syntax import CALL_CLOSE, CALL_OPEN
from hotspare.core.errors import InvalidRequest
from hotspare.core.types import ChatRequest, ToolChoiceMode, ToolSpec

MAX_PARALLEL_CALLS = 4
"""A small model asked for parallel calls may never stop calling: the grammar ends it here."""

MAX_GRAMMAR_BOUND = 256
"""Length and count bounds (maxLength, maxItems, ...) above this are left to the model: the converter
writes a bound of n as n nested optionals, and llama.cpp's grammar parser overflows its stack on
a few thousand (Claude Code's Workflow tool has maxLength 200000)."""
_BOUNDS = ("maxLength", "minLength", "maxItems", "minItems", "maxProperties", "minProperties")


class GrammarBuilder(Protocol):
    """Collects the rules of one grammar (engine/backends/gbnf.py). Rule names are lowercase
    letters, digits and '-'. `json_rule` never fails: a schema it cannot convert degrades to "any
    JSON object" and `num_degraded` counts it."""

    num_degraded: int

    def json_rule(self, schema: dict[str, Any] | None, name: str) -> str:
        """The name of a rule matching one JSON value that satisfies `schema` (None: any object)."""
        ...

    def add_rule(self, name: str, body: str) -> str:
        """Add `name ::= body`; returns `name`."""
        ...

    def render(self, root: str) -> str:
        """The whole grammar, with `root ::= <root>`."""
        ...


NewGrammar = Callable[[], GrammarBuilder]
"""Makes an empty `GrammarBuilder`; the engine that runs the grammar provides it."""


def literal(text: str) -> str:
    """`text` as a GBNF string literal."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif " " <= ch <= "~":
            out.append(ch)
        else:
            code = ord(ch)
            out.append(f"\\u{code:04X}" if code <= 0xFFFF else f"\\U{code:08X}")
    return '"' + "".join(out) + '"'


_WS = "[ \\t\\n]{0,4}"
_NAME_KEY = literal('"name"')
_ARGUMENTS_KEY = literal('"arguments"')


@dataclass(frozen=True, slots=True)
class Constraint:
    """A GBNF grammar and, for a lazy one, the literal texts that switch it on."""

    grammar: str
    triggers: tuple[str, ...] = ()
    num_degraded_schemas: int = 0


def constraint_for(request: ChatRequest, new_grammar: NewGrammar) -> Constraint | None:
    """The grammar for `request` (see the module table) built with `new_grammar()`, or None. Raises
    InvalidRequest when a named tool_choice names no tool of the request, or a call is forced
    without tools."""
    tools = offered_tools(request)
    mode = request.tool_choice.mode
    if mode in (ToolChoiceMode.REQUIRED, ToolChoiceMode.NAMED) and not tools:
        raise InvalidRequest(
            "tool_choice: a tool call is required but the request has no tools", "tool_choice"
        )
    builder = new_grammar()
    if mode is ToolChoiceMode.NAMED:
        tools = tuple(t for t in tools if t.name == request.tool_choice.name)
        if not tools:
            raise InvalidRequest(
                f"tool_choice: no tool named {request.tool_choice.name!r} among the request's tools",
                "tool_choice",
            )
    parallel = request.parallel_tool_calls and mode is ToolChoiceMode.AUTO
    calls = _calls_rule(builder, tools, parallel) if tools else None
    output = request.json_output
    json_rule = builder.json_rule(grammar_schema(output.schema), "answer") if output is not None else None
    if calls is None and json_rule is None:
        return None
    if calls is None:
        return Constraint(builder.render(f"{_WS} {json_rule}"), (), builder.num_degraded)
    if mode is not ToolChoiceMode.AUTO:
        return Constraint(builder.render(calls), (), builder.num_degraded)
    if json_rule is not None:
        return Constraint(builder.render(f"{calls} | {_WS} {json_rule}"), (), builder.num_degraded)
    return Constraint(builder.render(calls), (CALL_OPEN,), builder.num_degraded)


def grammar_schema(schema: Any) -> Any:
    """`schema` as the grammar enforces it: without documentation keys (a property schema of only a
    description then allows any value, as it should) and without bounds above MAX_GRAMMAR_BOUND."""
    return _without_large_bounds(schema_without_notes(schema))


def _without_large_bounds(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_without_large_bounds(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    return {
        key: _without_large_bounds(value)
        for key, value in schema.items()
        if not (key in _BOUNDS and isinstance(value, int) and value > MAX_GRAMMAR_BOUND)
    }


def _calls_rule(builder: GrammarBuilder, tools: tuple[ToolSpec, ...], parallel: bool) -> str:
    """`calls`: one call, or up to MAX_PARALLEL_CALLS, to any of `tools`, each in the syntax.py form."""
    choices = []
    for index, tool in enumerate(tools):
        arguments = builder.json_rule(grammar_schema(tool.parameters), f"tool{index}-arguments")
        head = f'{literal(json.dumps(tool.name))} {_WS} "," {_WS} {_ARGUMENTS_KEY} {_WS} ":" {_WS}'
        choices.append(builder.add_rule(f"tool{index}-call", f"{head} {arguments}"))
    body = (
        f'{literal(CALL_OPEN)} {_WS} "{{" {_WS} {_NAME_KEY} {_WS} ":" {_WS} '
        f'({" | ".join(choices)}) {_WS} "}}" {_WS} {literal(CALL_CLOSE)}'
    )
    builder.add_rule("call", body)
    repeat = f"{{0,{MAX_PARALLEL_CALLS - 1}}}"
    return builder.add_rule("calls", f"call ({_WS} call){repeat}" if parallel else "call")
