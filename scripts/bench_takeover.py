#!/usr/bin/env python
"""Takeover latency: how long a client waits for its next token when the upstream fails.

    python -m scripts.bench_takeover [--runs 5]

Runs `hotspare serve` in front of a fake Anthropic upstream (tests/fakes/upstreams.py, in this
process) with first_token_s = 1 s and idle_s = 1 s, and measures with a raw streaming client:

  local            time to first token of the local model alone (a model no upstream serves)
  refused          upstream port closed: request -> first token
  hang             upstream accepts and never answers: request -> first token (bounded by first_token_s)
  breaker-open     after the circuit opened: request -> first token, and upstream attempts seen
  mid-stream cut   connection dropped after 3 deltas: last upstream token -> first local token
  mid-stream stall upstream silent after 3 deltas: last upstream token -> first local token (idle_s)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.fakes.upstreams import Behavior, FakeUpstream

CONFIG = """
mode = "auto"
[local]
hedge = false
[[upstreams]]
name = "anth"
kind = "anthropic"
base_url = "{url}"
models = ["claude-*"]
[upstreams.timeouts]
connect_s = 1
first_token_s = 1
idle_s = 1
total_s = 60
[upstreams.breaker]
consecutive_failures = 2
min_requests = 1000
open_s = 600
"""


def token_times(base: str, model: str) -> tuple[float, list[float], str]:
    """(request start, arrival time of each text delta, backend) for one streamed request."""
    body = {"model": model, "max_tokens": 12, "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
    headers = {"x-api-key": "sk-bench", "anthropic-version": "2023-06-01"}
    started = time.perf_counter()
    arrivals: list[float] = []
    with httpx.stream("POST", f"{base}/v1/messages", json=body, headers=headers, timeout=60) as response:
        backend = response.headers.get("x-hotspare-backend", "?")
        for line in response.iter_lines():
            if line.startswith("data: ") and '"text_delta"' in line:
                arrivals.append(time.perf_counter())
            elif line.startswith("data: ") and json.loads(line[6:]).get("type") == "error":
                raise RuntimeError(line)
    return started, arrivals, backend


def first_token_ms(base: str, model: str) -> tuple[float, str]:
    started, arrivals, backend = token_times(base, model)
    return (arrivals[0] - started) * 1000, backend


def gap_after(base: str, num_upstream: int) -> float:
    """ms between the last upstream delta and the first delta of the backend that took over."""
    _, arrivals, _ = token_times(base, "claude-x")
    return (arrivals[num_upstream] - arrivals[num_upstream - 1]) * 1000


def summary(values: list[float]) -> str:
    return f"median {statistics.median(values):7.1f} ms   max {max(values):7.1f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with FakeUpstream("anthropic") as fake, tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "hotspare.toml"
        config.write_text(CONFIG.format(url=fake.url))
        port = 18000 + os.getpid() % 1000
        log = (Path(tmp) / "hotspare.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "hotspare", "serve", "--port", str(port), "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while True:
                try:
                    if httpx.get(f"{base}/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("hotspare did not become ready")
                time.sleep(0.2)  # another process: nothing to await
            rows: dict[str, list[float]] = {}
            for _ in range(args.runs):
                rows.setdefault("local (no upstream)", []).append(first_token_ms(base, "local-only-name")[0])
                rows.setdefault("upstream healthy", []).append(first_token_ms(base, "claude-x")[0])
                fake.script(Behavior(cut_after=3))
                rows.setdefault("mid-stream cut", []).append(gap_after(base, 3))
                token_times(base, "claude-x")  # a success resets the consecutive-failure count
                fake.script(Behavior(stall_after=3))
                rows.setdefault("mid-stream stall (idle_s=1)", []).append(gap_after(base, 3))
                token_times(base, "claude-x")
                fake.script(Behavior(hang=True))
                rows.setdefault("hang (first_token_s=1)", []).append(first_token_ms(base, "claude-x")[0])
                token_times(base, "claude-x")
            fake.refuse()
            rows["refused (opens the circuit)"] = [first_token_ms(base, "claude-x")[0]]  # attempt + retry
            fake.accept()  # healthy again, but the circuit stays open (open_s = 600): zero attempts
            fake.clear()
            open_ms = [first_token_ms(base, "claude-x")[0] for _ in range(args.runs)]
            rows["circuit open"] = open_ms
            for name, values in rows.items():
                print(f"{name:>30}: {summary(values)}")
            print(f"{'upstream attempts while open':>30}: {len(fake.attempts())}")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
