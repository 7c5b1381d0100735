"""The soak: many mixed requests (both APIs, streaming and not, concurrent) against a real `hotspare
serve` in front of the fake providers, whose behaviour switches at random between healthy and every
fault they can inject, while the local engine takes the overflow. Used by tests/ops/test_soak.py (CI
size) and scripts/soak.py (the full run). Loopback only; bounded in count and in time.

Every request ends as exactly one of:
  complete      a 200 whose answer ends as its API ends a finished answer (stop reason; for streams
                the terminating events) -- the only outcome that presents an answer as complete
  error         an error in the caller's API shape: an HTTP error, or an in-band error event
  truncated     a 200 that ended without its API's terminating events and without an error event
  hung          no end within `request_timeout_s`
  lost          the connection failed, or the body was not the API's format
The soak passes with zero truncated, hung and lost, and the server's memory stable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import httpx
import psutil

from tests.fakes.serve_config import QUICK_TIMEOUTS, upstream_table
from tests.fakes.upstreams import Behavior, FakeUpstream

_soak_upstream = partial(
    upstream_table,
    api_key="env:HS_SOAK_UPSTREAM_KEY",
    timeouts=QUICK_TIMEOUTS | {"total_s": 20},
    breaker={"consecutive_failures": 5, "open_s": 1, "probe_interval_s": 0.5},
)
SOAK_CONFIG = (
    """
mode = "auto"
[local]
hedge = true
num_threads = 1      # a small machine shared with the soak's own clients and fakes
[log]
requests = false

