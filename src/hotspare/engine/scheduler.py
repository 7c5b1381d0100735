"""Continuous batching over one unified KV cache.

Each scheduling step corresponds to a single `llama_decode`: the next token of every decoding
sequence, then chunks of prompts still being processed (chunked prefill) up to `step_tokens`. New
requests are admitted between steps, reusing the longest cached prefix of their prompt; finished and
cancelled ones leave at once and their slot's cells become prefix cache (idle slots), evicted least
recently used first when cells or slot ids run out. When even that is not enough, the youngest running
sequence is preempted: its cells stay cached and it goes back to the head of the queue.

With a host cache (`host_cache.py`), an evicted slot's state is first saved to host RAM (`Save`), and a
prompt that a saved entry covers better than the KV cache does is restored from it (`Restore`).

Idle cells are not free: every decode step's attention spans the cache up to its highest used cell,
so idle prefixes slow the running streams (docs/benchmarks.md). With `max_idle_tokens`, the least
recently used idle slots beyond that many cells are demoted between steps — evicted exactly as under
pressure (saved to host RAM if worth it, then removed) — one slot a step, and only while no request
waits for admission (a save takes ~40-110 ms per 2.5k tokens; a waiting request should not wait for it
too). Since it is the highest cell that counts, not the number, the idle slots kept are then packed at
the bottom of the cache when nothing runs (`_repack`).

Plain synchronous Python with no I/O and no llama_cpp: the worker applies a `SchedulerOutput` to the
model (its KV operations in order, then one decode) and reports back with `update_from_output`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from hotspare.core.errors import Overloaded
from hotspare.core.types import FinishReason
from hotspare.engine.host_cache import HostCache
from hotspare.engine.kv_ops import Copy, KvOp, Remove, Restore, Save
from hotspare.engine.prefix_cache import PrefixCache
from hotspare.engine.sequence import Sequence, SequenceStatus


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """capacity_tokens: KV cells in all; max_slots: llama sequence ids (running + cached);
    max_running: sequences decoded together; max_queued: waiting requests before "overloaded";
    step_tokens: tokens in one decode; reserve_tokens: cells kept free per running sequence so
    admitted requests can keep decoding; host_cache_bytes: host RAM for evicted prefixes (0 = off);
    host_min_tokens: the fewest tokens worth saving to, or restoring from, host RAM;
    max_idle_tokens: idle (cached, not running) cells beyond which LRU idle slots are demoted between
    steps (0 = only when cells or slot ids run out)."""

    capacity_tokens: int
    max_slots: int
    max_running: int
    max_queued: int
    step_tokens: int
    reserve_tokens: int = 16
    host_cache_bytes: int = 0
    host_min_tokens: int = 128
    max_idle_tokens: int = 0


@dataclass(frozen=True, slots=True)
class BatchItem:
    """Feed `seq.tokens[start:start + count]` at positions start.. into slot `seq.slot`."""

    seq: Sequence
    start: int
    count: int
    wants_logits: bool


@dataclass(slots=True)
class SchedulerOutput:
    """What one step does: `kv_ops` applied strictly in order, then one decode of `items`.

    The order is the order in which the scheduler changed its `PrefixCache`, and it matters both ways:
    a slot released and handed out again in the same step must be emptied *before* a prefix is copied
    into it, and a slot evicted right after a prefix was copied *from* it must be emptied *after*.
    """

    kv_ops: list[KvOp] = field(default_factory=list)
    items: list[BatchItem] = field(default_factory=list)
    finished: list[Sequence] = field(default_factory=list)

    @property
    def copies(self) -> list[tuple[int, int, int]]:
        return [(op.src, op.dst, op.num_tokens) for op in self.kv_ops if isinstance(op, Copy)]

    @property
    def removals(self) -> list[int]:
        return [op.slot for op in self.kv_ops if isinstance(op, Remove)]

    @property
    def num_tokens(self) -> int:
        return sum(item.count for item in self.items)


@dataclass(slots=True)
class CacheStats:
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    num_preemptions: int = 0
    num_evicted_tokens: int = 0
    num_demotions: int = 0  # idle slots evicted for max_idle_tokens, not for room
    num_demoted_tokens: int = 0
    num_repacks: int = 0  # idle slots moved to the bottom of the cache (through host RAM)


class Scheduler:
    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self.cache = PrefixCache()
        self.waiting: deque[Sequence] = deque()
        self.warmups: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.stats = CacheStats()
        self.host = HostCache(config.host_cache_bytes) if config.host_cache_bytes > 0 else None
        self._free_slots = list(range(config.max_slots - 1, -1, -1))
        self._kv_ops: list[KvOp] = []  # every cache change since the last step, in order
        self._may_have_holes = False  # cells were freed while others stayed, maybe below them
        self._finished: list[Sequence] = []

    # ----- requests in and out -----

    def add(self, seq: Sequence) -> None:
        """Queue a request. Raises Overloaded when the queue is full."""
        queue = self.warmups if seq.is_warmup else self.waiting
        if len(self.waiting) + len(self.running) >= self.config.max_queued + self.config.max_running:
            if seq.is_warmup:
                return  # warm-ups are best effort
            raise Overloaded("the local model's queue is full", retry_after_s=1.0)
        queue.append(seq)

    def cancel(self, request_id: int) -> Sequence | None:
        """Stop a request now; its computed cells stay cached. Returns it, or None if unknown."""
        for queue in (self.waiting, self.warmups):
            for seq in queue:
                if seq.request_id == request_id:
                    queue.remove(seq)
                    seq.status = SequenceStatus.FINISHED
                    return seq
        for seq in self.running:
            if seq.request_id == request_id:
                self.finish(seq, None)
                return seq
        return None

    def finish(self, seq: Sequence, reason: FinishReason | None) -> None:
        """End a running sequence (reason None: cancelled). Its slot becomes idle prefix cache."""
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        self.running.remove(seq)
        self._park(seq.slot)
        self._finished.append(seq)

    @property
    def has_work(self) -> bool:
        return bool(self.running or self.waiting or self.warmups)

    @property
    def needs_demotion(self) -> bool:
        """Idle cells exceed `max_idle_tokens` and no request waits: the next `schedule()` demotes an
        idle slot (the worker steps for it even with no work)."""
        cap = self.config.max_idle_tokens
        return cap > 0 and not self.waiting and self.cache.num_idle_tokens > cap

    @property
    def needs_repack(self) -> bool:
        """Nothing runs or waits, the idle cells may sit above freed ones, and the cap is on (it bounds
        what a repack moves): the next `schedule()` moves them to the bottom through host RAM."""
        return (
            self.config.max_idle_tokens > 0
            and self._may_have_holes
            and self.host is not None
            and not self.has_work
            and not self.needs_demotion
        )

    @property
    def has_cache_work(self) -> bool:
        """A step with no work still has something to do: the worker runs one when idle."""
        return self.needs_demotion or self.needs_repack

    @property
    def num_free_tokens(self) -> int:
        return self.config.capacity_tokens - self.cache.num_used_tokens

    # ----- slots restored from disk -----

    def take_free_slot(self) -> int | None:
        return self._free_slots.pop() if self._free_slots else None

    def return_free_slot(self, slot: int) -> None:
        self._free_slots.append(slot)

    def adopt_idle(self, slot: int, tokens: list[int]) -> None:
        """`slot` was filled with `tokens`' cells outside a step (a restore): cache them as idle."""
        self.cache.attach(slot, slot, 0)
        self.cache.extend(slot, tokens)
        self._park(slot)

    # ----- one step -----

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput(finished=self._finished)
        self._finished = []
        self._pause_warmups_if_busy(out)
        self._admit(self.waiting, out)
        if not self.waiting and not any(not s.is_warmup for s in self.running):
            self._admit(self.warmups, out)
        self._build_batch(out)
        if self.needs_demotion:
            self._demote_one()
        elif self.needs_repack:
            self._repack()
        out.kv_ops, self._kv_ops = self._kv_ops, []
        return out

    def update_from_output(self, out: SchedulerOutput) -> list[Sequence]:
        """Record that `out.items` were decoded. Returns the sequences that now need a sample;
        warm-ups whose prompt is fully computed are finished here."""
        to_sample = []
        for item in out.items:
            seq = item.seq
            self.cache.extend(seq.slot, seq.tokens[item.start : item.start + item.count])
            seq.num_computed += item.count
            if item.wants_logits:
                to_sample.append(seq)
            elif seq.is_warmup and seq.num_pending == 0:
                self.finish(seq, FinishReason.LENGTH)
        return to_sample

    def on_restore_failed(self, out: SchedulerOutput, op: Restore) -> None:
        """llama.cpp could not restore `op` (no room for the state): forget the entry and send the
        sequence back to the head of its queue, to be admitted from the KV cache alone."""
        if self.host is not None:
            self.host.drop(op.entry_id)
        seq = next((s for s in self.running if s.slot == op.slot), None)
        if seq is None:  # an idle slot being repacked: it is gone
            self._release(op.slot)
            return
        self.running.remove(seq)
        out.items = [item for item in out.items if item.seq is not seq]
        self._release(op.slot)
        seq.num_computed = 0
        self._to_queue_head(seq)

    def on_decode_failed(self, out: SchedulerOutput) -> None:
        """llama_decode found no room for the batch: free cached cells, or preempt, and retry."""
        if not self._evict_one():
            self._preempt_youngest(out)

    # ----- admission -----

    def _admit(self, queue: deque[Sequence], out: SchedulerOutput) -> None:
        while queue and len(self.running) < self.config.max_running:
            seq = queue[0]
            slot = self._take_slot()
            if slot is None:
                return
            reused = self._reuse_prefix(seq, slot, out)
            need = seq.num_pending + self.config.reserve_tokens * (len(self.running) + 1)
            if not self._make_room(need):
                self._release(slot)
                seq.num_computed = 0
                return
            queue.popleft()
            if seq.num_output_tokens == 0 and not seq.is_warmup:
                self.stats.num_prompt_tokens += seq.num_prompt_tokens
                self.stats.num_cached_tokens += reused
                seq.num_cached_tokens = reused
            seq.slot = slot
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)

    def _reuse_prefix(self, seq: Sequence, slot: int, out: SchedulerOutput) -> int:
        # Keep at least one token to feed: a real request needs the logits for its next sample, and
        # a warm-up whose prompt is all cached already must still decode something (an empty batch
        # is a llama_decode error).
        limit = len(seq.tokens) - 1
        match = self.cache.match(seq.tokens[:limit])
        restored = self._restore_from_host(seq, slot, limit, match.num_tokens)
        if restored:
            return restored
        if match.num_tokens > 0:
            self.cache.attach(slot, match.slot, match.num_tokens)
            self.cache.touch(match.slot)
            self._kv_ops.append(Copy(match.slot, slot, match.num_tokens))
        else:
            self.cache.attach(slot, slot, 0)
        seq.num_computed = match.num_tokens
        return match.num_tokens

    def _restore_from_host(self, seq: Sequence, slot: int, limit: int, kv_tokens: int) -> int:
        """Plan a Restore when a saved entry covers the prompt by host_min_tokens more than the KV
        cache does; returns the tokens it covers (0: no restore)."""
        if self.host is None:
            return 0
        entry, n = self.host.match(seq.tokens[:limit])
        if entry is None or n < kv_tokens + self.config.host_min_tokens:
            return 0
        # The whole saved state lands in the cache before it is cut to the prompt: make room for it
        # first, then match again (an eviction may have taken the KV match's slot).
        if not self._make_room(len(entry.tokens) + self.config.reserve_tokens * (len(self.running) + 1)):
            return 0
        match = self.cache.match(seq.tokens[:n])
        shared = match.num_tokens
        # An eviction just now may also have superseded the entry (a longer one is being saved).
        if self.host.take(entry.entry_id, n - shared) is None:
            return 0
        self.cache.attach(slot, match.slot if shared else slot, shared)
        if shared:
            self.cache.touch(match.slot)
        self.cache.extend(slot, seq.tokens[shared:n])
        self._kv_ops.append(Restore(slot, entry.entry_id, n, match.slot, shared))
        seq.num_computed = n
        return n

    def _take_slot(self) -> int | None:
        if not self._free_slots and not self._evict_one():
            return None
        return self._free_slots.pop()

    def _make_room(self, num_tokens: int) -> bool:
        while self.num_free_tokens < num_tokens:
            if not self._evict_one():
                return False
        return True

    def _evict_one(self) -> bool:
        """Release the least recently used idle slot. False if there is none."""
        idle = self.cache.idle_slots
        if not idle:
            return False
        self._evict(idle[0])
        return True

    def _demote_one(self) -> None:
        """Evict the least recently used idle slot that holds idle cells of its own (one whose cells
        running sequences all share would free none; there always is one while idle cells exist, and
        the LRU slot stands in should that ever not hold, so each call makes progress)."""
        idle = self.cache.idle_slots
        slot = next((s for s in idle if self.cache.unique_tokens(s) > 0), idle[0])
        self.stats.num_demotions += 1
        self.stats.num_demoted_tokens += self._evict(slot)

    def _evict(self, slot: int) -> int:
        """Release idle `slot`, its state saved to host RAM first if it is worth it. Returns cells freed."""
        if self.host is not None and self.cache.unique_tokens(slot) >= self.config.host_min_tokens:
            entry_id = self.host.reserve(self.cache.tokens(slot))
            if entry_id is not None:
                self._kv_ops.append(Save(slot, entry_id))
        freed = self._release(slot)
        self.stats.num_evicted_tokens += freed
        return freed

    def _repack(self) -> None:
        """Save every idle slot to host RAM (or find it there) and remove them all: with nothing
        running the cache is then empty and llama.cpp fills it again from its first cell. Restore
        them in LRU order, each sharing what an earlier one holds of its prefix."""
        host = self.host
        assert host is not None
        moved: list[tuple[list[int], int]] = []
        for slot in self.cache.idle_slots:
            tokens = self.cache.tokens(slot)
            entry_id = host.reserve(tokens)
            if entry_id is not None:
                self._kv_ops.append(Save(slot, entry_id))
            else:
                entry, _ = host.match(tokens)  # one already covers them
                assert entry is not None
                entry_id = entry.entry_id
            host.pin(entry_id)
            moved.append((tokens, entry_id))
            self._release(slot)
        for tokens, entry_id in moved:
            slot = self._free_slots.pop()
            match = self.cache.match(tokens)
            self.cache.attach(slot, match.slot if match.num_tokens else slot, match.num_tokens)
            self.cache.extend(slot, tokens[match.num_tokens :])
            self._kv_ops.append(Restore(slot, entry_id, len(tokens), match.slot, match.num_tokens))
            self._park(slot)
        self.stats.num_repacks += 1
        self._may_have_holes = False

    def _release(self, slot: int) -> int:
        freed = self.cache.release(slot)
        if freed:
            self._may_have_holes = self.cache.num_used_tokens > 0
        self._kv_ops.append(Remove(slot))
        self._free_slots.append(slot)
        return freed

    def _park(self, slot: int) -> None:
        for redundant in self.cache.park(slot):
            self._release(redundant)

    # ----- the batch -----

    def _build_batch(self, out: SchedulerOutput) -> None:
        while True:
            out.items = self._plan_items()
            if self._make_room(out.num_tokens) or not self.running:
                return
            self._preempt_youngest(out)

    def _plan_items(self) -> list[BatchItem]:
        items, budget = [], self.config.step_tokens
        for seq in self.running:
            if seq.is_decoding and not seq.is_warmup:
                items.append(BatchItem(seq, seq.num_computed, 1, True))
                budget -= 1
        for seq in self.running:
            if budget <= 0:
                break
            if seq.is_decoding and not seq.is_warmup:
                continue
            count = min(seq.num_pending, budget)
            ends = count == seq.num_pending
            items.append(BatchItem(seq, seq.num_computed, count, ends and not seq.is_warmup))
            budget -= count
        return items

    def _preempt_youngest(self, out: SchedulerOutput) -> None:
        seq = self.running.pop()
        self.stats.num_preemptions += 1
        out.items = [item for item in out.items if item.seq is not seq]
        self._requeue(seq)

    def _requeue(self, seq: Sequence) -> None:
        """Take a running sequence back to the head of its queue; its cells stay cached (parked)."""
        self._park(seq.slot)
        self._to_queue_head(seq)

    def _to_queue_head(self, seq: Sequence) -> None:
        seq.slot = -1
        seq.status = SequenceStatus.WAITING
        (self.warmups if seq.is_warmup else self.waiting).appendleft(seq)

    def _pause_warmups_if_busy(self, out: SchedulerOutput) -> None:
        """Warm-ups run only when no real request waits: a real one preempts them (their computed
        cells stay cached, so the work is not lost)."""
        if not self.waiting:
            return
        for seq in [s for s in self.running if s.is_warmup]:
            self.running.remove(seq)
            self._requeue(seq)
