"""The local engine as operations see it: a sample from two successive `LocalEngine.stats()` dicts
(rates need two), plus the engine's load state. Pure functions of their inputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class EngineState(StrEnum):
    LOADING = "loading"
    READY = "ready"
    RESTARTING = "restarting"  # loaded once, its process is being replaced
    FAILED = "failed"
    ABSENT = "absent"  # upstream-only mode, or an in-process backend without an engine


@dataclass(frozen=True, slots=True)
class EngineSample:
    """One observation. Ratios are 0..1; `prefix_hit_ratio` is cumulative since the engine started
    (cached prompt tokens / prompt tokens); `tokens_per_s` is over the time since the last sample."""

    state: EngineState
    at: float = 0.0  # monotonic seconds
    queue_depth: int = 0
    running: int = 0
    kv_used_tokens: int = 0
    kv_capacity_tokens: int = 0
    prefix_hit_ratio: float = 0.0
    tokens_per_s: float = 0.0
    num_generated_tokens: int = 0
    num_steps: int = 0
    num_preemptions: int = 0
    num_repetition_stops: int = 0  # answers ended because they looped (engine/repetition.py)
    num_restarts: int = 0
    batch_size_bounds: tuple[int, ...] = ()
    steps_by_batch_size: tuple[int, ...] = ()
    num_batched_sequences: int = 0
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def kv_used_ratio(self) -> float:
        return self.kv_used_tokens / self.kv_capacity_tokens if self.kv_capacity_tokens else 0.0


def sample_from_stats(
    stats: dict[str, Any], at: float, previous: EngineSample | None, num_restarts: int
) -> EngineSample:
    """A READY sample from `stats` taken at `at`. Counters restart with the engine process, so a rate
    against a previous sample with larger counters (or a different restart count) is 0."""
    generated = int(stats.get("num_generated_tokens", 0))
    rate = 0.0
    is_same_process = previous is not None and previous.state is EngineState.READY
    if (
        previous is not None
        and is_same_process
        and previous.num_restarts == num_restarts
        and at > previous.at
    ):
        delta = generated - previous.num_generated_tokens
        rate = delta / (at - previous.at) if delta > 0 else 0.0
    prompt = int(stats.get("prefix_prompt_tokens", 0))
    cached = int(stats.get("prefix_cached_tokens", 0))
    return EngineSample(
        state=EngineState.READY,
        at=at,
        queue_depth=int(stats.get("num_waiting", 0)),
        running=int(stats.get("num_running", 0)),
        kv_used_tokens=int(stats.get("kv_used_tokens", 0)),
        kv_capacity_tokens=int(stats.get("kv_capacity_tokens", 0)),
        prefix_hit_ratio=cached / prompt if prompt else 0.0,
        tokens_per_s=rate,
        num_generated_tokens=generated,
        num_steps=int(stats.get("num_steps", 0)),
        num_preemptions=int(stats.get("num_preemptions", 0)),
        num_repetition_stops=int(stats.get("num_repetition_stops", 0)),
        num_restarts=num_restarts,
        batch_size_bounds=tuple(stats.get("batch_size_bounds", ())),
        steps_by_batch_size=tuple(stats.get("steps_by_batch_size", ())),
        num_batched_sequences=int(stats.get("num_batched_sequences", 0)),
        raw=dict(stats),
    )
