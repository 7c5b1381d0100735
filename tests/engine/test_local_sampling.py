"""A request's sampling as the local model runs it (engine/local_sampling.py): exact cases."""

from __future__ import annotations

from hotspare.core.types import SamplingParams
from hotspare.engine.local_sampling import is_untruncated, local_sampling


def test_only_an_untruncated_non_greedy_request_gets_the_default_min_p() -> None:
    assert local_sampling(SamplingParams(), 0, 0.05) == SamplingParams(min_p=0.05)
    assert local_sampling(SamplingParams(temperature=0.3), 0, 0.05).min_p == 0.05
    for own in (
        SamplingParams(top_p=0.9),
        SamplingParams(top_k=40),
        SamplingParams(min_p=0.2),
        SamplingParams(temperature=0),
    ):
        assert not is_untruncated(own)
        assert local_sampling(own, 0, 0.05) is own  # sampled as it asks


def test_the_budget_caps_a_huge_or_absent_max_tokens_and_keeps_a_smaller_one() -> None:
    assert local_sampling(SamplingParams(max_tokens=None, top_k=1), 512, 0).max_tokens == 512
    assert local_sampling(SamplingParams(max_tokens=64000, top_k=1), 512, 0).max_tokens == 512
    small = SamplingParams(max_tokens=100, top_k=1)
    assert local_sampling(small, 512, 0) is small


def test_zero_turns_both_off() -> None:
    request = SamplingParams(max_tokens=None)
    assert local_sampling(request, 0, 0.0) is request
