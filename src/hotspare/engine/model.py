"""The model as the engine core drives it: `EngineModel`, the small interface `EngineCore`
(engine/core.py) and persist.py are typed against. backends/llama_cpp.py implements it with
llama.cpp; tests implement it with a fake that keeps the KV cells as a list (tests/engine), so the
core's step, post-processing and KV operations run without weights.

Contracts: slots are llama.cpp sequence ids (0 <= slot < max_slots); positions count from 0.
`decode` runs one batch and returns, for each item that `wants_logits`, the row its logits are in
(in order); `sample(sampler, row)` reads that row. A sampler belongs to one request: `new_sampler`
makes it (ValueError: the sampling parameters, e.g. the grammar, are invalid), `free_sampler` ends
it. A saved state is opaque to the core: it only hands it back to `restore_state`. Not thread-safe:
one thread calls it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from hotspare.core.types import SamplingParams
from hotspare.engine.protocol import ModelInfo

Sampler = Any
"""A request's sampler chain, opaque to the core (llama.cpp: a pointer)."""


@dataclass(frozen=True, slots=True)
class DecodeItem:
    """Feed `tokens` into `slot` at positions `start`...; `wants_logits` marks the last one for sampling."""

    slot: int
    start: int
    tokens: Sequence[int]
    wants_logits: bool


class EngineModel(Protocol):
    """See the module docstring."""

    info: ModelInfo
    batch_tokens: int  # the most tokens one decode takes
    max_threads: int
    add_bos: bool  # the model wants a BOS token before a prompt
    flash_attention: bool

    def tokenize(self, text: str, *, add_bos: bool) -> list[int]: ...

    def piece(self, token: int) -> bytes:
        """The bytes `token` stands for (UTF-8, possibly part of a character)."""
        ...

    def is_end_of_generation(self, token: int) -> bool: ...

    def decode(self, items: Sequence[DecodeItem]) -> list[int]:
        """Raises MemoryError when the KV cache has no room for the batch (nothing was decoded)."""
        ...

    def new_sampler(self, params: SamplingParams, seed: int) -> Sampler: ...

    def sample(self, sampler: Sampler, row: int) -> int: ...

    def entropy(self, row: int) -> float:
        """The entropy, in nats, of softmax(logits of `row`): the model's own uncertainty, before any
        sampler (engine/repetition.py NoiseMeter)."""
        ...

    def free_sampler(self, sampler: Sampler) -> None: ...

    def copy_prefix(self, src: int, dst: int, num_tokens: int) -> None:
        """`dst` shares the cells of `src` at positions [0, num_tokens)."""
        ...

    def remove(self, slot: int) -> None:
        """`slot` holds no cell."""
        ...

    def trim(self, slot: int, start: int, end: int) -> None:
        """`slot` leaves its cells at positions [start, end) (`end` -1: to the end)."""
        ...

    def save_state(self, slot: int) -> tuple[Any, int]:
        """`slot`'s KV state and its size in bytes."""
        ...

    def restore_state(self, slot: int, state: Any, num_bytes: int) -> bool:
        """Load a saved state into the empty `slot`; False when it does not fit or is not this model's."""
        ...

    def set_threads(self, num_threads: int) -> None: ...
