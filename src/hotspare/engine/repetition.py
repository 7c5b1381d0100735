"""Degenerate output: when a local answer has fallen into a loop, stop it. Pure functions of token ids.

A small model at a long context, or asked for more than it can say, often ends in a loop: the same
line, the same few words, or a short cycle of tokens, until max_tokens. Clients of agents ask for
32k-64k tokens, so such an answer ran for minutes (measured: a takeover continued locally for 633 s).
The engine checks each answer every CHECK_EVERY tokens and ends a looping one with reason `length`:
it was cut, not finished, and is never reported as `stop` / `end_turn`.

Two signs, both over the answer's own tokens (never the prompt):
- periodic: the last `max(MIN_SPAN, REPEATS * p)` tokens repeat with a period p <= MAX_PERIOD (the
  same token 64 times; the same 20-token line 4 times in a row);
- starved: the last DIVERSITY_WINDOW tokens use fewer than MIN_DISTINCT distinct tokens (a cycle with
  small variations, "a b a c a b a c ...", that no single period matches).
Normal prose, code and tables have neither: a 256-token window of text holds well over 40 distinct
tokens, and legitimate repetition (a table's separator row) is far shorter than the spans above.
"""

from __future__ import annotations

from collections.abc import Sequence

CHECK_EVERY = 8
MIN_SPAN = 64
REPEATS = 4
MAX_PERIOD = 64
DIVERSITY_WINDOW = 256
MIN_DISTINCT = 24


def loop_period(output: Sequence[int]) -> int | None:
    """The shortest period p with which the tail of `output` repeats REPEATS times (and over at least
    MIN_SPAN tokens), or None."""
    n = len(output)
    for period in range(1, MAX_PERIOD + 1):
        span = max(MIN_SPAN, REPEATS * period)
        if span > n:
            return None
        tail = output[n - span :]
        if list(tail[period:]) == list(tail[:-period]):
            return period
    return None


def is_starved(output: Sequence[int]) -> bool:
    """The last DIVERSITY_WINDOW tokens use fewer than MIN_DISTINCT distinct tokens."""
    return len(output) >= DIVERSITY_WINDOW and len(set(output[-DIVERSITY_WINDOW:])) < MIN_DISTINCT


def is_degenerate(output: Sequence[int]) -> bool:
    """`output` (the answer's tokens so far) has fallen into a loop; see the module docstring."""
    return loop_period(output) is not None or is_starved(output)


def should_check(num_output_tokens: int) -> bool:
    return num_output_tokens >= MIN_SPAN and num_output_tokens % CHECK_EVERY == 0
