"""A fake `EngineModel` (engine/model.py) for the engine core's tests: no weights, exact behaviour.

The KV cache is llama.cpp's unified cache as a brute-force list of cells (position, token, set of
slots): `decode` adds cells, `copy_prefix` shares them, `remove` / `trim` drop a slot from them, and
a saved state is the slot's cells. `cells_of(slot)` is what a slot really holds, to compare with
what the scheduler believes (`check`).

Text is one character per token: a prompt's tokens are its characters' code points, `piece` is the
character, and token EOS ends an answer. Every sampler answers `answer` (then EOS), in order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from hotspare.core.types import SamplingParams
from hotspare.engine.model import DecodeItem
from hotspare.engine.protocol import ModelInfo
from hotspare.engine.scheduler import Scheduler

EOS = 2
BAD_GRAMMAR = "not a grammar"
"""A grammar `new_sampler` refuses, as llama.cpp refuses one it cannot parse."""


class FakeModel:
    """See the module docstring."""

    add_bos = False
    max_threads = 1
    flash_attention = True

    def __init__(self, capacity_tokens: int = 160, batch_tokens: int = 64, answer: str = "ok") -> None:
        self.info = ModelInfo(None, "", "", capacity_tokens, capacity_tokens, 256, "fake model")
        self.batch_tokens = batch_tokens
        self.answer = [ord(c) for c in answer]
        self.cells: list[tuple[int, int, set[int]]] = []
        self.num_live_samplers = 0
        self.entropy_nats = 1.0  # what `entropy` reports for every row (engine/repetition.py NoiseMeter)
        self.num_shared_restores = 0  # restores whose shared prefix came from another slot
        self.fail_next_decode = False  # the next decode raises MemoryError (the KV cache is full)
        self.decoded: list[list[DecodeItem]] = []
        self._restored_slot: int | None = None

    # ----- text -----

    def tokenize(self, text: str, *, add_bos: bool) -> list[int]:
        return [ord(c) for c in text]

    def piece(self, token: int) -> bytes:
        return chr(token).encode()

    def is_end_of_generation(self, token: int) -> bool:
        return token == EOS

    # ----- sampling -----

    def new_sampler(self, params: SamplingParams, seed: int) -> Iterator[int]:
        if params.grammar == BAD_GRAMMAR:
            raise ValueError("the grammar could not be parsed")
        self.num_live_samplers += 1
        return iter(self.answer)

    def sample(self, sampler: Iterator[int], row: int) -> int:
        return next(sampler, EOS)

    def entropy(self, row: int) -> float:
        return self.entropy_nats

    def free_sampler(self, sampler: Iterator[int]) -> None:
        self.num_live_samplers -= 1

    def set_threads(self, num_threads: int) -> None:
        pass

    # ----- the KV cache -----

    def decode(self, items: Sequence[DecodeItem]) -> list[int]:
        if self.fail_next_decode:
            self.fail_next_decode = False
            raise MemoryError("no room in the KV cache")
        self._restored_slot = None  # this step's KV operations are done
        self.decoded.append(list(items))
        for item in items:
            held = [p for p, _ in self.cells_of(item.slot)]
            assert held == list(range(item.start)), f"slot {item.slot} fed at {item.start} holding {held}"
            self._add(item.slot, [(item.start + i, t) for i, t in enumerate(item.tokens)])
        return list(range(sum(1 for item in items if item.wants_logits)))

    def copy_prefix(self, src: int, dst: int, num_tokens: int) -> None:
        if dst == self._restored_slot:
            self.num_shared_restores += 1
        for p, _, slots in self.cells:
            if src in slots and p < num_tokens:
                slots.add(dst)

    def remove(self, slot: int) -> None:
        self.trim(slot, 0, -1)

    def trim(self, slot: int, start: int, end: int) -> None:
        for p, _, slots in self.cells:
            if p >= start and (end < 0 or p < end):
                slots.discard(slot)
        self._gc()

    def save_state(self, slot: int) -> tuple[list[tuple[int, int]], int]:
        cells = self.cells_of(slot)
        return cells, 10 * len(cells)

    def restore_state(self, slot: int, state: list[tuple[int, int]], num_bytes: int) -> bool:
        assert self.cells_of(slot) == [], f"restoring into slot {slot}, which holds cells"
        self._add(slot, state)
        self._restored_slot = slot
        return True

    # ----- checks -----

    def cells_of(self, slot: int) -> list[tuple[int, int]]:
        return sorted((p, t) for p, t, slots in self.cells if slot in slots)

    def check(self, s: Scheduler) -> None:
        """Every slot holds exactly what the scheduler believes, and the cell counts agree."""
        s.cache.check()
        assert len(self.cells) == s.cache.num_used_tokens
        running = {q.slot for q in s.running}
        assert sum(1 for _, _, slots in self.cells if not slots & running) == s.cache.num_idle_tokens
        for q in s.running:
            assert self.cells_of(q.slot) == list(enumerate(q.tokens[: q.num_computed])), (
                f"request {q.request_id}"
            )
        for slot in s.cache.idle_slots:
            assert self.cells_of(slot) == list(enumerate(s.cache.tokens(slot))), f"idle slot {slot}"

    def _add(self, slot: int, items: list[tuple[int, int]]) -> None:
        self.cells.extend((p, t, {slot}) for p, t in items)
        self._gc()

    def _gc(self) -> None:
        self.cells = [c for c in self.cells if c[2]]
        assert len(self.cells) <= self.info.kv_capacity_tokens, f"{len(self.cells)} cells over capacity"
