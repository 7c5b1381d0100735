"""A radix tree that mirrors which KV cells of llama.cpp's unified cache hold which token prefixes.

llama.cpp's unified KV cache stores a cell once and tags it with the set of sequence ids that see it;
`llama_memory_seq_cp(src, dst, 0, k)` only adds `dst` to the tags of `src`'s first `k` cells (no data
is copied), and a cell is freed when its last tag is removed. This module keeps the same picture in
plain Python so the scheduler can decide, without touching the model:

- which cached sequence holds the longest prefix of a new prompt (`match`),
- how many physical cells are in use (`num_used_tokens`: every node counted once however many
  sequences share it),
- what evicting an idle sequence would free.

Each node is a run of tokens backed by one set of physical cells; `holders` are the sequence ids
(slots) tagged on those cells. A sequence's path runs from the root to its last node, so a holder of a
node holds all its ancestors too. Running sequences and idle (cached) sequences are both holders; only
idle ones may be evicted, so cells a running sequence uses are never freed.

No I/O, no clock, no llama_cpp: time is a counter the caller advances (`touch`).
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass, field


@dataclass(eq=False, slots=True)
class _Node:
    tokens: list[int]
    parent: _Node | None
    children: dict[int, list[_Node]] = field(default_factory=dict)
    holders: set[int] = field(default_factory=set)

    def add_child(self, child: _Node) -> None:
        self.children.setdefault(child.tokens[0], []).append(child)

    def remove_child(self, child: _Node) -> None:
        siblings = self.children[child.tokens[0]]
        siblings.remove(child)
        if not siblings:
            del self.children[child.tokens[0]]


@dataclass(frozen=True, slots=True)
class PrefixMatch:
    """The longest cached prefix of a prompt: `num_tokens` tokens held by slot `slot` (-1 if none)."""

    num_tokens: int
    slot: int


def common_prefix_len(a: Seq[int], b: Seq[int], start_b: int) -> int:
    n = min(len(a), len(b) - start_b)
    if a[:n] == b[start_b : start_b + n]:
        return n
    i = 0
    while i < n and a[i] == b[start_b + i]:
        i += 1
    return i


class PrefixCache:
    """Tracks the token paths of all slots that hold KV cells, and the idle ones in LRU order.

    Contract: every change the caller makes to llama.cpp's cache is mirrored here, in the same order:
    `attach` for a seq_cp of a prefix into an empty slot, `extend` after tokens were decoded into a
    slot, `release` for a seq_rm of a whole slot. Then `num_used_tokens` equals the number of occupied
    cells. `check()` verifies the structure's invariants (used by tests and when idle).
    """

    def __init__(self) -> None:
        self._root = _Node(tokens=[], parent=None)
        self._paths: dict[int, list[_Node]] = {}
        self._lengths: dict[int, int] = {}
        self._idle: dict[int, int] = {}  # slot -> last use (insertion order is not relied on)
        self._clock = 0
        self.num_used_tokens = 0

    # ----- queries -----

    def match(self, tokens: Seq[int]) -> PrefixMatch:
        """The longest prefix of `tokens` whose KV some slot holds. Does not change the cache."""
        best = PrefixMatch(num_tokens=0, slot=-1)
        # Siblings may repeat a token run (two requests prefilled the same text at once), so every
        # child that matches is explored (depth first, no recursion); there is almost always one.
        stack: list[tuple[_Node, int]] = [(self._root, 0)]
        while stack:
            node, pos = stack.pop()
            if pos >= len(tokens):
                continue
            for child in node.children.get(tokens[pos], ()):
                n = common_prefix_len(child.tokens, tokens, pos)
                if pos + n > best.num_tokens:
                    best = PrefixMatch(pos + n, next(iter(child.holders)))
                if n == len(child.tokens):
                    stack.append((child, pos + n))
        return best

    def length(self, slot: int) -> int:
        return self._lengths.get(slot, 0)

    def tokens(self, slot: int) -> list[int]:
        """The tokens whose cells `slot` holds, in position order."""
        return [t for node in self._paths.get(slot, ()) for t in node.tokens]

    @property
    def idle_slots(self) -> list[int]:
        """Idle slots, least recently used first."""
        return sorted(self._idle, key=self._idle.__getitem__)

    @property
    def num_idle_tokens(self) -> int:
        """Cells only idle slots hold: what releasing every idle slot would free. Cells of a prefix a
        running (non-idle) slot shares are not idle."""
        busy = {id(n): len(n.tokens) for s, path in self._paths.items() if s not in self._idle for n in path}
        return self.num_used_tokens - sum(busy.values())

    def unique_tokens(self, slot: int) -> int:
        """Cells that releasing `slot` would free: its nodes that no other slot holds."""
        return sum(len(n.tokens) for n in self._paths.get(slot, ()) if n.holders == {slot})

    # ----- mutations mirrored from llama.cpp -----

    def attach(self, slot: int, source: int, num_tokens: int) -> None:
        """`slot` (empty) now shares the first `num_tokens` cells of `source` (llama seq_cp)."""
        if slot in self._paths:
            raise ValueError(f"slot {slot} already holds cells")
        path: list[_Node] = []
        if num_tokens > 0:
            remaining = num_tokens
            for node in list(self._paths[source]):
                if remaining < len(node.tokens):
                    node = self._split(node, remaining)
                path.append(node)
                remaining -= len(node.tokens)
                if remaining == 0:
                    break
            for node in path:
                node.holders.add(slot)
        self._paths[slot] = path
        self._lengths[slot] = num_tokens

    def extend(self, slot: int, tokens: Seq[int]) -> None:
        """`tokens` were decoded into `slot` at the positions after its current end."""
        if not tokens:
            return
        path = self._paths.setdefault(slot, [])
        self._lengths[slot] = self._lengths.get(slot, 0) + len(tokens)
        self.num_used_tokens += len(tokens)
        last = path[-1] if path else self._root
        if path and last.holders == {slot} and not last.children:
            last.tokens.extend(tokens)
            return
        node = _Node(tokens=list(tokens), parent=last, holders={slot})
        last.add_child(node)
        path.append(node)

    def release(self, slot: int) -> int:
        """`slot` dropped all its cells (llama seq_rm of the whole slot). Returns cells freed."""
        freed = 0
        for node in reversed(self._paths.pop(slot, [])):
            node.holders.discard(slot)
            if not node.holders:
                assert node.parent is not None
                node.parent.remove_child(node)
                freed += len(node.tokens)
        self._lengths.pop(slot, None)
        self._idle.pop(slot, None)
        self.num_used_tokens -= freed
        return freed

    # ----- idle (cached) slots -----

    def park(self, slot: int) -> list[int]:
        """Mark `slot` idle (its request ended; its cells stay cached).

        Returns the idle slots made redundant — those whose whole path another slot also holds — least
        recently used first. The caller releases them: that frees no cell, only the slot id.
        """
        self._clock += 1
        self._idle[slot] = self._clock
        redundant: list[int] = []
        for s in self.idle_slots:
            path = self._paths[s]
            if not path or path[-1].holders - {s} - set(redundant):
                redundant.append(s)
        return redundant

    def touch(self, slot: int) -> None:
        """Record a use of an idle slot's prefix (a cache hit), for LRU order."""
        if slot in self._idle:
            self._clock += 1
            self._idle[slot] = self._clock

    # ----- internals -----

    def _split(self, node: _Node, at: int) -> _Node:
        """Split `node` after `at` tokens; returns the head (which keeps the node's place)."""
        head = _Node(tokens=node.tokens[:at], parent=node.parent, holders=set(node.holders))
        assert node.parent is not None
        node.parent.remove_child(node)
        node.parent.add_child(head)
        node.tokens = node.tokens[at:]
        node.parent = head
        head.add_child(node)
        for holder in head.holders:
            path = self._paths[holder]
            i = path.index(node)
            path.insert(i, head)
        return head

    def check(self) -> None:
        """Raise AssertionError if the tree's invariants do not hold."""
        total = 0
        stack = [self._root]
        while stack:
            node = stack.pop()
            for first, kids in node.children.items():
                for kid in kids:
                    assert kid.tokens and kid.tokens[0] == first, "child keyed by its first token"
                    assert kid.parent is node, "parent link"
                    assert kid.holders, "a node without holders must have been freed"
                    assert kid.holders <= node.holders or node is self._root, "holders hold ancestors"
                    total += len(kid.tokens)
                    stack.append(kid)
        assert total == self.num_used_tokens, f"used {self.num_used_tokens} != tree {total}"
        for slot, path in self._paths.items():
            assert sum(len(n.tokens) for n in path) == self._lengths[slot], f"slot {slot} length"
            parent = self._root
            for node in path:
                assert node.parent is parent and slot in node.holders, f"slot {slot} path"
                parent = node
        assert set(self._idle) <= set(self._paths), "idle slots hold paths"
