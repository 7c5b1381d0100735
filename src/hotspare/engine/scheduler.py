"""Continuous batching over one unified KV cache.

Each scheduling step corresponds to a single `llama_decode`: the next token of every decoding
sequence, then chunks of prompts still being processed (chunked prefill) up to `step_tokens`. New
requests are admitted between steps, reusing the longest cached prefix of their prompt; finished and
cancelled ones leave at once and their slot's cells become prefix cache (idle slots), evicted least
recently used first when cells or slot ids run out. When even that is not enough, the youngest running
sequence is preempted: its cells stay cached and it goes back to the head of the queue.

The n choices of one request (OpenAI `n`) come as one leader and n-1 siblings of the same prompt. The
leader queues like any request; the siblings are held back until its prompt is computed (or it has
ended), so that each is admitted onto the leader's cells (a `Copy` of all but the last prompt token)
instead of computing the same prompt again; n admitted in one step would each prefill it. Then they
join the waiting queue's tail at most `max_running` of the group at a time, as that many separate
requests would; held siblings take no queue place (the group was accepted as one request).

Where cells live is `kv_slots.py`'s concern (slot ids, the prefix cache, the host-RAM tier, eviction);
the scheduler decides when. With `max_idle_tokens`, idle cells beyond it are demoted between steps,
one slot a step, and only while no request runs or waits (a save takes tens of milliseconds; warm-ups
may run); the idle slots kept are repacked at the bottom of the cache only when nothing runs or waits
(`has_cache_work`: the worker steps for these once the engine has been quiet for a moment).

Plain synchronous Python with no I/O and no llama_cpp: the worker applies a `SchedulerOutput` to the
model (its KV operations in order, then one decode) and reports back with `update_from_output`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from hotspare.core.errors import Overloaded
from hotspare.core.types import FinishReason
from hotspare.engine.host_cache import HostCache
from hotspare.engine.kv_ops import Copy, KvOp, Remove, Restore
from hotspare.engine.kv_slots import CacheStats, KvSlots
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
    steps (0 = only when cells or slot ids run out); max_warmups: warm-ups kept waiting (past it the
    oldest is dropped: each holds a whole rendered conversation, and they queue only while the engine
    is busy, so without a cap a burst of passed-through turns grew the queue without end)."""

    capacity_tokens: int
    max_slots: int
    max_running: int
    max_queued: int
    step_tokens: int
    reserve_tokens: int = 16
    host_cache_bytes: int = 0
    host_min_tokens: int = 128
    max_idle_tokens: int = 0
    max_warmups: int = 16


@dataclass(slots=True)
class _Siblings:
    """Choices of one request held back until their `leader`'s prompt is computed (module docstring)."""

    leader: Sequence
    held: deque[Sequence]
    released: list[Sequence] = field(default_factory=list)

    @property
    def num_in_engine(self) -> int:
        """The group's sequences running or waiting (not held, not finished)."""
        return sum(not s.is_finished for s in (self.leader, *self.released))

    @property
    def is_leader_computed(self) -> bool:
        """The cells of all but the last prompt token exist (or the leader ended: they are cached)."""
        leader = self.leader
        return leader.is_finished or leader.num_computed >= leader.num_prompt_tokens - 1


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


