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

SCRIPT = Path(__file__).parents[2] / "scripts" / "claude_code_check.py"


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_claude_code_says_hello(tmp_path: Path) -> None:
    if not os.environ.get("CLAUDE_BIN") and (shutil.which("node") is None or shutil.which("npm") is None):
        pytest.skip("node and npm are needed to install and run Claude Code")
    record = tmp_path / "claude-code.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--record", str(record), "--timeout-s", "1500"],
        capture_output=True,
        text=True,
        timeout=1700,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(record.read_text())
    assert report["exit_code"] == 0 and report["answer"]
    chats = [r for r in report["requests"] if r["path"].startswith("/v1/messages")]
    assert chats and all(r["path"] == "/v1/messages?beta=true" for r in chats)
    assert chats[-1]["status"] == 200 and chats[-1]["hotspare"]["x-hotspare-backend"] == "local"
