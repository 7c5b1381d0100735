"""The operations hub of one app: it observes the router (as a `RouterObserver`), every finished
request (from the request log) and the local engine (a poller), and feeds the metrics, the status
board, early warning and webhook alerts from those observations.

Owns the poller task and the alerter: `start(state)` then `aclose()`, on the app's event loop. Every
observer method is synchronous and cheap; alerts are only queued, so no request waits on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from typing import Any

from hotspare.core.errors import FailureClass, HotspareError
from hotspare.engine.protocol import LocalBackend
from hotspare.ops.alerts import AlertKind, WebhookAlerter
from hotspare.ops.config import AlertSettings, EarlyWarningSettings
from hotspare.ops.early_warning import EarlyWarning, Health, HealthChange
from hotspare.ops.engine_stats import EngineSample, EngineState, sample_from_stats
from hotspare.ops.metrics import OpsMetrics
from hotspare.ops.requestlog import RequestRecord
from hotspare.ops.status import StatusBoard
from hotspare.router.breaker import CircuitState, Transition
from hotspare.router.config import Mode, RouterConfig
from hotspare.router.observe import Stage

log = logging.getLogger("hotspare.ops")

POLL_INTERVAL_S = 1.0
STATS_TIMEOUT_S = 2.0
FAILOVER_COALESCE_S = 10.0


class Monitor:
    """Watches the chain `router` describes; `early_warning` and `alerts` are their sections of the
    settings."""

    def __init__(
        self, router: RouterConfig, early_warning: EarlyWarningSettings, alerts: AlertSettings
    ) -> None:
        self.mode = router.effective_mode
        self.upstream_names = tuple(u.name for u in router.upstreams)
        self.board = StatusBoard()
        self.engine = EngineSample(
            EngineState.ABSENT if self.mode is Mode.UPSTREAM_ONLY else EngineState.LOADING
        )
        self.metrics = OpsMetrics(lambda: self.engine)
        self.warning = EarlyWarning(early_warning)
        self.alerter = WebhookAlerter(alerts) if alerts.webhook_url else None
        for name in self.upstream_names:
            self.metrics.add_upstream(name)
            self.board.add_upstream(name)
        self._poller: asyncio.Task[None] | None = None

    async def start(self, state: Any) -> None:
        """Start polling the engine found at `state.backend` (the app's state) and sending alerts."""
        if self.alerter is not None:
            self.alerter.start()
        self._poller = asyncio.create_task(self._poll(state), name="hotspare-ops-poller")

    async def aclose(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        if self.alerter is not None:
            await self.alerter.aclose()

    def backend_label(self, name: str) -> str:
        """`name` if it is a backend this app has (bounded label values), else "other"."""
        if name in self.upstream_names or name in ("local", "none"):
            return name
        return "other"

    # ----- the router's observations (RouterObserver) -----

    def on_attempt(self, upstream: str, outcome: str, failure: FailureClass | None) -> None:
        self.metrics.upstream_requests.labels(upstream, outcome, str(failure) if failure else "none").inc()
        if outcome in ("ok", "failed"):
            failed = outcome == "failed"
            self.board.record_attempt(upstream, failed)
            self._on_health(self.warning.record_attempt(upstream, failed))

    def on_first_token(self, upstream: str, ttft_s: float) -> None:
        self.metrics.upstream_ttft.labels(upstream).observe(ttft_s)
        self.board.record_ttft(upstream, ttft_s)
        self._on_health(self.warning.record_ttft(upstream, ttft_s))

    def on_failover(self, upstream: str, cause: str, stage: Stage) -> None:
        self.metrics.failovers.labels(upstream, cause, str(stage)).inc()
        detail = f"{cause}, {str(stage).replace('_', ' ')}"
        self.board.add_event("failover", upstream, detail, coalesce_s=FAILOVER_COALESCE_S)
        self._alert(AlertKind.FAILOVER, upstream, detail)

    def on_transition(self, transition: Transition) -> None:
        name = transition.upstream
        self.board.add_event(f"breaker_{transition.new}", name, transition.reason)
        if transition.new is CircuitState.OPEN:
            self._alert(AlertKind.BREAKER_OPEN, name, transition.reason)
        elif transition.new is CircuitState.CLOSED:
            self.metrics.failbacks.labels(name, "circuit_closed").inc()
            self.board.add_event("failback", name, "circuit closed")
            self._alert(AlertKind.BREAKER_CLOSE, name, transition.reason)
            self._alert(AlertKind.FAILBACK, name, "circuit closed: traffic returns")
        if transition.new is not CircuitState.HALF_OPEN:  # the breaker decides now; start afresh
            self.warning.reset(name)
            self.metrics.degraded.labels(name).set(0)

    def _on_health(self, change: HealthChange | None) -> None:
        if change is None:
            return
        name = change.upstream
        if change.new is Health.DEGRADED:
            self.metrics.degraded.labels(name).set(1)
            self.board.add_event("degraded", name, change.reason)
            self._alert(AlertKind.DEGRADED, name, change.reason)
        else:
            self.metrics.degraded.labels(name).set(0)
            self.metrics.failbacks.labels(name, "recovered").inc()
            self.board.add_event("failback", name, change.reason)
            self._alert(AlertKind.FAILBACK, name, change.reason)

    def _alert(self, kind: AlertKind, upstream: str, reason: str) -> None:
        if self.alerter is not None:
            self.alerter.notify(kind, upstream, reason)

    # ----- requests and the engine -----

    def on_request(self, record: RequestRecord) -> None:
        """A finished request (from the request log middleware)."""
        if record.api == "other":
            return
        backend = self.backend_label(record.backend)
        m = self.metrics
        m.requests.labels(record.api, backend, record.outcome).inc()
        m.duration.labels(record.api, backend).observe(record.duration_ms / 1000)
        if record.stream and record.ttfb_ms is not None and record.status < 400:
            m.ttft.labels(backend).observe(record.ttfb_ms / 1000)
        if record.input_tokens is not None:
            m.tokens.labels(backend, "in").inc(record.input_tokens)
        if record.output_tokens is not None:
            m.tokens.labels(backend, "out").inc(record.output_tokens)
        if backend != "none":
            self.board.record_served(backend)
        for earlier, later in itertools.pairwise(record.backends or ()):
            m.takeovers.labels(record.api, self.backend_label(earlier), self.backend_label(later)).inc()

    def on_denied(self, reason: str) -> None:
        self.metrics.denied.labels(reason).inc()

    def on_unknown_field(self, api: str, part: str) -> None:
        self.metrics.unknown_fields.labels(api, part).inc()

    async def _poll(self, state: Any) -> None:
        while True:
            await self.refresh_engine(state)
            await asyncio.sleep(POLL_INTERVAL_S)

    async def refresh_engine(self, state: Any) -> None:
        """Take a fresh engine sample from the app's state."""
        self.engine = await self._sample(state)
        s = self.engine
        self.board.record_engine(s.queue_depth, s.running, s.tokens_per_s, s.kv_used_ratio)

    async def _sample(self, state: Any) -> EngineSample:
        backend = getattr(state, "backend", None)
        if backend is None:
            if getattr(state, "load_error", None) is not None:
                return EngineSample(EngineState.FAILED)
            return EngineSample(
                EngineState.ABSENT if self.mode is Mode.UPSTREAM_ONLY else EngineState.LOADING
            )
        if not isinstance(backend, LocalBackend):  # a backend without engine state (tests)
            return EngineSample(EngineState.READY)
        restarts = backend.num_restarts
        if backend.failure is not None:
            return EngineSample(EngineState.FAILED, num_restarts=restarts)
        if not backend.is_ready:
            return EngineSample(EngineState.RESTARTING, num_restarts=restarts)
        try:
            raw = await asyncio.wait_for(backend.stats(), STATS_TIMEOUT_S)
        except (HotspareError, TimeoutError):
            return EngineSample(EngineState.RESTARTING, num_restarts=restarts)
        if raw is None:  # a backend without engine counters (vLLM)
            return EngineSample(EngineState.READY)
        return sample_from_stats(raw, time.monotonic(), self.engine, restarts)
