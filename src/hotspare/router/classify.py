"""What the router does after an upstream attempt fails: decided by failure class, never by text."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from hotspare.core.errors import FailureClass, UpstreamError

MAX_RETRIES = 1  # "one quick retry on the same upstream" where it is cheap and likely to help
# The retry after a 5xx or a reset waits a short random time (full jitter over this range, never more
# than a quarter of the time the request has left): an immediate retry (it was 0.0 s) lands on a
# server still restarting, and many clients retrying in lockstep is the thundering herd.
RETRY_BACKOFF_S = (0.05, 0.5)


class Action(StrEnum):
    RETRY = "retry"  # the same upstream again, after `delay_s`
    FAIL_OVER = "fail_over"  # the next backend in the chain
    LARGER_CONTEXT = "larger_context"  # the next backend with a larger context, else back to the client
    RETURN_TO_CLIENT = "return_to_client"  # the upstream's own error response, unchanged


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    delay_s: float = 0.0
    counts_as_failure: bool = True  # against the upstream's circuit breaker


def classify(
    error: UpstreamError,
    *,
    num_retries: int,
    budget_left_s: float,
    max_retry_after_s: float,
    has_delivered: bool,
    jitter: Callable[[float, float], float] = random.uniform,
) -> Decision:
    """`num_retries`: retries already spent on this upstream for this request; `budget_left_s`: time
    left in the request's overall budget; `has_delivered`: text already reached the client (then the
    only way forward is a takeover by the next backend); `jitter(low, high)` draws the backoff."""
    if error.failure is FailureClass.CONTEXT_LENGTH:
        return Decision(Action.LARGER_CONTEXT, counts_as_failure=False)
    if error.is_client_fault:
        return Decision(Action.RETURN_TO_CLIENT, counts_as_failure=False)
    if has_delivered or num_retries >= MAX_RETRIES or not error.retryable:
        return Decision(Action.FAIL_OVER)
    if error.failure is FailureClass.RATE_LIMITED:
        wait_s = error.retry_after_s or 0.0
        # Waiting is worth it only when short next to what the request may still spend.
        if wait_s <= max_retry_after_s and wait_s <= budget_left_s / 4:
            return Decision(Action.RETRY, delay_s=wait_s)
        return Decision(Action.FAIL_OVER)
    return Decision(Action.RETRY, delay_s=max(0.0, min(jitter(*RETRY_BACKOFF_S), budget_left_s / 4)))
