"""Early warning: degrade on a rising error rate or TTFT before the breaker would open, recover after."""

from __future__ import annotations

from hotspare.ops.config import EarlyWarningSettings
from hotspare.ops.early_warning import MAX_SAMPLES, RECENT, EarlyWarning, Health


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(**overrides: object) -> tuple[EarlyWarning, Clock]:
    clock = Clock()
    return EarlyWarning(EarlyWarningSettings.model_validate(overrides), clock), clock


def test_a_rising_error_rate_degrades_then_recovery_restores() -> None:
    warning, clock = make(min_requests=5, max_error_rate=0.2, window_s=10)
    changes = [warning.record_attempt("a", failed) for failed in (False, False, False, False)]
    assert changes == [None] * 4 and warning.shed_share("a") == 0.0
    change = warning.record_attempt("a", True)  # 1 of 5 = 20 %
    assert change is not None and change.new is Health.DEGRADED
    assert change.reason == "error rate 20% over 5 attempts"
    assert (warning.shed_share("a"), warning.hedge_scale("a")) == (0.5, 0.5)
    assert warning.shed_share("b") == 0.0 and warning.hedge_scale("b") == 1.0
    clock.now += 11  # the failure leaves the window
    changes = [warning.record_attempt("a", False) for _ in range(5)]
    assert changes[0] is not None and changes[0].new is Health.HEALTHY
    assert warning.health("a") is Health.HEALTHY


def test_a_rising_ttft_degrades() -> None:
    warning, _ = make(ttft_factor=2.0, min_ttft_s=0.25)
    for _ in range(5):
        assert warning.record_ttft("a", 0.2) is None
    for _ in range(2):
        assert warning.record_ttft("a", 0.6) is None  # recent median still 0.2
    warning.record_ttft("a", 0.6)
    change = warning.record_ttft("a", 0.6) or warning.record_ttft("a", 0.6)
    assert change is not None and change.new is Health.DEGRADED
    assert change.reason == "time to first token 0.60 s, baseline 0.20 s"


def test_fast_ttfts_never_degrade_below_the_floor() -> None:
    warning, _ = make(min_ttft_s=0.25)
    for ttft in [0.01] * 5 + [0.1] * 5:  # 10x the baseline but still fast
        assert warning.record_ttft("a", ttft) is None


def test_disabled_never_degrades_and_reset_forgets() -> None:
    warning, _ = make(enabled=False, min_requests=1)
    assert warning.record_attempt("a", True) is None and warning.shed_share("a") == 0.0
    warning, _ = make(min_requests=1)
    assert warning.record_attempt("a", True) is not None
    warning.reset("a")
    assert warning.health("a") is Health.HEALTHY


def test_a_busy_upstream_keeps_only_the_latest_samples_and_still_degrades() -> None:
    warning, clock = make(window_s=60)
    for _ in range(5000):  # a few hundred requests a second, all within the window
        clock.now += 0.003
        assert warning.record_attempt("a", False) is None
        assert warning.record_ttft("a", 0.1) is None
    window = warning._windows["a"]
    assert len(window.attempts) == len(window.ttfts) == MAX_SAMPLES
    changes = [warning.record_ttft("a", 0.9) for _ in range(RECENT)]
    degraded = [c for c in changes if c is not None]
    assert len(degraded) == 1 and degraded[0].new is Health.DEGRADED  # once most recent samples are slow
    assert changes.index(degraded[0]) == RECENT // 2


def test_the_kept_counts_and_medians_match_a_recount_through_overflow_and_expiry() -> None:
    # The window keeps its failure count and TTFT medians as samples come and go (it is evaluated on
    # every request); a brute-force recount of the same deques must agree at every step.
    import random
    import statistics

    from hotspare.ops.early_warning import _Window

    rng = random.Random(7)
    window, now, sizes = _Window(), 0.0, set()
    for step in range(4 * MAX_SAMPLES):
        now += 0.001 if step < 3 * MAX_SAMPLES else 0.5  # a burst that overflows, then expiry
        if rng.random() < 0.5:
            window.add_attempt(now, rng.random() < 0.3)
        else:
            window.add_ttft(now, rng.uniform(0.1, 2.0))
        if step % 37 == 0:
            window.expire(now - 20.0)
        failed = [f for _, f in window.attempts]
        expected_rate = sum(failed) / len(failed) if failed else None
        assert window.error_rate(1) == expected_rate
        samples = [s for _, s in window.ttfts]
        expected = None
        if len(samples) >= 2 * RECENT:
            expected = (statistics.median(samples[-RECENT:]), statistics.median(samples[:-RECENT]))
        assert window.ttft_ratio() == expected
        sizes.add(len(window.attempts))
    assert MAX_SAMPLES in sizes and len(window.attempts) < MAX_SAMPLES / 4  # both paths were taken
