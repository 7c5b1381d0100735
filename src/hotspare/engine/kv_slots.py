"""The KV cache's slots and cells as the scheduler plans them, and where idle cells go.

`KvSlots` owns the slot ids (llama sequence ids), the `PrefixCache` mirror of the cells, the host-RAM
tier (`host_cache.py`) and the ordered KV operations a step will apply. It hands slots out (evicting
the least recently used idle slot when ids or cells run out), reuses cached prefixes (a `Copy`, or a
`Restore` from host RAM), and moves idle cells out of the way:

- *evict*: under pressure, an idle slot is saved to host RAM if it holds `host_min_tokens` of its own
  (`Save`), then removed (`Remove`);
- *demote*: beyond `max_idle_tokens` idle cells, the least recently used idle slot is evicted the
  same way (idle cells are not free: every step's attention spans the cache up to its highest used
  cell);
- *repack*: since it is the highest cell that counts, not the number, the idle slots kept are moved
  to the bottom of the cache when nothing runs and cells were freed below them.

Plain synchronous Python with no I/O and no llama_cpp; `Scheduler` decides when.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass

from hotspare.engine.host_cache import HostCache
from hotspare.engine.kv_ops import Copy, KvOp, Remove, Restore, Save
from hotspare.engine.prefix_cache import PrefixCache


@dataclass(slots=True)
class CacheStats:
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    num_preemptions: int = 0
    num_evicted_tokens: int = 0
    num_demotions: int = 0  # idle slots evicted for max_idle_tokens, not for room
    num_demoted_tokens: int = 0
    num_repacks: int = 0  # idle slots moved to the bottom of the cache (through host RAM)


class KvSlots:
    """Contract: every change to the cells is recorded as a KV op, in order, and mirrored in `cache`
    at once; the caller applies `take_ops()` to llama.cpp before its next decode."""

    def __init__(
        self,
        *,
        capacity_tokens: int,
        max_slots: int,
        host_cache_bytes: int,
        host_min_tokens: int,
        max_idle_tokens: int,
        stats: CacheStats,
    ) -> None:
        self.capacity_tokens = capacity_tokens
        self.host_min_tokens = host_min_tokens
        self.max_idle_tokens = max_idle_tokens
        self.stats = stats
        self.cache = PrefixCache()
        self.host = HostCache(host_cache_bytes) if host_cache_bytes > 0 else None
        self._free_slots = list(range(max_slots - 1, -1, -1))
        self._ops: list[KvOp] = []  # every cache change since the last take_ops, in order
        self._may_have_holes = False  # cells were freed while others stayed, maybe below them

    @property
    def num_free_tokens(self) -> int:
        return self.capacity_tokens - self.cache.num_used_tokens

    @property
    def is_over_idle_cap(self) -> bool:
        """Idle cells exceed the cap and an idle slot other than the most recently used one holds
        cells of its own. The most recently used conversation stays whatever its size: it is the one
        most likely to come back next (a failover mid-conversation), and demoting it would make every
        warm-up of a long conversation a save to host RAM and a restore."""
        over = self.max_idle_tokens > 0 and self.cache.num_idle_tokens > self.max_idle_tokens
        return over and self._demotable() is not None

    def _demotable(self) -> int | None:
        """The least recently used idle slot, not the most recent one, that holds idle cells of its
        own (one whose cells running sequences all share would free none)."""
        idle = self.cache.idle_slots
        return next((s for s in idle[:-1] if self.cache.unique_tokens(s) > 0), None)

    @property
    def may_need_repack(self) -> bool:
        """The cap is on (it bounds what a repack moves), there is a host tier to move through, and
        cells were freed while others stayed. Only the caller knows whether anything runs."""
        return self.max_idle_tokens > 0 and self.host is not None and self._may_have_holes

    def take_ops(self) -> list[KvOp]:
        ops, self._ops = self._ops, []
        return ops

    # ----- slot ids -----

    def take_free_slot(self) -> int | None:
        return self._free_slots.pop() if self._free_slots else None

    def return_free_slot(self, slot: int) -> None:
        self._free_slots.append(slot)

    def take_slot(self) -> int | None:
        """A free slot id, evicting an idle slot for it if need be; None if there is none."""
        if not self._free_slots and not self.evict_one():
            return None
        return self._free_slots.pop()

    def make_room(self, num_tokens: int) -> bool:
        while self.num_free_tokens < num_tokens:
            if not self.evict_one():
                return False
        return True

    # ----- cells -----

    def reuse_prefix(self, tokens: Seq[int], slot: int, reserve_tokens: int) -> int:
        """Fill the empty `slot` with the longest cached prefix of `tokens`: from host RAM when it
        covers host_min_tokens more than the KV cache (room made for the whole state and
        `reserve_tokens`), else shared from the KV cache. Returns the tokens covered."""
        match = self.cache.match(tokens)
        restored = self._restore_from_host(tokens, slot, match.num_tokens, reserve_tokens)
        if restored:
            return restored
        if match.num_tokens > 0:
            self.cache.attach(slot, match.slot, match.num_tokens)
            self.cache.touch(match.slot)
            self._ops.append(Copy(match.slot, slot, match.num_tokens))
        else:
            self.cache.attach(slot, slot, 0)
        return match.num_tokens

    def _restore_from_host(self, tokens: Seq[int], slot: int, kv_tokens: int, reserve_tokens: int) -> int:
        if self.host is None:
            return 0
        entry, n = self.host.match(tokens)
        if entry is None or n < kv_tokens + self.host_min_tokens:
            return 0
        # The whole saved state lands in the cache before it is cut to the prompt: make room for it
        # first, then match again (an eviction may have taken the KV match's slot).
        if not self.make_room(len(entry.tokens) + reserve_tokens):
            return 0
        match = self.cache.match(tokens[:n])
        shared = match.num_tokens
        # An eviction just now may also have superseded the entry (a longer one is being saved).
        if self.host.take(entry.entry_id, n - shared) is None:
            return 0
        self.cache.attach(slot, match.slot if shared else slot, shared)
        if shared:
            self.cache.touch(match.slot)
        self.cache.extend(slot, tokens[shared:n])
        self._ops.append(Restore(slot, entry.entry_id, n, match.slot, shared))
        return n

    def adopt_idle(self, slot: int, tokens: list[int]) -> None:
        """`slot` was filled with `tokens`' cells outside a step (a restore): cache them as idle."""
        self.cache.attach(slot, slot, 0)
        self.cache.extend(slot, tokens)
        self.park(slot)

    def park(self, slot: int) -> None:
        """`slot`'s sequence ended: its cells stay as idle prefix cache (redundant slots go)."""
        for redundant in self.cache.park(slot):
            self.release(redundant)

    def release(self, slot: int) -> int:
        """Drop all of `slot`'s cells and free its id. Returns the cells freed."""
        freed = self.cache.release(slot)
        if freed:
            self._may_have_holes = self.cache.num_used_tokens > 0
        self._ops.append(Remove(slot))
        self._free_slots.append(slot)
        return freed

    # ----- idle slots out of the way -----

    def evict_one(self) -> bool:
        """Release the least recently used idle slot. False if there is none."""
        idle = self.cache.idle_slots
        if not idle:
            return False
        self._evict(idle[0])
        return True

    def demote_one(self) -> None:
        """Evict the slot `_demotable` names (only called while `is_over_idle_cap`)."""
        slot = self._demotable()
        assert slot is not None
        self.stats.num_demotions += 1
        self.stats.num_demoted_tokens += self._evict(slot)

    def _evict(self, slot: int) -> int:
        """Release idle `slot`, its state saved to host RAM first if it is worth it. Returns cells freed."""
        if self.host is not None and self.cache.unique_tokens(slot) >= self.host_min_tokens:
            entry_id = self.host.reserve(self.cache.tokens(slot))
            if entry_id is not None:
                self._ops.append(Save(slot, entry_id))
        freed = self.release(slot)
        self.stats.num_evicted_tokens += freed
        return freed

    def repack(self) -> None:
        """Only while nothing runs. Save every idle slot to host RAM (or find it there) and remove them
        all: the cache is then empty and llama.cpp fills it again from its first cell. Restore them in
        LRU order, each sharing what an earlier one holds of its prefix."""
        host = self.host
        assert host is not None
        moved: list[tuple[list[int], int]] = []
        for slot in self.cache.idle_slots:
            tokens = self.cache.tokens(slot)
            entry_id = host.reserve(tokens)
            if entry_id is not None:
                self._ops.append(Save(slot, entry_id))
            else:
                entry, _ = host.match(tokens)  # one already covers them
                assert entry is not None
                entry_id = entry.entry_id
            host.pin(entry_id)
            moved.append((tokens, entry_id))
            self.release(slot)
        for tokens, entry_id in moved:
            slot = self._free_slots.pop()
            match = self.cache.match(tokens)
            self.cache.attach(slot, match.slot if match.num_tokens else slot, match.num_tokens)
            self.cache.extend(slot, tokens[match.num_tokens :])
            self._ops.append(Restore(slot, entry_id, len(tokens), match.slot, match.num_tokens))
            self.park(slot)
        self.stats.num_repacks += 1
        self._may_have_holes = False