class Scheduler:
    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self.waiting: deque[Sequence] = deque()
        self.warmups: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.siblings: list[_Siblings] = []
        self.stats = CacheStats()
        self.kv = KvSlots(
            capacity_tokens=config.capacity_tokens,
            max_slots=config.max_slots,
            host_cache_bytes=config.host_cache_bytes,
            host_min_tokens=config.host_min_tokens,
            max_idle_tokens=config.max_idle_tokens,
            stats=self.stats,
        )
        self._finished: list[Sequence] = []

    @property
    def cache(self) -> PrefixCache:
        return self.kv.cache

    @property
    def host(self) -> HostCache | None:
        return self.kv.host

    # ----- requests in and out -----

    def add(self, seq: Sequence, siblings: Iterable[Sequence] = ()) -> None:
        """Queue a request, and `siblings`: further choices of the same prompt, held until `seq`'s
        prompt is computed (module docstring). Raises Overloaded when the queue is full (the group
        takes one place). Warm-ups are best effort: one that finds the queue full is dropped, and past
        `max_warmups` the oldest waiting one is; a dropped warm-up is reported with the next step's
        `finished` (its owner forgets it there)."""
        queue = self.warmups if seq.is_warmup else self.waiting
        if len(self.waiting) + len(self.running) >= self.config.max_queued + self.config.max_running:
            if seq.is_warmup:
                self._drop(seq)
                return
            raise Overloaded("the local model's queue is full", retry_after_s=1.0)
        if seq.is_warmup and len(self.warmups) >= self.config.max_warmups:
            self._drop(self.warmups.popleft())  # the newest conversations are likelier to come back
        queue.append(seq)
        held = deque(siblings)
        if held and not seq.is_warmup:
            self.siblings.append(_Siblings(seq, held))

    def _drop(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.FINISHED
        self._finished.append(seq)

    def cancel(self, request_id: int) -> Sequence | None:
        """Stop a request now; its computed cells stay cached. Returns it, or None if unknown."""
        for queue in (self.waiting, self.warmups, *(group.held for group in self.siblings)):
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
        self.kv.park(seq.slot)
        self._finished.append(seq)

    @property
    def has_work(self) -> bool:
        return bool(self.running or self.waiting or self.warmups or self.siblings)

    @property
    def num_held(self) -> int:
        """Sibling choices held back (module docstring): waiting, but not yet in the queue."""
        return sum(len(group.held) for group in self.siblings)

    @property
    def needs_demotion(self) -> bool:
        """Idle cells exceed `max_idle_tokens` and no request runs or waits (warm-ups may run): the
        next `schedule()` demotes an idle slot (the worker steps for it even with no work). A save
        stalls the step it is in for tens of milliseconds: a request should never see one."""
        return not self.waiting and not self._has_real_running and self.kv.is_over_idle_cap

    @property
    def _has_real_running(self) -> bool:
        return any(not s.is_warmup for s in self.running)

    @property
    def needs_repack(self) -> bool:
        """Nothing runs or waits, the idle cells may sit above freed ones, and the cap is on (it bounds
        what a repack moves): the next `schedule()` moves them to the bottom through host RAM."""
        return self.kv.may_need_repack and not self.has_work and not self.needs_demotion

    @property
    def has_cache_work(self) -> bool:
        """A step with no work still has something to do: the worker runs one when idle."""
        return self.needs_demotion or self.needs_repack

    # ----- one step -----

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput(finished=self._finished)
        self._finished = []
        self._release_siblings()
        self._pause_warmups_if_busy(out)
        self._admit(self.waiting, out)
        if not self.waiting and not self._has_real_running:
            self._admit(self.warmups, out)
        self._build_batch(out)
        if self.needs_demotion:
            self.kv.demote_one()
        elif self.needs_repack:
            self.kv.repack()
        out.kv_ops = self.kv.take_ops()
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
            self.kv.release(op.slot)
            return
        self.running.remove(seq)
        out.items = [item for item in out.items if item.seq is not seq]
        self.kv.release(op.slot)
        seq.num_computed = 0
        self._to_queue_head(seq)

    def on_decode_failed(self, out: SchedulerOutput) -> None:
        """llama_decode found no room for the batch: free cached cells, or preempt, and retry."""
        if not self.kv.evict_one():
            self._preempt_youngest(out)

    # ----- admission -----

    def _release_siblings(self) -> None:
        """Move held siblings whose leader's prompt is computed to the waiting queue's tail, keeping
        at most max_running of each group in the engine."""
        for group in self.siblings:
            if not group.is_leader_computed:
                continue
            room = self.config.max_running - group.num_in_engine
            while group.held and room > 0:
                seq = group.held.popleft()
                group.released.append(seq)
                self.waiting.append(seq)
                room -= 1
        self.siblings = [group for group in self.siblings if group.held]

    def _admit(self, queue: deque[Sequence], out: SchedulerOutput) -> None:
        while queue and len(self.running) < self.config.max_running:
            seq = queue[0]
            slot = self.kv.take_slot()
            if slot is None:
                return
            # Keep at least one token to feed: a real request needs the logits for its next sample,
            # and a warm-up whose prompt is all cached already must still decode something (an empty
            # batch is a llama_decode error).
            reserve = self.config.reserve_tokens * (len(self.running) + 1)
            reused = seq.num_computed = self.kv.reuse_prefix(seq.tokens[:-1], slot, reserve)
            if not self.kv.make_room(seq.num_pending + reserve):
                self.kv.release(slot)
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

    # ----- the batch -----

    def _build_batch(self, out: SchedulerOutput) -> None:
        while True:
            out.items = self._plan_items()
            if self.kv.make_room(out.num_tokens) or not self.running:
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
        self.kv.park(seq.slot)
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
