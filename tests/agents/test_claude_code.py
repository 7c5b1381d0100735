"""Claude Code itself on the local model: scripts/claude_code_check.py, end to end (minutes on a small
machine: Claude Code's first prompt is ~23k tokens before fitting, ~6k after)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]  # scripts run as modules from here (scripts/__init__.py)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_claude_code_says_hello(tmp_path: Path) -> None:
    if not os.environ.get("CLAUDE_BIN") and (shutil.which("node") is None or shutil.which("npm") is None):
        pytest.skip("node and npm are needed to install and run Claude Code")
    record = tmp_path / "claude-code.json"
    done = subprocess.run(
        [sys.executable, "-m", "scripts.claude_code_check", "--record", str(record), "--timeout-s", "1500"],
        capture_output=True,
        text=True,
        timeout=1700,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(record.read_text())
    assert report["exit_code"] == 0 and report["answer"]
    chats = [r for r in report["requests"] if r["path"].startswith("/v1/messages")]
    assert chats and all(r["path"] == "/v1/messages?beta=true" for r in chats)
    assert chats[-1]["status"] == 200 and chats[-1]["hotspare"]["x-hotspare-backend"] == "local"


def _outage_run(script: str, tmp_path: Path) -> dict[str, object]:
    out = tmp_path / "run.json"
    done = subprocess.run(
        [sys.executable, "-m", f"scripts.{script}", "--runs", "1", "--variants", "on", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=1700,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    run: dict[str, object] = json.loads(out.read_text())["runs"]["True"][0]
    return run


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("script", ["bench_agent_outage", "bench_codex_outage"])
def test_the_agent_s_next_turn_after_the_provider_fails_comes_from_the_warm_cache(
    script: str, tmp_path: Path
) -> None:
    """Claude Code (`claude -p`, then `--continue`) and Codex (`codex exec`, then `resume --last`): turn 1
    answered by the provider, turn 2 by the local model once the provider fails, from the warm-up."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed to install and run the agent CLIs")
    run = _outage_run(script, tmp_path)
    turn1, turn2 = run["turn1"], run["turn2"]
    assert isinstance(turn1, dict) and isinstance(turn2, dict)
    assert turn1["exit"] == 0 and turn2["exit"] == 0 and turn2["answer"]
    main = turn2["main"]
    assert main["backend"] == "local" and main["status"] == 200
    assert main["cached_share"] >= 0.9
    cached = f"{main['cached_share']:.0%}"
    print(f"{script}: turn 2 took {turn2['wall_s']} s, first token {main['ttft_s']} s, {cached} cached")
