"""How the local model samples a request: the client's sampling parameters with the `[local]`
defaults a small local model needs (docs/engine.md "Answers that end"). Pure.

- The answer budget, `max_answer_tokens`: agents ask for 32k-128k tokens and an OpenAI request may
  set no limit; a local answer (or a takeover's continuation) generates at most this many.
- `default_min_p`: a request that asks for no truncation at all (no top_p < 1, top_k or min_p) and is
  not greedy is sampled with this min_p. Sampled from its whole distribution at temperature 1, the
  135M model wrote word salad in 5 of 8 long explanations; with min_p 0.05 in none
  (scripts/measure_noise.py).
"""

from __future__ import annotations

import dataclasses

from hotspare.core.types import SamplingParams


def is_untruncated(sampling: SamplingParams) -> bool:
    """Sampled from the whole distribution: not greedy, and no top_p < 1, top_k or min_p."""
    return sampling.temperature > 0 and sampling.top_p >= 1.0 and not sampling.top_k and not sampling.min_p


def local_sampling(sampling: SamplingParams, max_answer_tokens: int, default_min_p: float) -> SamplingParams:
    """`sampling` as the local model runs it (the same object when nothing changes); 0 turns either
    default off."""
    if max_answer_tokens and (sampling.max_tokens is None or sampling.max_tokens > max_answer_tokens):
        sampling = dataclasses.replace(sampling, max_tokens=max_answer_tokens)
    if default_min_p and is_untruncated(sampling):
        sampling = dataclasses.replace(sampling, min_p=default_min_p)
    return sampling
