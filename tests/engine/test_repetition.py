"""Degenerate-output detection (engine/repetition.py): exact cases, then the real engine on a prompt
that makes the embedded model loop."""

from __future__ import annotations

import random

from hotspare.engine import repetition
from hotspare.engine.repetition import is_degenerate, is_starved, loop_period, should_check


def test_the_same_token_64_times_is_a_loop_of_period_1() -> None:
    assert loop_period([7] * 64) == 1
    assert loop_period([7] * 63) is None


def test_a_repeated_line_is_a_loop_of_its_length() -> None:
    line = list(range(100, 120))  # 20 tokens
    assert loop_period([1, 2, 3, *line * 4]) == 20
    assert loop_period([1, 2, 3, *line * 3]) is None  # 60 tokens: under MIN_SPAN


def test_a_period_longer_than_the_maximum_is_not_matched() -> None:
    line = list(range(repetition.MAX_PERIOD + 1))
    assert loop_period(line * 5) is None


def test_a_cycle_with_variations_is_starved() -> None:
    cycle = [1, 2, 1, 3, 1, 2, 1, 4, 5]
    rng = random.Random(0)
    output = [rng.choice(cycle) for _ in range(300)]
    assert loop_period(output) is None
    assert is_starved(output) and is_degenerate(output)


def test_ordinary_varied_output_is_not_degenerate() -> None:
    rng = random.Random(1)
    output = [rng.randrange(30000) for _ in range(600)]
    assert not is_degenerate(output)
    # a short repeated run inside ordinary output is not a loop either
    assert not is_degenerate([*output, *([5, 6] * 10)])


def test_checks_start_at_the_minimum_span_and_run_every_few_tokens() -> None:
    assert not should_check(repetition.MIN_SPAN - repetition.CHECK_EVERY)
    assert should_check(repetition.MIN_SPAN)
    assert not should_check(repetition.MIN_SPAN + 1)
