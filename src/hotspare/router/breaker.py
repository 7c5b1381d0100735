"""A circuit breaker per upstream: plain synchronous state, an injectable clock, no I/O.

    CLOSED --(N consecutive failures, or error rate over the window)--> OPEN
    OPEN   --(a recovery probe succeeds, no earlier than open_s after opening)--> HALF_OPEN
    HALF_OPEN --(close_after_successes real requests succeed)--> CLOSED
    HALF_OPEN --(any failure)--> OPEN

While OPEN, `try_acquire` is False: requests skip the upstream with zero attempts. In HALF_OPEN at
most `half_open_requests` real requests are in flight at once (the trickle). Every `try_acquire` that
returned True must be matched by exactly one `record_success`, `record_failure` or `record_cancelled`.
Not thread-safe: call it from one event loop. `transitions` keeps the latest `MAX_KEPT_TRANSITIONS`
(a flapping upstream of a server that runs for months would otherwise grow it without end);
`num_transitions` counts them all.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from hotspare.upstream.config import BreakerConfig

log = logging.getLogger("hotspare.router")

MAX_KEPT_TRANSITIONS = 100


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class Transition:
    upstream: str
    old: CircuitState
    new: CircuitState
    at: float  # clock time
    reason: str


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    state: CircuitState
    consecutive_failures: int
    window_attempts: int
    window_failures: int
    num_transitions: int


class CircuitBreaker:
    def __init__(
        self,
        upstream: str,
        config: BreakerConfig,
        clock: Callable[[], float] = time.monotonic,
        on_transition: Callable[[Transition], None] | None = None,
    ) -> None:
        self.upstream = upstream
        self.config = config
        self._clock = clock
        self._on_transition = on_transition
        self.state = CircuitState.CLOSED
        self._consecutive_failures = 0
        self._window: deque[tuple[float, bool]] = deque()  # (time, failed)
        self._opened_at = 0.0
        self._last_probe_at = 0.0
        self._half_open_in_flight = 0
        self._half_open_successes = 0
        self.transitions: deque[Transition] = deque(maxlen=MAX_KEPT_TRANSITIONS)
        self.num_transitions = 0

    @property
    def is_open(self) -> bool:
        return self.state is CircuitState.OPEN

    def try_acquire(self) -> bool:
        """May a real request go to this upstream now? True reserves a half-open slot if needed."""
        if self.state is CircuitState.CLOSED:
            return True
        if (
            self.state is CircuitState.HALF_OPEN
            and self._half_open_in_flight < self.config.half_open_requests
        ):
            self._half_open_in_flight += 1
            return True
        return False

    def record_success(self) -> None:
        self._note(failed=False)
        self._consecutive_failures = 0
        if self.state is CircuitState.HALF_OPEN:
            self._release()
            self._half_open_successes += 1
            if self._half_open_successes >= self.config.close_after_successes:
                self._move(CircuitState.CLOSED, f"{self._half_open_successes} half-open successes")

    def record_failure(self) -> None:
        self._note(failed=True)
        self._consecutive_failures += 1
        if self.state is CircuitState.HALF_OPEN:
            self._release()
            self._open("a half-open request failed")
        elif self.state is CircuitState.CLOSED:
            self._maybe_open()

    def record_cancelled(self) -> None:
        """The attempt ended without a verdict (a hedge lost, the client left)."""
        if self.state is CircuitState.HALF_OPEN:
            self._release()

    def is_probe_due(self) -> bool:
        if self.state is not CircuitState.OPEN:
            return False
        now = self._clock()
        return (
            now - self._opened_at >= self.config.open_s
            and now - self._last_probe_at >= self.config.probe_interval_s
        )

    def record_probe(self, is_healthy: bool) -> None:
        self._last_probe_at = self._clock()
        if self.state is CircuitState.OPEN and is_healthy:
            self._half_open_successes = 0
            self._half_open_in_flight = 0
            self._move(CircuitState.HALF_OPEN, "recovery probe succeeded")

    def snapshot(self) -> BreakerSnapshot:
        self._expire()
        failures = sum(1 for _, failed in self._window if failed)
        return BreakerSnapshot(
            self.state, self._consecutive_failures, len(self._window), failures, self.num_transitions
        )

    def _maybe_open(self) -> None:
        c = self.config
        if self._consecutive_failures >= c.consecutive_failures:
            self._open(f"{self._consecutive_failures} consecutive failures")
            return
        attempts = len(self._window)
        failures = sum(1 for _, failed in self._window if failed)
        if attempts >= c.min_requests and failures / attempts >= c.max_error_rate:
            self._open(f"error rate {failures}/{attempts} over {c.window_s:g} s")

    def _open(self, reason: str) -> None:
        self._opened_at = self._clock()
        self._last_probe_at = self._opened_at
        self._move(CircuitState.OPEN, reason)

    def _release(self) -> None:
        self._half_open_in_flight = max(0, self._half_open_in_flight - 1)

    def _note(self, failed: bool) -> None:
        self._window.append((self._clock(), failed))
        self._expire()

    def _expire(self) -> None:
        horizon = self._clock() - self.config.window_s
        while self._window and self._window[0][0] < horizon:
            self._window.popleft()

    def _move(self, new: CircuitState, reason: str) -> None:
        transition = Transition(self.upstream, self.state, new, self._clock(), reason)
        self.state = new
        if new is CircuitState.CLOSED:
            self._consecutive_failures = 0
            self._window.clear()
        self.transitions.append(transition)
        self.num_transitions += 1
        log.warning("circuit %s: %s -> %s (%s)", self.upstream, transition.old, new, reason)
        if self._on_transition is not None:
            self._on_transition(transition)
