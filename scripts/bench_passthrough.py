#!/usr/bin/env python
"""Passthrough overhead: the same fast fake upstream called directly, through `hotspare serve`, and
through LiteLLM's proxy (if installed), in one run.

    python -m scripts.bench_passthrough [--litellm /tmp/litellm-venv/bin/litellm] [--requests 400]
                                        [--rounds 3]

For each target, OpenAI Chat Completions requests (streaming and not) at concurrency 1 and 64, sent
by a lean client (hotspare's own HTTP/1.1 pool; `--client httpx` for httpx, whose CPU cost per request
makes the load generator the bottleneck at concurrency 64 on two cores); each
latency is request sent -> last byte read. "Added" is a target's percentile minus the direct one's;
each percentile is the median over the rounds (at concurrency 64 the two cores are shared by the
client, the fake upstream and the proxy, and a single round's p99 swings by a factor of two).
The fake upstream runs in its own process (tests/fakes/upstreams.py); hotspare runs with one openai
upstream (api_key = "forward") in front of the local model, which stays idle.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from hotspare.upstream.http1 import Http1Pool

ROOT = Path(__file__).resolve().parent.parent
FAKE_MAIN = """
import sys
from tests.fakes.upstreams import FakeUpstream
with FakeUpstream("openai") as fake:
    print(fake.port, flush=True)
    sys.stdin.read()
"""
CLIENT_KEY = "sk-bench-" + "0123456789abcdef" * 4  # LiteLLM's master key; the others ignore it
BODY: dict[str, object] = {
    "model": "bench",
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "Say hello"}],
}


def agent_body(num_kib: int) -> dict[str, object]:
    """A request shaped like an agent's: a long system prompt and a history of about `num_kib` KiB."""
    system = "You are an expert software engineer working in a large repository. " * 60
    messages: list[dict[str, str]] = [{"role": "system", "content": system}]
    turn = "Please read src/module_{i}.py and explain what its main function does, step by step. " * 12
    while len(json.dumps(messages)) < num_kib * 1024:
        i = len(messages)
        messages.append({"role": "user" if i % 2 else "assistant", "content": turn.format(i=i)})
    if messages[-1]["role"] != "user":
        messages.append({"role": "user", "content": "Go on."})
    return {"model": "bench", "max_tokens": 16, "messages": messages}


@dataclass(frozen=True, slots=True)
class Stats:
    p50_ms: float
    p99_ms: float


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)  # polling another process: there is no event to await
    raise RuntimeError(f"{url} not up within {timeout_s} s")


