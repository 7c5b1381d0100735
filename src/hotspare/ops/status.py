"""The status board: what `/status` and `/status.json` show, kept as 10-second buckets over the last
10 minutes plus a bounded timeline of notable events. Plain synchronous state, injectable clocks.

Per upstream and bucket: attempts, failures and first-token times; per backend and bucket: requests
served; per bucket: the last engine sample. Memory is bounded: NUM_BUCKETS buckets per series and
MAX_EVENTS timeline entries.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

BUCKET_S = 10.0
NUM_BUCKETS = 60  # 10 minutes
MAX_EVENTS = 200


@dataclass(slots=True)
class Bucket:
    """One BUCKET_S of one upstream (attempts, failures, TTFT) or of the app (served, engine)."""

    index: int  # floor(time / BUCKET_S)
    attempts: int = 0
    failures: int = 0
    ttft_sum_s: float = 0.0
    num_ttft: int = 0
    served: dict[str, int] = field(default_factory=dict)
    queue_depth: int = 0
    running: int = 0
    tokens_per_s: float = 0.0
    kv_used_ratio: float = 0.0


class Series:
    """The last NUM_BUCKETS buckets of one subject, oldest first."""

    def __init__(self) -> None:
        self.buckets: deque[Bucket] = deque(maxlen=NUM_BUCKETS)

    def at(self, index: int) -> Bucket:
        if not self.buckets or self.buckets[-1].index != index:
            self.buckets.append(Bucket(index))
        return self.buckets[-1]

    def recent(self, now_index: int, num: int) -> list[Bucket]:
        """The last `num` buckets up to `now_index`, empty ones filled in."""
        by_index = {b.index: b for b in self.buckets}
        return [by_index.get(i, Bucket(i)) for i in range(now_index - num + 1, now_index + 1)]


@dataclass(frozen=True, slots=True)
class Event:
    at: float  # unix time
    kind: str  # breaker_open | breaker_half_open | breaker_close | failover | failback | degraded | ...
    subject: str  # an upstream or backend name
    detail: str


class StatusBoard:
    """Not thread-safe: one event loop."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.upstreams: dict[str, Series] = {}
        self.app = Series()
        self.events: deque[Event] = deque(maxlen=MAX_EVENTS)
        self.last_backend: str | None = None
        self._last_failover: dict[tuple[str, str], float] = {}

    def _index(self) -> int:
        return int(self._clock() // BUCKET_S)

    def add_upstream(self, name: str) -> None:
        self.upstreams.setdefault(name, Series())

    def record_attempt(self, upstream: str, failed: bool) -> None:
        bucket = self.upstreams.setdefault(upstream, Series()).at(self._index())
        bucket.attempts += 1
        bucket.failures += failed

    def record_ttft(self, upstream: str, ttft_s: float) -> None:
        bucket = self.upstreams.setdefault(upstream, Series()).at(self._index())
        bucket.ttft_sum_s += ttft_s
        bucket.num_ttft += 1

    def record_served(self, backend: str) -> None:
        bucket = self.app.at(self._index())
        bucket.served[backend] = bucket.served.get(backend, 0) + 1
        self.last_backend = backend

    def record_engine(self, queue_depth: int, running: int, tokens_per_s: float, kv_ratio: float) -> None:
        bucket = self.app.at(self._index())
        bucket.queue_depth, bucket.running = queue_depth, running
        bucket.tokens_per_s, bucket.kv_used_ratio = tokens_per_s, kv_ratio

    def add_event(self, kind: str, subject: str, detail: str, coalesce_s: float = 0.0) -> None:
        """Append to the timeline; with `coalesce_s`, a repeat of the same kind, subject and detail
        within that long is dropped (a burst of failovers is one line)."""
        now = self._clock()
        if coalesce_s:
            key = (f"{kind}:{subject}", detail)
            last = self._last_failover.get(key)
            if last is not None and now - last < coalesce_s:
                return
            self._last_failover[key] = now
        self.events.append(Event(now, kind, subject, detail))

    def upstream_summary(self, name: str, minutes: int = 5) -> dict[str, object]:
        """Error rate and mean TTFT over the last `minutes`, and the per-bucket series for a chart."""
        num = int(minutes * 60 / BUCKET_S)
        buckets = self.upstreams.get(name, Series()).recent(self._index(), num)
        attempts = sum(b.attempts for b in buckets)
        failures = sum(b.failures for b in buckets)
        num_ttft = sum(b.num_ttft for b in buckets)
        return {
            "attempts": attempts,
            "failures": failures,
            "error_rate": failures / attempts if attempts else 0.0,
            "ttft_mean_s": sum(b.ttft_sum_s for b in buckets) / num_ttft if num_ttft else None,
            "series": {
                "error_rate": [b.failures / b.attempts if b.attempts else 0.0 for b in buckets],
                "ttft_s": [b.ttft_sum_s / b.num_ttft if b.num_ttft else None for b in buckets],
                "attempts": [b.attempts for b in buckets],
            },
        }

    def served_summary(self, minutes: int = 5) -> dict[str, object]:
        num = int(minutes * 60 / BUCKET_S)
        buckets = self.app.recent(self._index(), num)
        totals: dict[str, int] = {}
        for b in buckets:
            for backend, count in b.served.items():
                totals[backend] = totals.get(backend, 0) + count
        return {
            "last_backend": self.last_backend,
            "requests_by_backend": totals,
            "series": {
                "requests": [sum(b.served.values()) for b in buckets],
                "local_requests": [b.served.get("local", 0) for b in buckets],
                "engine_running": [b.running for b in buckets],
                "engine_queue_depth": [b.queue_depth for b in buckets],
                "engine_tokens_per_s": [round(b.tokens_per_s, 2) for b in buckets],
            },
        }

    def timeline(self, limit: int = 50) -> list[dict[str, object]]:
        """The latest `limit` events, newest first."""
        recent = list(self.events)[-limit:]
        return [
            {"at": e.at, "kind": e.kind, "subject": e.subject, "detail": e.detail} for e in reversed(recent)
        ]
