"""Early warning: degrade an upstream whose error rate or time-to-first-token is rising, before its
circuit breaker trips. Plain synchronous state with an injectable clock, no I/O.

    HEALTHY  --(error rate >= max_error_rate, or recent TTFT >= ttft_factor x baseline)--> DEGRADED
    DEGRADED --(error rate <= half of it, and recent TTFT < the TTFT threshold)-----------> HEALTHY

A degraded upstream gets `shed_share` of its requests sent to the next backend and its hedge delay
multiplied by `hedge_scale` (the router asks through the `Advisor` protocol). The baseline TTFT is the
median of the older half of the window's samples; "recent" is the median of the last RECENT samples.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from hotspare.ops.config import EarlyWarningSettings

RECENT = 5  # TTFT samples that make "recent"
MAX_SAMPLES = 256  # per window and kind: at hundreds of requests a second, medians stay cheap


class Health(StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"


@dataclass(frozen=True, slots=True)
class HealthChange:
    upstream: str
    new: Health
    reason: str


class _Window:
    """One upstream's attempts (time, failed) and TTFT samples (time, seconds) over `window_s`, the
    latest MAX_SAMPLES of each. Evaluated on every request, so the failure count is kept as it
    changes and the TTFT medians are computed once per change of the samples."""

    def __init__(self) -> None:
        self.attempts: deque[tuple[float, bool]] = deque(maxlen=MAX_SAMPLES)
        self.ttfts: deque[tuple[float, float]] = deque(maxlen=MAX_SAMPLES)
        self.health = Health.HEALTHY
        self._num_failed = 0
        self._ttft_ratio: tuple[float, float] | None = None
        self._is_ratio_stale = False

    def add_attempt(self, now: float, failed: bool) -> None:
        if len(self.attempts) == MAX_SAMPLES:
            self._num_failed -= self.attempts[0][1]
        self.attempts.append((now, failed))
        self._num_failed += failed

    def add_ttft(self, now: float, ttft_s: float) -> None:
        self.ttfts.append((now, ttft_s))
        self._is_ratio_stale = True

    def expire(self, horizon: float) -> None:
        while self.attempts and self.attempts[0][0] < horizon:
            self._num_failed -= self.attempts.popleft()[1]
        while self.ttfts and self.ttfts[0][0] < horizon:
            self.ttfts.popleft()
            self._is_ratio_stale = True

    def error_rate(self, min_requests: int) -> float | None:
        if len(self.attempts) < min_requests:
            return None
        return self._num_failed / len(self.attempts)

    def ttft_ratio(self) -> tuple[float, float] | None:
        """(recent median, baseline median) once there are enough samples for both."""
        if self._is_ratio_stale:
            self._is_ratio_stale = False
            samples = [s for _, s in self.ttfts]
            self._ttft_ratio = None
            if len(samples) >= 2 * RECENT:
                baseline = statistics.median(samples[: len(samples) - RECENT])
                self._ttft_ratio = statistics.median(samples[-RECENT:]), baseline
        return self._ttft_ratio


class EarlyWarning:
    """Implements the router's `Advisor`; feed it with `record_attempt` and `record_ttft`. Each
    returns the HealthChange it caused, if any. Not thread-safe: one event loop."""

    def __init__(self, config: EarlyWarningSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self._windows: dict[str, _Window] = {}

    def health(self, upstream: str) -> Health:
        window = self._windows.get(upstream)
        return window.health if window is not None else Health.HEALTHY

    def shed_share(self, upstream: str) -> float:
        return self.config.shed_share if self.health(upstream) is Health.DEGRADED else 0.0

    def hedge_scale(self, upstream: str) -> float:
        return self.config.hedge_scale if self.health(upstream) is Health.DEGRADED else 1.0

    def record_attempt(self, upstream: str, failed: bool) -> HealthChange | None:
        window = self._window(upstream)
        window.add_attempt(self._clock(), failed)
        return self._evaluate(upstream, window)

    def record_ttft(self, upstream: str, ttft_s: float) -> HealthChange | None:
        window = self._window(upstream)
        window.add_ttft(self._clock(), ttft_s)
        return self._evaluate(upstream, window)

    def reset(self, upstream: str) -> None:
        """Forget an upstream's history (its circuit opened: the breaker has taken over)."""
        self._windows.pop(upstream, None)

    def _window(self, upstream: str) -> _Window:
        window = self._windows.setdefault(upstream, _Window())
        window.expire(self._clock() - self.config.window_s)
        return window

    def _evaluate(self, upstream: str, window: _Window) -> HealthChange | None:
        if not self.config.enabled:
            return None
        trouble = self._trouble(window)
        if window.health is Health.HEALTHY and trouble is not None:
            window.health = Health.DEGRADED
            return HealthChange(upstream, Health.DEGRADED, trouble)
        if window.health is Health.DEGRADED and self._has_recovered(window):
            window.health = Health.HEALTHY
            return HealthChange(upstream, Health.HEALTHY, "error rate and time to first token are back")
        return None

    def _trouble(self, window: _Window) -> str | None:
        c = self.config
        rate = window.error_rate(c.min_requests)
        if rate is not None and rate >= c.max_error_rate:
            return f"error rate {rate:.0%} over {len(window.attempts)} attempts"
        ttft = window.ttft_ratio()
        if ttft is not None and ttft[0] >= max(c.min_ttft_s, c.ttft_factor * ttft[1]):
            return f"time to first token {ttft[0]:.2f} s, baseline {ttft[1]:.2f} s"
        return None

    def _has_recovered(self, window: _Window) -> bool:
        c = self.config
        rate = window.error_rate(c.min_requests)
        if rate is not None and rate > c.max_error_rate / 2:
            return False
        ttft = window.ttft_ratio()
        return ttft is None or ttft[0] < max(c.min_ttft_s, c.ttft_factor * ttft[1])
