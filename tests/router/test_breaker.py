from __future__ import annotations

from hotspare.router.breaker import MAX_KEPT_TRANSITIONS, CircuitBreaker, CircuitState
from hotspare.upstream.config import BreakerConfig


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(**overrides: float) -> tuple[CircuitBreaker, FakeClock]:
    clock = FakeClock()
    settings: dict[str, float] = {
        "consecutive_failures": 3,
        "window_s": 10,
        "min_requests": 4,
        "max_error_rate": 0.5,
        "open_s": 5,
        "probe_interval_s": 2,
        "half_open_requests": 1,
        "close_after_successes": 2,
    }
    settings.update(overrides)
    return CircuitBreaker("up", BreakerConfig.model_validate(settings), clock), clock


def state_of(breaker: CircuitBreaker) -> CircuitState:
    return breaker.state  # read through a call so mypy does not narrow across state changes


def fail(breaker: CircuitBreaker, n: int) -> None:
    for _ in range(n):
        assert breaker.try_acquire()
        breaker.record_failure()


def test_opens_after_consecutive_failures_and_then_admits_nothing() -> None:
    breaker, _ = make(min_requests=100)
    fail(breaker, 2)
    assert state_of(breaker) is CircuitState.CLOSED
    fail(breaker, 1)
    assert state_of(breaker) is CircuitState.OPEN
    assert [breaker.try_acquire() for _ in range(5)] == [False] * 5
    assert [(t.old, t.new) for t in breaker.transitions] == [(CircuitState.CLOSED, CircuitState.OPEN)]
    assert breaker.transitions[0].reason == "3 consecutive failures"


def test_a_success_resets_the_consecutive_count() -> None:
    breaker, _ = make(min_requests=100)
    fail(breaker, 2)
    breaker.record_success()
    fail(breaker, 2)
    assert state_of(breaker) is CircuitState.CLOSED


def test_opens_on_error_rate_over_the_window_and_forgets_old_results() -> None:
    breaker, clock = make(consecutive_failures=100)
    breaker.record_success()
    fail(breaker, 1)
    breaker.record_success()
    assert state_of(breaker) is CircuitState.CLOSED  # 1/3 failures, below min_requests
    clock.now += 11  # all three fall out of the window
    breaker.record_success()
    fail(breaker, 1)
    breaker.record_success()
    assert breaker.snapshot().window_attempts == 3
    fail(breaker, 1)  # 2/4 = 0.5
    assert state_of(breaker) is CircuitState.OPEN
    assert breaker.transitions[-1].reason == "error rate 2/4 over 10 s"


def test_probe_schedule_half_open_trickle_and_close() -> None:
    breaker, clock = make()
    fail(breaker, 3)
    assert not breaker.is_probe_due()
    clock.now += 4.9
    assert not breaker.is_probe_due()
    clock.now += 0.1
    assert breaker.is_probe_due()
    breaker.record_probe(is_healthy=False)
    assert state_of(breaker) is CircuitState.OPEN
    assert not breaker.is_probe_due()
    clock.now += 2
    assert breaker.is_probe_due()
    breaker.record_probe(is_healthy=True)
    assert state_of(breaker) is CircuitState.HALF_OPEN
    assert breaker.try_acquire()
    assert not breaker.try_acquire()  # one request at a time while half-open
    breaker.record_success()
    assert state_of(breaker) is CircuitState.HALF_OPEN
    assert breaker.try_acquire()
    breaker.record_success()
    assert state_of(breaker) is CircuitState.CLOSED
    assert [t.new for t in breaker.transitions] == [
        CircuitState.OPEN,
        CircuitState.HALF_OPEN,
        CircuitState.CLOSED,
    ]


def test_a_half_open_failure_reopens_and_restarts_the_wait() -> None:
    breaker, clock = make()
    fail(breaker, 3)
    clock.now += 5
    breaker.record_probe(is_healthy=True)
    fail(breaker, 1)
    assert state_of(breaker) is CircuitState.OPEN
    assert not breaker.try_acquire()
    clock.now += 4
    assert not breaker.is_probe_due()
    clock.now += 1
    assert breaker.is_probe_due()


def test_a_cancelled_half_open_request_frees_its_slot_without_a_verdict() -> None:
    breaker, clock = make()
    fail(breaker, 3)
    clock.now += 5
    breaker.record_probe(is_healthy=True)
    assert breaker.try_acquire()
    breaker.record_cancelled()
    assert state_of(breaker) is CircuitState.HALF_OPEN
    assert breaker.try_acquire()


def test_only_the_latest_transitions_are_kept_and_all_are_counted() -> None:
    breaker, clock = make(close_after_successes=1)
    for _ in range(200):  # a flapping upstream: open, half-open, closed, again and again
        fail(breaker, 3)
        clock.now += 5
        breaker.record_probe(is_healthy=True)
        assert breaker.try_acquire()
        breaker.record_success()
    assert state_of(breaker) is CircuitState.CLOSED
    assert len(breaker.transitions) == MAX_KEPT_TRANSITIONS == 100
    assert breaker.snapshot().num_transitions == 600
    assert breaker.transitions[-1].new is CircuitState.CLOSED
