"""One request's life inside the engine: its tokens, its slot in the KV cache, and its state."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from hotspare.core.types import FinishReason, SamplingParams


class SequenceStatus(Enum):
    WAITING = "waiting"  # queued, holds no slot
    RUNNING = "running"  # holds a slot; fed tokens every step until finished
    FINISHED = "finished"


@dataclass(slots=True)
class Sequence:
    """A request being served.

    `tokens` is the prompt followed by every token sampled so far. The KV cache of `slot` holds the
    first `num_computed` of them; a running sequence always has `num_computed < len(tokens)`, and the
    next step feeds `tokens[num_computed:]` (one token while decoding, a chunk while prefilling). The
    step that feeds the last token produces the logits from which the next token is sampled.
    """

    request_id: int
    tokens: list[int]
    num_prompt_tokens: int
    max_new_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    status: SequenceStatus = SequenceStatus.WAITING
    slot: int = -1
    num_computed: int = 0
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache, for usage reporting
    finish_reason: FinishReason | None = None
    is_warmup: bool = False  # a low-priority prefix warm-up: computes KV, samples nothing

    @property
    def num_output_tokens(self) -> int:
        return len(self.tokens) - self.num_prompt_tokens

    @property
    def num_pending(self) -> int:
        """Tokens the next steps must feed before the next sample."""
        return len(self.tokens) - self.num_computed

    @property
    def is_decoding(self) -> bool:
        return self.num_pending == 1

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED
