"""Recovery probes: while a circuit is open, ask its upstream whether the model is back.

The probe is a real 1-token request for the very model whose circuit is open (neither API accepts
max_tokens 0): `GET /v1/models` stays up while one model fails (failoverbench S15 cycled
open/half-open 7 times on it). Without a model or a key to ask with, the probe falls back to
`GET /v1/models`. Success moves the circuit to half-open; real requests then close it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hotspare.router.breaker import CircuitBreaker
from hotspare.upstream.base import Upstream

log = logging.getLogger("hotspare.router")


@dataclass(frozen=True, slots=True)
class Guarded:
    upstream: Upstream
    breaker: CircuitBreaker
    model: Callable[[], str | None] = lambda: None  # the upstream model the probe asks for


class Prober:
    """Runs in the background (`start` / `aclose`); `run_once` is the testable step."""

    def __init__(self, members: Sequence[Guarded], tick_s: float = 0.1) -> None:
        self._members = members
        self._tick_s = tick_s
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> None:
        due = [m for m in self._members if m.breaker.is_probe_due()]
        results = await asyncio.gather(*(m.upstream.probe(m.model()) for m in due))
        for member, is_healthy in zip(due, results, strict=True):
            log.info("probe %s: %s", member.upstream.name, "healthy" if is_healthy else "still failing")
            member.breaker.record_probe(is_healthy)

    async def _loop(self) -> None:
        while True:
            await self.run_once()
            await asyncio.sleep(self._tick_s)  # a schedule, not a wait for an event

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="hotspare-prober")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