"""
    + _soak_upstream("anth", "anthropic", "{anthropic}", ["claude-*"])
    + _soak_upstream("oai", "openai", "{openai}", ["gpt-*", "claude-*"])
)

FAULTS: dict[str, Behavior] = {
    "healthy": Behavior(),
    "slow": Behavior(first_delay_s=0.3, delta_interval_s=0.02),
    "500": Behavior(status=500),
    "529": Behavior(status=529),
    "429": Behavior(status=429, retry_after="30"),
    "reset": Behavior(reset=True),
    "cut": Behavior(cut_after=2),
    "stall": Behavior(stall_after=2),
    "error-event": Behavior(error_after=1),
    "malformed": Behavior(malformed_after=1),
    "no-terminator": Behavior(omit_terminator=True),
    "first-token-timeout": Behavior(first_delay_s=3),
}


@dataclass(frozen=True, slots=True)
class SoakPlan:
    num_requests: int = 300
    concurrency: int = 8
    max_tokens: int = 8
    seed: int = 7
    switch_every_s: float = 0.5  # the fakes change behaviour this often
    request_timeout_s: float = 60.0
    deadline_s: float = 300.0  # the whole soak stops by then (remaining requests count as not sent)


@dataclass(slots=True)
class SoakReport:
    outcomes: Counter[str] = field(default_factory=Counter)
    backends: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    num_sent: int = 0
    duration_s: float = 0.0
    rss_start_bytes: int = 0
    rss_end_bytes: int = 0
    latencies_s: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def rss_growth_bytes(self) -> int:
        return self.rss_end_bytes - self.rss_start_bytes

    def percentile_s(self, p: float) -> float:
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] if ordered else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.num_sent,
            "duration_s": round(self.duration_s, 1),
            "requests_per_s": round(self.num_sent / self.duration_s, 1) if self.duration_s else 0.0,
            "outcomes": dict(self.outcomes),
            "backends": dict(self.backends),
            "fault_switches": dict(self.faults),
            "latency_p50_s": round(self.percentile_s(0.5), 3),
            "latency_p99_s": round(self.percentile_s(0.99), 3),
            "rss_start_mib": round(self.rss_start_bytes / 2**20, 1),
            "rss_end_mib": round(self.rss_end_bytes / 2**20, 1),
            "problems": self.problems[:10],
        }


async def run_soak(base_url: str, server_pid: int, fakes: list[FakeUpstream], plan: SoakPlan) -> SoakReport:
    """Drive the soak; returns its report (it asserts nothing itself)."""
    rng = random.Random(plan.seed)
    report = SoakReport()
    process = psutil.Process(server_pid)
    began = time.monotonic()
    stop = asyncio.Event()
    chaos = asyncio.create_task(_switch_faults(fakes, rng, plan, report, stop))
    limits = httpx.Limits(max_connections=plan.concurrency * 2)
    try:
        async with httpx.AsyncClient(
            base_url=base_url, timeout=plan.request_timeout_s, limits=limits
        ) as client:
            queue: asyncio.Queue[int] = asyncio.Queue()
            for number in range(plan.num_requests):
                queue.put_nowait(number)
            warm = max(1, plan.num_requests // 10)

            async def worker() -> None:
                while not queue.empty() and time.monotonic() - began < plan.deadline_s:
                    number = queue.get_nowait()
                    if number == warm:
                        report.rss_start_bytes = process.memory_info().rss
                    await _one(client, random.Random(plan.seed * 100_003 + number), plan, report)

            await asyncio.gather(*(worker() for _ in range(plan.concurrency)))
    finally:
        stop.set()
        await chaos
        for fake in fakes:
            fake.default = Behavior()
            fake.accept()
    report.duration_s = time.monotonic() - began
    report.rss_end_bytes = process.memory_info().rss
    return report


async def _switch_faults(
    fakes: list[FakeUpstream], rng: random.Random, plan: SoakPlan, report: SoakReport, stop: asyncio.Event
) -> None:
    names = list(FAULTS)
    while not stop.is_set():
        for fake in fakes:
            name = rng.choice(names + ["healthy"] * 4 + ["refused"])  # healthy about a third of the time
            report.faults[name] += 1
            if name == "refused":
                await asyncio.to_thread(fake.refuse)
            else:
                await asyncio.to_thread(fake.accept)
                fake.default = FAULTS[name]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), plan.switch_every_s)


async def _one(client: httpx.AsyncClient, rng: random.Random, plan: SoakPlan, report: SoakReport) -> None:
    api = rng.choice(["anthropic", "openai"])
    model = rng.choice(["claude-soak", "gpt-soak", "local-soak"])
    stream = rng.random() < 0.6
    path, body, headers = _request(api, model, stream, plan.max_tokens)
    report.num_sent += 1
    started = time.monotonic()
    try:
        outcome, backend = await asyncio.wait_for(
            _send(client, path, body, headers, api, stream), plan.request_timeout_s
        )
    except TimeoutError:
        outcome, backend = "hung", "none"
    except httpx.HTTPError as exc:
        outcome, backend = "lost", "none"
        report.problems.append(f"{api} {model} stream={stream}: {type(exc).__name__}")
    report.latencies_s.append(time.monotonic() - started)
    report.outcomes[outcome] += 1
    report.backends[backend] += 1
    if outcome in ("truncated", "lost", "hung") and len(report.problems) < 50:
        report.problems.append(f"{outcome}: {api} {model} stream={stream} backend={backend}")


def _request(
    api: str, model: str, stream: bool, max_tokens: int
) -> tuple[str, dict[str, Any], dict[str, str]]:
    messages = [{"role": "user", "content": "Say hello in five words."}]
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "messages": messages, "stream": stream}
    if api == "anthropic":
        return "/v1/messages", body, {"x-api-key": "soak", "anthropic-version": "2023-06-01"}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return "/v1/chat/completions", body, {"authorization": "Bearer soak"}


async def _send(
    client: httpx.AsyncClient,
    path: str,
    body: dict[str, Any],
    headers: dict[str, str],
    api: str,
    stream: bool,
) -> tuple[str, str]:
    async with client.stream("POST", path, json=body, headers=headers) as response:
        backend = response.headers.get("x-hotspare-backend", "none")
        if response.status_code != 200:
            data = json.loads(await response.aread())
            is_shaped = "error" in data if api == "openai" else data.get("type") == "error"
            return ("error" if is_shaped else "lost"), backend
        if not stream:
            return _judge_json(api, json.loads(await response.aread())), backend
        lines = [line async for line in response.aiter_lines()]
    return _judge_stream(api, lines), backend


def _judge_json(api: str, data: dict[str, Any]) -> str:
    if api == "anthropic":
        complete = data.get("type") == "message" and data.get("stop_reason") is not None
    else:
        choices = data.get("choices") or [{}]
        complete = choices[0].get("finish_reason") is not None
    return "complete" if complete else "lost"


def _judge_stream(api: str, lines: list[str]) -> str:
    events = [json.loads(line[6:]) for line in lines if line.startswith("data: ") and line != "data: [DONE]"]
    if api == "anthropic":
        if any(e.get("type") == "error" for e in events):
            return "error"
        stop = [e for e in events if e.get("type") == "message_delta" and e["delta"].get("stop_reason")]
        ended = bool(stop) and events[-1].get("type") == "message_stop"
        return "complete" if ended else "truncated"
    if any("error" in e for e in events):
        return "error"
    finished = any(c.get("finish_reason") for e in events for c in e.get("choices", []))
    return "complete" if finished and lines and "data: [DONE]" in lines else "truncated"
