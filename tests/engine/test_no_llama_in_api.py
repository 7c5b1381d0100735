"""The API process never loads llama.cpp: only the engine process imports llama_cpp (engine/process.py
imports the worker in the child; engine/backends/gbnf.py loads the grammar converter without the
package). Each check runs in a fresh interpreter, since this test session has imported llama_cpp."""

from __future__ import annotations

import subprocess
import sys
import textwrap

NO_LLAMA = "assert 'llama_cpp' not in sys.modules, sorted(m for m in sys.modules if 'llama' in m)"


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_importing_the_app_and_the_cli_imports_no_llama_cpp() -> None:
    result = run_python(f"import hotspare.app, hotspare.cli, sys; {NO_LLAMA}")
    assert result.returncode == 0, result.stderr


def test_an_upstream_only_app_serving_and_a_grammar_built_import_no_llama_cpp() -> None:
    result = run_python(
        f"""
        import sys
        from fastapi.testclient import TestClient
        from hotspare.app import create_app
        from hotspare.config import Settings
        from hotspare.router.config import UpstreamConfig
        from hotspare.agents.grammar import constraint_for
        from hotspare.core.types import ChatRequest, Message, Role, ToolSpec
        from hotspare.engine.backends.gbnf import GrammarBuilder

        upstream = UpstreamConfig(name="up", kind="openai", base_url="http://127.0.0.1:9", api_key="forward")
        app = create_app(Settings(mode="upstream-only", upstreams=(upstream,)))
        with TestClient(app, base_url="http://localhost") as client:
            assert client.get("/ready").status_code == 200
            assert client.get("/status.json").status_code == 200
        tool = ToolSpec("f", "", {{"type": "object", "properties": {{"x": {{"type": "string"}}}}}})
        request = ChatRequest("m", (Message(Role.USER, "hi"),), tools=(tool,))
        assert "tool0-arguments" in constraint_for(request, GrammarBuilder).grammar
        {NO_LLAMA}
        """
    )
    assert result.returncode == 0, result.stderr
