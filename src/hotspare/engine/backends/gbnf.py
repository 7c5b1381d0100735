"""Building llama.cpp grammars (GBNF): JSON-schema rules via llama-cpp-python's pure-Python converter
(`llama_cpp.llama_grammar.SchemaConverter`), plus literals and hand-written rules around them.

Like llama_cpp.py, this is one of the only modules that import llama_cpp; it loads no model.
"""

from __future__ import annotations

import logging
from typing import Any

from llama_cpp.llama_grammar import SchemaConverter

log = logging.getLogger(__name__)

# JSON forbids raw control characters inside strings; the converter's `char` rule allows them.
_STRICT_CHAR = r'char ::= [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})'
_ANY_OBJECT: dict[str, Any] = {"type": "object"}


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


def _new_converter() -> SchemaConverter:
    return SchemaConverter(  # type: ignore[no-untyped-call]
        prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False
    )


class GrammarBuilder:
    """Collects rules for one grammar. Rule names are lowercase letters, digits and '-'.

    `json_rule` never fails: a schema the converter cannot handle (an unknown keyword, a remote
    `$ref`) degrades to "any JSON object" and `num_degraded` counts it.
    """

    def __init__(self) -> None:
        self._converter = _new_converter()
        self._rules: dict[str, str] = {}
        self.num_degraded = 0

    def json_rule(self, schema: dict[str, Any] | None, name: str) -> str:
        """The name of a rule matching one JSON value that satisfies `schema` (None: any object)."""
        schema = schema or _ANY_OBJECT
        try:
            dry_run = _new_converter()
            dry_run.visit(dry_run.resolve_refs(schema, name), name)  # type: ignore[no-untyped-call]
        except Exception as exc:  # the converter raises plain Exceptions, KeyError, ...
            log.warning("JSON schema of %s not convertible to a grammar (%s): any object allowed", name, exc)
            self.num_degraded += 1
            schema = _ANY_OBJECT
        resolved = self._converter.resolve_refs(schema, name)
        return str(self._converter.visit(resolved, name))  # type: ignore[no-untyped-call]

    def add_rule(self, name: str, body: str) -> str:
        self._rules[name] = body
        return name

    def render(self, root: str) -> str:
        """The whole grammar, with `root ::= <root>`."""
        lines = [f"root ::= {root}"]
        lines.extend(f"{name} ::= {body}" for name, body in self._rules.items())
        converted: str = self._converter.format_grammar()  # type: ignore[no-untyped-call]
        for line in converted.splitlines():
            lines.append(_STRICT_CHAR if line.startswith("char ::=") else line)
        return "\n".join(lines) + "\n"
