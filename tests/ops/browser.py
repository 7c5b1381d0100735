"""Headless Chromium (Debian's `chromium`) for page tests: the DOM after load, and a screenshot."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--window-size=1200,1000",
)
TIMEOUT_S = 90


def chromium() -> str:
    """The browser's path; skips the test (with the reason) when it is not installed."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path is not None:
            return path
    pytest.skip("chromium is not installed (scripts/install --test installs it where apt-get can)")


def _run(*args: str) -> str:
    with tempfile.TemporaryDirectory(prefix="hotspare-chromium-") as profile:
        done = subprocess.run(
            [chromium(), *FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            timeout=TIMEOUT_S,
            check=False,
        )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return done.stdout.decode(errors="replace")


def dump_dom(url: str) -> str:
    return _run("--dump-dom", url)


def screenshot(url: str, path: Path) -> Path:
    _run(f"--screenshot={path}", url)
    assert path.exists(), "chromium wrote no screenshot"
    return path
