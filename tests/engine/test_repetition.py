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


def test_noise_is_a_full_window_whose_mean_entropy_passes_the_limit() -> None:
    meter = repetition.NoiseMeter(4.5)
    readings = repetition.NOISE_WINDOW // repetition.NOISE_EVERY
    for _ in range(readings - 1):
        meter.add(6.0)
    assert not meter.is_noise  # not a full window yet
    meter.add(6.0)
    assert meter.is_noise


def test_the_window_slides_past_a_noisy_span() -> None:
    meter = repetition.NoiseMeter(4.5)
    readings = repetition.NOISE_WINDOW // repetition.NOISE_EVERY
    for _ in range(readings):
        meter.add(6.0)
    for i in range(readings // 2 + 1):
        meter.add(2.0)
        # mean of the window: 6 - 4 * (i + 1) / readings; passes 4.5 until more than 3/8 is clean
        assert meter.is_noise == (6.0 - 4.0 * (i + 1) / readings > 4.5)
    assert not meter.is_noise


def test_an_answer_at_the_limit_is_not_noise() -> None:
    meter = repetition.NoiseMeter(4.5)
    for _ in range(repetition.NOISE_WINDOW):
        meter.add(4.5)
    assert not meter.is_noise


def test_the_entropy_is_read_every_few_tokens() -> None:
    wanted = [n for n in range(10) if repetition.NoiseMeter.wants(n)]
    assert wanted == list(range(0, 10, repetition.NOISE_EVERY))
