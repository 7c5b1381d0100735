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

The other way an answer degenerates is runaway noise: sampled at temperature 1 (what agents send), a
small model loses the thread and emits word salad, fragments and stray letters, no n-gram repeating,
until the budget ends it. What marks it is the model's own uncertainty: the entropy of its (unscaled)
next-token distribution, which `NoiseMeter` averages over the last NOISE_WINDOW tokens, reading it
every NOISE_EVERY-th token (the read costs ~57 us for SmolLM2's 49k-token vocabulary). Measured on
SmolLM2-135M and Gemma 3 270M with scripts/measure_noise.py (docs/engine.md): coherent answers (prose,
code, lists) stayed under 3.7 nats in every 64-token window, weak or incoherent text reached 3.7-4.5
(Gemma's rambling 4.4), word salad 4.5-5.2. NOISE_NATS sits above all readable text and catches the
salad (`[local] noise_stop_nats`; 0 turns it off). Under a grammar the sampled tokens are the
grammar's, not the model's choice, so the meter stops once a constrained span begins (engine/core.py).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

CHECK_EVERY = 8
MIN_SPAN = 64
REPEATS = 4
MAX_PERIOD = 64
DIVERSITY_WINDOW = 256
MIN_DISTINCT = 24
NOISE_WINDOW = 64
NOISE_EVERY = 2
NOISE_NATS = 4.5


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


class NoiseMeter:
    """The mean entropy, in nats, of the model's next-token distributions over the last NOISE_WINDOW
    tokens of one answer, read every NOISE_EVERY-th token. `is_noise` once that mean passes `max_nats`."""

    def __init__(self, max_nats: float) -> None:
        self.max_nats = max_nats
        self._values: deque[float] = deque(maxlen=NOISE_WINDOW // NOISE_EVERY)

    @staticmethod
    def wants(num_output_tokens: int) -> bool:
        """Whether the entropy before output token `num_output_tokens` (0-based) is read."""
        return num_output_tokens % NOISE_EVERY == 0

    def add(self, nats: float) -> None:
        self._values.append(nats)

    @property
    def is_noise(self) -> bool:
        values = self._values
        return len(values) == values.maxlen and sum(values) / len(values) > self.max_nats
