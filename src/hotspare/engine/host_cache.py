"""A second tier for the prefix cache: KV state of evicted conversations kept in host RAM.

The KV cache holds a few conversations at most (16k cells: four 4k-token agent sessions), while the
machine usually has gigabytes of RAM to spare. When the scheduler evicts an idle slot under pressure,
the worker copies that sequence's cells out with `llama_state_seq_get_data` (about 23 KB a token for
SmolLM2-135M) instead of dropping them; a later prompt that starts with those tokens is restored with
`llama_state_seq_set_data`. Measured on this machine: 2.5k tokens, 58 MB, restored in 14 ms, against
seconds to recompute them.

This module only keeps the entries (their tokens, and the state bytes the worker hands over), their
LRU order and the byte budget; no llama_cpp. An entry is matched only once its state was saved.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from typing import Any

from hotspare.engine.prefix_cache import common_prefix_len


@dataclass(eq=False, slots=True)
class HostEntry:
    entry_id: int
    tokens: list[int]
    state: Any = None  # the saved sequence state (bytes-like), None until the worker saved it
    num_bytes: int = 0
    last_use: int = 0
    is_pinned: bool = False  # a restore of it is planned and not yet done: it must not be dropped


@dataclass(slots=True)
class HostStats:
    num_saved: int = 0
    num_restored: int = 0
    num_restored_tokens: int = 0
    num_dropped: int = 0  # evicted for the budget, or superseded by a longer entry


@dataclass(slots=True)
class HostCache:
    budget_bytes: int
    entries: dict[int, HostEntry] = field(default_factory=dict)
    stats: HostStats = field(default_factory=HostStats)
    num_bytes: int = 0
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _clock: int = 0

    def reserve(self, tokens: Seq[int]) -> int | None:
        """Make an entry for `tokens`, to be filled by `fill`. None if an entry already covers them
        (its tokens start with these); entries that `tokens` extends are dropped."""
        for entry in list(self.entries.values()):
            n = common_prefix_len(entry.tokens, tokens, 0)
            if n == len(tokens) and entry.state is not None:
                self._touch(entry)
                return None
            if n == len(entry.tokens) and not entry.is_pinned:
                self.drop(entry.entry_id)
        entry = HostEntry(next(self._ids), list(tokens))
        self.entries[entry.entry_id] = entry
        return entry.entry_id

    def fill(self, entry_id: int, state: Any, num_bytes: int) -> None:
        """The worker saved the entry's state; older entries go until the budget holds."""
        entry = self.entries.get(entry_id)
        if entry is None:
            return
        if num_bytes <= 0 or num_bytes > self.budget_bytes:
            self.drop(entry_id)
            return
        entry.state, entry.num_bytes = state, num_bytes
        self.num_bytes += num_bytes
        self.stats.num_saved += 1
        self._touch(entry)
        while self.num_bytes > self.budget_bytes:
            candidates = [e for e in self.entries.values() if e.state is not None and not e.is_pinned]
            if not candidates:
                break
            self.drop(min(candidates, key=lambda e: e.last_use).entry_id)

    def drop(self, entry_id: int) -> None:
        entry = self.entries.pop(entry_id, None)
        if entry is not None and entry.state is not None:
            self.num_bytes -= entry.num_bytes
            self.stats.num_dropped += 1

    def match(self, tokens: Seq[int]) -> tuple[HostEntry | None, int]:
        """The saved entry sharing the longest prefix with `tokens`, and that prefix's length."""
        best: tuple[HostEntry | None, int] = (None, 0)
        for entry in self.entries.values():
            if entry.state is None or not tokens or entry.tokens[0] != tokens[0]:
                continue
            n = common_prefix_len(entry.tokens, tokens, 0)
            if n > best[1]:
                best = (entry, n)
        return best

    def take(self, entry_id: int, num_tokens: int) -> HostEntry | None:
        """Pin the entry to restore `num_tokens` of it (a use, for LRU), or None if it is gone.
        `unpin` it once restored."""
        entry = self.entries.get(entry_id)
        if entry is None or entry.state is None:
            return None
        entry.is_pinned = True
        self._touch(entry)
        self.stats.num_restored += 1
        self.stats.num_restored_tokens += num_tokens
        return entry

    def pin(self, entry_id: int) -> None:
        """Keep the entry (even one not yet saved) until `unpin`: a restore of it is planned."""
        entry = self.entries.get(entry_id)
        if entry is not None:
            entry.is_pinned = True

    def unpin(self, entry_id: int) -> None:
        entry = self.entries.get(entry_id)
        if entry is not None:
            entry.is_pinned = False

    def _touch(self, entry: HostEntry) -> None:
        self._clock += 1
        entry.last_use = self._clock
