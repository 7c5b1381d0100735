"""The Codex CLI (`@openai/codex` from npm) pointed at hotspare in local-only mode: `codex exec` completes
with exit status 0, answered by the local model through the Responses API.

Skipped when no `codex` is on PATH (`npm install -g @openai/codex`, or set HOTSPARE_CODEX to its path).
Codex's web search is turned off: it is a built-in tool the local model refuses (docs/responses.md).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.serving import RunningServer

CODEX_TIMEOUT_S = 540  # a ~4,800-token prompt prefilled on a busy 2-core CPU took 218 s


def codex_binary() -> str | None:
    return os.environ.get("HOTSPARE_CODEX") or shutil.which("codex")


def codex_exec(codex: str, base_url: str, workdir: Path, prompt: str) -> subprocess.CompletedProcess[str]:
    instructions = workdir / "instructions.md"
    instructions.write_text("You are Codex, a coding assistant. Answer briefly.\n")
    provider = f'{{name="hotspare", base_url="{base_url}/v1", wire_api="responses", env_key="HOTSPARE_KEY"}}'
    command = [
        codex,
        "exec",
        "--skip-git-repo-check",
        "-m",
        "smollm2-135m-instruct",
        "-c",
        "model_provider=hotspare",
        "-c",
        f"model_providers.hotspare={provider}",
        "-c",
        'web_search="disabled"',
        # Codex's own instructions (~17,000 characters) and context blocks would fill most of a small
        # model's context: a short instructions file instead.
        "-c",
        f'model_instructions_file="{instructions}"',
        "-c",
        "include_permissions_instructions=false",
        "-c",
        "include_apps_instructions=false",
        "-c",
        "include_environment_context=false",
        prompt,
    ]
    env = {**os.environ, "CODEX_HOME": str(workdir / "codex-home"), "HOTSPARE_KEY": "unused"}
    (workdir / "codex-home").mkdir(exist_ok=True)
    return subprocess.run(
        command,
        env=env,
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CODEX_TIMEOUT_S,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.timeout(CODEX_TIMEOUT_S + 30)
def test_codex_exec_completes_against_the_local_model(server: RunningServer, tmp_path: Path) -> None:
    codex = codex_binary()
    if codex is None:
        pytest.skip("the Codex CLI is not installed (npm install -g @openai/codex, or set HOTSPARE_CODEX)")
    done = codex_exec(codex, server.base_url, tmp_path, "Say hello in one short sentence.")
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert done.stdout.strip()  # the local model's answer
