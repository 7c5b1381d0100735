from __future__ import annotations

from hotspare.router.hedge import HedgeGate, HedgePolicy, TtftTracker


def test_fixed_delay_is_capped_by_the_first_token_limit() -> None:
    assert HedgePolicy(first_token_s=10, fixed_delay_s=1.5).delay_s([]) == 1.5
    assert HedgePolicy(first_token_s=1, fixed_delay_s=1.5).delay_s([9.0] * 10) == 1


def test_cold_start_uses_half_the_first_token_limit() -> None:
    assert HedgePolicy(first_token_s=8).delay_s([0.1, 0.1, 0.1, 0.1]) == 4.0


def test_derived_from_recent_p90() -> None:
    samples = [0.1 * i for i in range(1, 11)]  # p90 (index 9 of 10) = 1.0
    assert HedgePolicy(first_token_s=10).delay_s(samples) == 2.0


def test_derived_delay_has_a_floor_and_a_ceiling() -> None:
    assert HedgePolicy(first_token_s=10).delay_s([0.01] * 10) == 0.25
    assert HedgePolicy(first_token_s=3).delay_s([5.0] * 10) == 3


def test_tracker_keeps_the_most_recent_samples() -> None:
    tracker = TtftTracker(max_samples=3)
    for sample in (1.0, 2.0, 3.0, 4.0):
        tracker.add(sample)
    assert tracker.samples() == [2.0, 3.0, 4.0]


def test_gate_admits_at_most_its_limit() -> None:
    gate = HedgeGate(max_in_flight=2)
    assert [gate.try_enter() for _ in range(3)] == [True, True, False]
    gate.leave()
    assert gate.try_enter()
    assert gate.num_in_flight == 2


def test_cold_start_waits_at_most_five_seconds() -> None:
    assert HedgePolicy(first_token_s=30).delay_s([]) == 5.0
