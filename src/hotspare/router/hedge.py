"""When to start the next backend beside an upstream that has not produced its first token yet.

With too few time-to-first-token samples the delay is half the first-token limit, but at most
`max_cold_delay_s` (5 s): the limit is a give-up bound, not an estimate, and with the 30 s limits
agents use, waiting 15 s before trying anyone else turned a slow first token (failoverbench S07)
into a 20 s answer."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

MIN_SAMPLES = 5  # below this many TTFT samples the delay is a fixed share of the TTFT limit


@dataclass(frozen=True, slots=True)
class HedgePolicy:
    """`fixed_delay_s` overrides the derived delay; the derived one is `multiplier` x the recent p90
    time-to-first-token, at least `floor_s`, and never past the upstream's first-token limit; with
    fewer than MIN_SAMPLES samples, `cold_share` of that limit, at most `max_cold_delay_s`."""

    first_token_s: float
    fixed_delay_s: float | None = None
    multiplier: float = 2.0
    floor_s: float = 0.25
    cold_share: float = 0.5
    max_cold_delay_s: float = 5.0

    def delay_s(self, recent_ttft_s: list[float]) -> float:
        if self.fixed_delay_s is not None:
            return min(self.fixed_delay_s, self.first_token_s)
        if len(recent_ttft_s) < MIN_SAMPLES:
            return min(self.first_token_s * self.cold_share, self.max_cold_delay_s)
        ordered = sorted(recent_ttft_s)
        p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
        return min(self.first_token_s, max(self.floor_s, self.multiplier * p90))


class TtftTracker:
    """The last `max_samples` times-to-first-token of one upstream, in seconds."""

    def __init__(self, max_samples: int = 50) -> None:
        self._samples: deque[float] = deque(maxlen=max_samples)

    def add(self, ttft_s: float) -> None:
        self._samples.append(ttft_s)

    def samples(self) -> list[float]:
        return list(self._samples)


class HedgeGate:
    """Caps the local answers started as hedges that are still racing their upstream, so that when
    everything is slow because the machine itself is saturated, hedging does not add local model runs
    to the overload. Not thread-safe: one event loop."""

    def __init__(self, max_in_flight: int = 2) -> None:
        self.max_in_flight = max_in_flight
        self.num_in_flight = 0

    def try_enter(self) -> bool:
        if self.num_in_flight >= self.max_in_flight:
            return False
        self.num_in_flight += 1
        return True

    def leave(self) -> None:
        self.num_in_flight = max(0, self.num_in_flight - 1)
