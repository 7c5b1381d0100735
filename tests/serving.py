"""A real `hotspare serve` as a subprocess on a free port: start it, wait for /ready, stop it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 15.0


@dataclass(frozen=True, slots=True)
class RunningServer:
    """A `hotspare serve` process that has reported ready. `log_path` has its stdout and stderr."""

    base_url: str
    port: int
    log_path: Path
    process: subprocess.Popen[bytes]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


may_start_real_server = True
"""False while a test without the `real` marker runs (tests/conftest.py): starting the server then
fails, so that the marker stays true. Outside pytest (scripts/soak.py) it stays True."""


def start_server(workdir: Path, *args: str, home: Path | None = None) -> RunningServer:
    """Start `hotspare serve --port <free> *args` and wait until GET /ready is 200. `home`: its
    HOTSPARE_HOME (hashes recorded at a pull live there); default: a fresh one in `workdir`."""
    if not may_start_real_server:
        pytest.fail("this test starts `hotspare serve`: mark it `pytest.mark.real` (see tests/conftest.py)")
    port = free_port()
    home_dir = home or workdir / f"home-{port}"
    log_path = workdir / f"hotspare-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "hotspare", "serve", "--port", str(port), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            # A home of its own: no saved prefix cache or hash cache leaks between servers or runs.
            env={**os.environ, "PYTHONUNBUFFERED": "1", "HOTSPARE_HOME": str(home_dir)},
        )
    server = RunningServer(f"http://127.0.0.1:{port}", port, log_path, process)
    try:
        wait_until_ready(server)
    except BaseException:
        stop_server(server)
        raise
    return server


def wait_until_ready(server: RunningServer) -> None:
    """Poll /ready (nothing to await across processes); fail at once if the server exits."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    with httpx.Client(base_url=server.base_url, timeout=5.0) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                pytest.fail(f"hotspare serve exited with {server.process.returncode}:\n{server.log()}")
            try:
                if client.get("/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass  # not listening yet
            time.sleep(0.1)
    pytest.fail(f"hotspare serve was not ready within {READY_TIMEOUT_S:.0f} s:\n{server.log()}")


def stop_server(server: RunningServer) -> int:
    """SIGTERM (a graceful shutdown), then SIGKILL if it lingers. Returns the exit status."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    return server.process.returncode