def start_fake() -> tuple[subprocess.Popen[bytes], int]:
    proc = subprocess.Popen(  # `-c` imports from the working directory: the repo root
        [sys.executable, "-c", FAKE_MAIN], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def start_hotspare(fake_port: int, workdir: Path, hedge: bool) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    config = workdir / "hotspare.toml"
    config.write_text(
        f'mode = "auto"\n[local]\nhedge = {str(hedge).lower()}\n'
        '[[upstreams]]\nname = "fake"\nkind = "openai"\n'
        f'base_url = "http://127.0.0.1:{fake_port}"\napi_key = "forward"\nmodels = ["*"]\n'
    )
    log = (workdir / "hotspare.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hotspare", "serve", "--port", str(port), "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    wait_http(f"http://127.0.0.1:{port}/ready", proc, 180)
    return proc, f"http://127.0.0.1:{port}"


def start_litellm(binary: str, fake_port: int, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    config = workdir / "litellm.yaml"
    config.write_text(
        "model_list:\n  - model_name: bench\n    litellm_params:\n      model: openai/bench\n"
        f"      api_base: http://127.0.0.1:{fake_port}/v1\n      api_key: sk-fake\n"
        "litellm_settings:\n  drop_params: true\n  telemetry: false\n"
    )
    log = (workdir / "litellm.log").open("wb")
    env = {
        **os.environ,
        "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False",
        "LITELLM_MASTER_KEY": CLIENT_KEY,
    }
    proc = subprocess.Popen(
        [binary, "--config", str(config), "--port", str(port), "--num_workers", "1"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    wait_http(f"http://127.0.0.1:{port}/health/liveliness", proc, 240)
    return proc, f"http://127.0.0.1:{port}"


async def one(client: httpx.AsyncClient, url: str, stream: bool) -> float:
    body = {**BODY, "stream": stream}
    started = time.perf_counter()
    async with client.stream(
        "POST", url, json=body, headers={"authorization": f"Bearer {CLIENT_KEY}"}
    ) as response:
        async for _ in response.aiter_raw():
            pass
        if response.status_code != 200:
            raise RuntimeError(f"{url}: HTTP {response.status_code}")
    return (time.perf_counter() - started) * 1000


async def one_lean(pool: Http1Pool, stream: bool) -> float:
    body = json.dumps({**BODY, "stream": stream}).encode()
    headers = {"authorization": f"Bearer {CLIENT_KEY}", "content-type": "application/json"}
    started = time.perf_counter()
    response = await pool.send("POST", "/v1/chat/completions", headers, body)
    try:
        while await response.read_chunk() is not None:
            pass
    finally:
        await response.aclose()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}")
    return (time.perf_counter() - started) * 1000


async def measure(base: str, stream: bool, concurrency: int, num_requests: int, lean: bool = True) -> Stats:
    """Percentiles of `num_requests` requests, `concurrency` at a time. The load comes from hotspare's
    own lean HTTP/1.1 client (~0.3 ms of CPU a request) unless `lean` is False (httpx, 2-4 ms a
    request at concurrency 64: on two cores the load generator then sets the pace, not the proxy)."""
    latencies: list[float] = []
    queue = iter(range(num_requests))
    if lean:
        pool = Http1Pool(base, 10.0)

        async def send() -> float:
            return await one_lean(pool, stream)
    else:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        client = httpx.AsyncClient(timeout=60, limits=limits)

        async def send() -> float:
            return await one(client, f"{base}/v1/chat/completions", stream)

    async def worker() -> None:
        for _ in queue:
            latencies.append(await send())

    try:
        for _ in range(min(20, num_requests)):  # warm connections and caches
            await send()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await (pool.aclose() if lean else client.aclose())
    ordered = sorted(latencies)
    return Stats(statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))])


async def run_all(
    targets: dict[str, str], num_requests: int, num_rounds: int, lean: bool
) -> dict[tuple[str, bool, int], Stats]:
    """Each cell's percentiles, the median over `num_rounds` rounds; the targets take turns within a
    round, so a slow spell of the machine hits all of them alike."""
    rounds: dict[tuple[str, bool, int], list[Stats]] = {}
    for number in range(num_rounds):
        for concurrency in (1, 64):
            for stream in (False, True):
                n = num_requests if concurrency == 1 else num_requests * 4
                for name, base in targets.items():
                    stats = await measure(base, stream, concurrency, n, lean)
                    rounds.setdefault((name, stream, concurrency), []).append(stats)
        if num_rounds > 1:
            print(f"round {number + 1}: " + json.dumps(_cells({k: v[-1] for k, v in rounds.items()})))
    return {
        key: Stats(statistics.median(s.p50_ms for s in got), statistics.median(s.p99_ms for s in got))
        for key, got in rounds.items()
    }


def _cells(results: dict[tuple[str, bool, int], Stats]) -> dict[str, list[float]]:
    return {
        f"{k[0]}/{'stream' if k[1] else 'json'}/c{k[2]}": [round(v.p50_ms, 2), round(v.p99_ms, 2)]
        for k, v in results.items()
    }


def report(results: dict[tuple[str, bool, int], Stats], names: Sequence[str]) -> None:
    print(
        f"{'concurrency':>11} {'mode':>10} {'target':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'added p50':>10} {'added p99':>10}"
    )
    for concurrency in (1, 64):
        for stream in (False, True):
            direct = results[("direct", stream, concurrency)]
            added: dict[str, Stats] = {}
            for name in names:
                s = results[(name, stream, concurrency)]
                added[name] = Stats(s.p50_ms - direct.p50_ms, s.p99_ms - direct.p99_ms)
                mode = "stream" if stream else "json"
                print(
                    f"{concurrency:>11} {mode:>10} {name:>9} {s.p50_ms:8.2f} {s.p99_ms:8.2f} "
                    f"{added[name].p50_ms:10.2f} {added[name].p99_ms:10.2f}"
                )
            if "litellm" in added and added["litellm"].p99_ms > 0:
                ratio = added["hotspare"].p99_ms / added["litellm"].p99_ms
                print(f"{'':>11} {'':>10} added p99 hotspare / litellm = {ratio:.3f}")
    print(json.dumps(_cells(results)))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--litellm", default="/tmp/litellm-venv/bin/litellm", help="litellm CLI ('' to skip)")
    parser.add_argument("--requests", type=int, default=400, help="requests per cell at concurrency 1")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each percentile is their median")
    parser.add_argument(
        "--body-kib", type=int, default=0, help="send agent-like requests of about this size (0: a tiny one)"
    )
    parser.add_argument(
        "--client",
        choices=("lean", "httpx"),
        default="lean",
        help="load generator: hotspare's lean HTTP/1.1 client (default) or httpx",
    )
    parser.add_argument(
        "--hedge",
        action="store_true",
        help="leave hedging on (under CPU starvation it starts the local model)",
    )
    args = parser.parse_args()
    if args.body_kib > 0:
        BODY.clear()
        BODY.update(agent_body(args.body_kib))
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            fake, fake_port = start_fake()
            procs.append(fake)
            targets = {"direct": f"http://127.0.0.1:{fake_port}"}
            hotspare, targets["hotspare"] = start_hotspare(fake_port, Path(tmp), args.hedge)
            procs.append(hotspare)
            if args.litellm and Path(args.litellm).exists():
                litellm, targets["litellm"] = start_litellm(args.litellm, fake_port, Path(tmp))
                procs.append(litellm)
            else:
                print("LiteLLM not found; measuring hotspare only", file=sys.stderr)
            results = asyncio.run(run_all(targets, args.requests, args.rounds, args.client == "lean"))
            report(results, [n for n in targets if n != "direct"])
            served = httpx.get(f"{targets['hotspare']}/metrics").text
            print("\n".join(line for line in served.splitlines() if line.startswith("hotspare_served_total")))
        finally:
            for proc in reversed(procs):
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
