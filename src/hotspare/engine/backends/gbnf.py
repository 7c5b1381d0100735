"""Building llama.cpp grammars (GBNF): JSON-schema rules via llama-cpp-python's pure-Python converter
(`SchemaConverter` in llama_cpp/llama_grammar.py), plus hand-written rules around them. The engine
hands `GrammarBuilder` to hotspare.agents (agents/grammar.py), which writes the rules of a request.

Grammars are built in the API process, which must not load llama.cpp: importing the converter as
`llama_cpp.llama_grammar` runs llama_cpp/__init__.py, which loads the native library (95 ms, and
llama.cpp's code mapped into the process that serves passthrough). llama_grammar.py imports only the
standard library, so it is loaded here from its file by itself, under a private module name; the
package `llama_cpp` is never imported. Only the engine process (backends/llama_cpp.py) loads it.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from hotspare.core.errors import ModelError

log = logging.getLogger(__name__)

_CONVERTER_MODULE = "hotspare.engine.backends._llama_grammar"

# JSON forbids raw control characters inside strings; the converter's `char` rule allows them.
_STRICT_CHAR = r'char ::= [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})'
_ANY_OBJECT: dict[str, Any] = {"type": "object"}


@functools.cache
def _converter_module() -> ModuleType:
    """llama-cpp-python's llama_grammar.py, loaded from its file without its package (see the module
    docstring). Raises ModelError when llama-cpp-python is not installed."""
    package = importlib.util.find_spec("llama_cpp")  # a top-level name: found, not imported
    locations = package.submodule_search_locations if package is not None else None
    if not locations:
        raise ModelError("llama-cpp-python is not installed: the local engine cannot build grammars")
    spec = importlib.util.spec_from_file_location(
        _CONVERTER_MODULE, Path(next(iter(locations))) / "llama_grammar.py"
    )
    if spec is None or spec.loader is None:
        raise ModelError("llama-cpp-python's llama_grammar.py was not found")
    module = importlib.util.module_from_spec(spec)
    sys.modules[_CONVERTER_MODULE] = module
    spec.loader.exec_module(module)
    return module


def _new_converter() -> Any:
    return _converter_module().SchemaConverter(
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
            dry_run.visit(dry_run.resolve_refs(schema, name), name)
        except Exception as exc:  # the converter raises plain Exceptions, KeyError, ...
            log.warning("JSON schema of %s not convertible to a grammar (%s): any object allowed", name, exc)
            self.num_degraded += 1
            schema = _ANY_OBJECT
        resolved = self._converter.resolve_refs(schema, name)
        return str(self._converter.visit(resolved, name))

    def add_rule(self, name: str, body: str) -> str:
        self._rules[name] = body
        return name

    def render(self, root: str) -> str:
        """The whole grammar, with `root ::= <root>`."""
        lines = [f"root ::= {root}"]
        lines.extend(f"{name} ::= {body}" for name, body in self._rules.items())
        converted: str = self._converter.format_grammar()
        for line in converted.splitlines():
            lines.append(_STRICT_CHAR if line.startswith("char ::=") else line)
        return "\n".join(lines) + "\n"
