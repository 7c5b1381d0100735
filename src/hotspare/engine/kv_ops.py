"""The operations on llama.cpp's KV cache that a scheduling step plans, applied by the worker in
order before the step's decode (scheduler.py says why the order matters). Slots are llama sequence
ids; every operation is mirrored in the scheduler's `PrefixCache` when it is planned."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Copy:
    """seq_cp: slot `dst` (empty) shares the first `num_tokens` cells of slot `src`."""

    src: int
    dst: int
    num_tokens: int


@dataclass(frozen=True, slots=True)
class Remove:
    """seq_rm of every cell of `slot`."""

    slot: int


@dataclass(frozen=True, slots=True)
class Save:
    """Copy slot `slot`'s state into host cache entry `entry_id` (always followed by its Remove)."""

    slot: int
    entry_id: int


@dataclass(frozen=True, slots=True)
class Restore:
    """Fill the empty slot `slot` from host cache entry `entry_id`, keep its first `num_tokens` cells,
    and use the KV cache's own cells for the first `num_shared` of them: they are dropped from the
    restored state and shared from slot `shared_src` instead (as by a Copy)."""

    slot: int
    entry_id: int
    num_tokens: int
    shared_src: int
    num_shared: int


KvOp = Copy | Remove | Save | Restore
