"""Webhook alerts: one JSON POST per event (breaker open/close, failover, failback, degraded), sent by a
background task so that no request ever waits on the webhook.

`notify` only enqueues (a full queue drops the oldest alert and counts it); the sender retries a
delivery that fails (connection error, timeout, 5xx, 429) up to `max_attempts` times, waiting
`backoff_s`, then twice that, and so on up to `max_backoff_s` per wait: uncapped, the last of 20
attempts at a 0.5 s backoff waited 36 h, and every alert queued behind it waited too. The body holds
the event, the upstream's name, a reason made of counts and failure classes, and a timestamp -- never
a key, header, prompt or URL with credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from enum import StrEnum

import httpx

from hotspare import __version__
from hotspare.ops.config import AlertSettings

log = logging.getLogger("hotspare.alerts")

MAX_QUEUED = 256


class AlertKind(StrEnum):
    BREAKER_OPEN = "breaker_open"
    BREAKER_CLOSE = "breaker_close"
    FAILOVER = "failover"
    FAILBACK = "failback"
    DEGRADED = "degraded"


@dataclass(frozen=True, slots=True)
class Alert:
    event: AlertKind
    upstream: str
    reason: str
    at: float  # unix time

    def body(self) -> dict[str, object]:
        return {**asdict(self), "source": "hotspare", "version": __version__, "host": socket.gethostname()}


class WebhookAlerter:
    """Owns its HTTP client and sender task: `start()` then `aclose()` on one event loop."""

    def __init__(
        self,
        config: AlertSettings,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.config = config
        self._clock = clock
        self._sleep = sleep
        self._queue: asyncio.Queue[Alert] = asyncio.Queue(MAX_QUEUED)
        self._last_failover: dict[tuple[str, str], float] = {}
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        self.num_delivered = 0
        self.num_failed = 0
        self.num_dropped = 0

    def start(self) -> None:
        self._client = httpx.AsyncClient(timeout=self.config.timeout_s, follow_redirects=False)
        self._task = asyncio.create_task(self._send_all(), name="hotspare-alerts")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._client is not None:
            await self._client.aclose()

    def notify(self, event: AlertKind, upstream: str, reason: str) -> None:
        """Queue an alert; never blocks. Failovers are coalesced per upstream and reason."""
        if event is AlertKind.FAILOVER:
            key, now = (upstream, reason), self._clock()
            last = self._last_failover.get(key)
            if last is not None and now - last < self.config.failover_cooldown_s:
                return
            self._last_failover[key] = now
        alert = Alert(event, upstream, reason, time.time())
        if self._queue.full():
            self._queue.get_nowait()
            self.num_dropped += 1
        self._queue.put_nowait(alert)

    async def _send_all(self) -> None:
        while True:
            alert = await self._queue.get()
            if await self._deliver(alert):
                self.num_delivered += 1
            else:
                self.num_failed += 1
                log.warning("alert %s for %s not delivered", alert.event, alert.upstream)

    async def _deliver(self, alert: Alert) -> bool:
        assert self._client is not None and self.config.webhook_url is not None
        delay_s = min(self.config.backoff_s, self.config.max_backoff_s)
        for attempt in range(self.config.max_attempts):
            if attempt:
                await self._sleep(delay_s)
                delay_s = min(delay_s * 2, self.config.max_backoff_s)
            try:
                response = await self._client.post(self.config.webhook_url, json=alert.body())
            except httpx.HTTPError as exc:
                log.info("alert delivery failed (%s), attempt %d", type(exc).__name__, attempt + 1)
                continue
            if response.status_code < 300:
                return True
            if response.status_code < 500 and response.status_code != 429:
                return False  # the receiver refuses it: retrying will not help
        return False
