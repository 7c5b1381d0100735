"""What the router tells observers (metrics, the status page, alerts), and what it asks an advisor.

The router calls these synchronously on its event loop; an implementation must not block or raise.
`failure` is the FailureClass of a failed attempt (None when it did not fail); a failover `cause` is
a FailureClass value, "circuit_open" (skipped, circuit open) or "degraded" (shed by the advisor).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol

from hotspare.core.errors import FailureClass
from hotspare.router.breaker import Transition


class Stage(StrEnum):
    """When a request left an upstream: before the client saw a byte, or in the middle of its answer."""

    BEFORE_FIRST_BYTE = "before_first_byte"
    MID_STREAM = "mid_stream"


class RouterObserver(Protocol):
    def on_attempt(self, upstream: str, outcome: str, failure: FailureClass | None) -> None:
        """One attempt ended: outcome ok | failed | cancelled | skipped."""

    def on_first_token(self, upstream: str, ttft_s: float) -> None:
        """An upstream's first answer content arrived `ttft_s` after the request was sent."""

    def on_failover(self, upstream: str, cause: str, stage: Stage) -> None:
        """A request moved on from `upstream` to the next backend."""

    def on_transition(self, transition: Transition) -> None:
        """A circuit changed state."""


class Advisor(Protocol):
    """Early warning: how much to trust an upstream that has not tripped its breaker yet."""

    def shed_share(self, upstream: str) -> float:
        """The share of requests (0..1) to send past `upstream` to the next backend."""

    def hedge_scale(self, upstream: str) -> float:
        """A factor (0..1] on the hedge delay: below 1 starts the local model sooner."""
