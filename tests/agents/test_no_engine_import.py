"""`hotspare.agents` (prompts, tool calls, grammars) imports no engine: the engine hands it what it
needs (the grammar builder, agents/grammar.py), so the API side builds prompts without llama.cpp."""

from __future__ import annotations

from tests.models.test_no_upward_imports import imported_modules


def test_agents_import_no_engine() -> None:
    offenders = {
        module: sorted(n for n in names if n.startswith("hotspare.engine"))
        for module, names in imported_modules("agents").items()
        if any(n.startswith("hotspare.engine") for n in names)
    }
    assert offenders == {}
