from __future__ import annotations

from typing import Any

import pytest

from hotspare.core.errors import FailureClass, UpstreamError
from hotspare.router.classify import RETRY_BACKOFF_S, Action, Decision, classify


def decide(
    failure: FailureClass,
    *,
    retry_after_s: float | None = None,
    num_retries: int = 0,
    budget_left_s: float = 60.0,
    has_delivered: bool = False,
) -> Decision:
    error = UpstreamError(failure, "x", upstream="u", retry_after_s=retry_after_s)
    return classify(
        error,
        num_retries=num_retries,
        budget_left_s=budget_left_s,
        max_retry_after_s=2.0,
        has_delivered=has_delivered,
        jitter=lambda low, high: 0.0,
    )


@pytest.mark.parametrize(
    ("failure", "action"),
    [
        (FailureClass.CONNECT_ERROR, Action.RETRY),
        (FailureClass.SERVER_ERROR, Action.RETRY),
        (FailureClass.OVERLOADED, Action.RETRY),
        (FailureClass.CONNECT_TIMEOUT, Action.FAIL_OVER),
        (FailureClass.HEADERS_TIMEOUT, Action.FAIL_OVER),
        (FailureClass.FIRST_TOKEN_TIMEOUT, Action.FAIL_OVER),
        (FailureClass.IDLE_TIMEOUT, Action.FAIL_OVER),
        (FailureClass.TOTAL_TIMEOUT, Action.FAIL_OVER),
        (FailureClass.STREAM_CUT, Action.FAIL_OVER),
        (FailureClass.MALFORMED, Action.FAIL_OVER),
        (FailureClass.STREAM_ERROR, Action.FAIL_OVER),
        (FailureClass.AUTH_OUTAGE, Action.FAIL_OVER),
        (FailureClass.RATE_LIMITED, Action.FAIL_OVER),  # no Retry-After: do not guess, move on
        (FailureClass.CLIENT_FAULT, Action.RETURN_TO_CLIENT),
        (FailureClass.CONTEXT_LENGTH, Action.LARGER_CONTEXT),
    ],
)
def test_first_failure_of_each_class(failure: FailureClass, action: Action) -> None:
    assert decide(failure).action is action


def test_only_one_quick_retry() -> None:
    assert decide(FailureClass.SERVER_ERROR, num_retries=1) == Decision(Action.FAIL_OVER)


def test_nothing_is_retried_once_text_reached_the_client() -> None:
    assert decide(FailureClass.CONNECT_ERROR, has_delivered=True) == Decision(Action.FAIL_OVER)


def test_client_faults_do_not_count_against_the_upstream() -> None:
    assert decide(FailureClass.CLIENT_FAULT) == Decision(Action.RETURN_TO_CLIENT, counts_as_failure=False)
    assert decide(FailureClass.CONTEXT_LENGTH).counts_as_failure is False


def test_short_retry_after_is_honoured() -> None:
    assert decide(FailureClass.RATE_LIMITED, retry_after_s=1.5) == Decision(Action.RETRY, delay_s=1.5)


def test_long_retry_after_fails_over() -> None:
    assert decide(FailureClass.RATE_LIMITED, retry_after_s=2.5).action is Action.FAIL_OVER


def test_retry_after_must_be_small_next_to_the_budget() -> None:
    assert decide(FailureClass.RATE_LIMITED, retry_after_s=1.0, budget_left_s=3.9).action is Action.FAIL_OVER
    assert decide(FailureClass.RATE_LIMITED, retry_after_s=1.0, budget_left_s=4.0).action is Action.RETRY


def test_error_properties() -> None:
    limited = UpstreamError(FailureClass.RATE_LIMITED, "x", upstream="u")
    assert (limited.retryable, limited.should_fail_over) == (False, True)
    hinted = UpstreamError(FailureClass.RATE_LIMITED, "x", upstream="u", retry_after_s=1)
    assert hinted.retryable
    fault = UpstreamError(FailureClass.CLIENT_FAULT, "x", upstream="u", status=400, body=b"{}")
    assert (fault.retryable, fault.should_fail_over, fault.is_client_fault) == (False, False, True)
    assert fault.message == "upstream 'u': x"


def test_the_retry_after_a_5xx_waits_a_jittered_backoff() -> None:
    error = UpstreamError(FailureClass.SERVER_ERROR, "HTTP 500", upstream="u")

    def draw(low: float, high: float) -> float:
        assert (low, high) == RETRY_BACKOFF_S
        return 0.3

    common: dict[str, Any] = {"num_retries": 0, "max_retry_after_s": 2.0, "has_delivered": False}
    assert classify(error, budget_left_s=60.0, jitter=draw, **common) == Decision(Action.RETRY, delay_s=0.3)
    # never more than a quarter of what the request has left
    assert classify(error, budget_left_s=0.4, jitter=draw, **common) == Decision(Action.RETRY, delay_s=0.1)
    low, high = RETRY_BACKOFF_S
    assert all(low <= classify(error, budget_left_s=60.0, **common).delay_s <= high for _ in range(50))
