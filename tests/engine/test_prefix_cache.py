"""The prefix cache's picture of llama.cpp's cells: matches, sharing, splits, release, redundancy."""

from __future__ import annotations

import random

from hotspare.engine.prefix_cache import PrefixCache, PrefixMatch


def make(*paths: list[int]) -> PrefixCache:
    """A cache where slot i holds paths[i], each decoded fresh (no sharing)."""
    cache = PrefixCache()
    for slot, tokens in enumerate(paths):
        cache.attach(slot, slot, 0)
        cache.extend(slot, tokens)
    cache.check()
    return cache


def test_empty_cache_matches_nothing() -> None:
    assert PrefixCache().match([1, 2, 3]) == PrefixMatch(num_tokens=0, slot=-1)


def test_match_finds_longest_prefix_and_its_holder() -> None:
    cache = make([1, 2, 3, 4], [1, 2, 9])
    assert cache.match([1, 2, 3, 4, 5]) == PrefixMatch(4, 0)
    assert cache.match([1, 2, 9, 9]) == PrefixMatch(3, 1)
    assert cache.match([1, 2, 3, 7]) == PrefixMatch(3, 0)
    assert cache.match([5]) == PrefixMatch(0, -1)


def test_fresh_duplicates_count_their_cells_twice() -> None:
    cache = make([1, 2, 3], [1, 2, 3])
    assert cache.num_used_tokens == 6


def test_attach_shares_cells_and_splits_mid_node() -> None:
    cache = make([1, 2, 3, 4, 5])
    cache.attach(1, source=0, num_tokens=3)
    cache.extend(1, [7, 8])
    cache.check()
    assert cache.num_used_tokens == 7  # 5 shared-or-own of slot 0 + 2 new
    assert cache.length(1) == 5
    assert cache.match([1, 2, 3, 7, 8, 9]).num_tokens == 5
    assert cache.match([1, 2, 3, 4, 5]) == PrefixMatch(5, 0)
    assert cache.unique_tokens(0) == 2  # tokens 4, 5
    assert cache.unique_tokens(1) == 2  # tokens 7, 8


def test_release_frees_only_cells_nobody_else_holds() -> None:
    cache = make([1, 2, 3, 4, 5])
    cache.attach(1, 0, 3)
    cache.extend(1, [7])
    assert cache.release(0) == 2
    cache.check()
    assert cache.num_used_tokens == 4
    assert cache.match([1, 2, 3, 4]) == PrefixMatch(3, 1)
    assert cache.release(1) == 4
    cache.check()
    assert cache.num_used_tokens == 0


def test_extend_appends_in_place_when_alone() -> None:
    cache = make([1])
    for t in range(2, 50):
        cache.extend(0, [t])
    cache.check()
    assert cache.length(0) == 49
    assert cache.match(list(range(1, 50))).num_tokens == 49


def test_extend_after_a_shared_node_starts_a_new_node() -> None:
    cache = make([1, 2, 3])
    cache.attach(1, 0, 3)
    cache.extend(0, [4])
    cache.extend(1, [5])
    cache.check()
    assert cache.match([1, 2, 3, 4]) == PrefixMatch(4, 0)
    assert cache.match([1, 2, 3, 5]) == PrefixMatch(4, 1)
    assert cache.num_used_tokens == 5


def test_park_releases_idle_slots_whose_whole_path_is_held_elsewhere() -> None:
    cache = make([1, 2, 3])
    cache.attach(1, 0, 3)
    cache.extend(1, [4, 5])  # a later turn of the same conversation
    assert cache.park(0) == [0]  # turn 1 is a prefix of turn 2: redundant
    cache.release(0)
    assert cache.park(1) == []
    cache.check()
    assert cache.idle_slots == [1]
    assert cache.num_used_tokens == 5


def test_park_keeps_one_of_two_slots_ending_at_the_same_node() -> None:
    cache = make([1, 2, 3])
    cache.attach(1, 0, 3)
    assert cache.park(0) == [0]  # slot 1 (running) holds it all
    assert cache.park(1) == [0]  # still reported until the caller releases it
    cache.release(0)
    assert cache.park(1) == []
    assert cache.idle_slots == [1]


def test_lru_order_follows_touch() -> None:
    cache = make([1], [2], [3])
    for slot in (0, 1, 2):
        cache.park(slot)
    cache.touch(0)
    assert cache.idle_slots == [1, 2, 0]


def test_random_operations_keep_invariants() -> None:
    """A fuzz of attach/extend/release against a brute-force model of cell ownership."""
    rng = random.Random(7)
    cache = PrefixCache()
    contents: dict[int, list[int]] = {}
    for _ in range(600):
        op = rng.random()
        free = [s for s in range(12) if s not in contents]
        if op < 0.35 and free:
            slot = rng.choice(free)
            if contents and rng.random() < 0.7:
                src = rng.choice(list(contents))
                n = rng.randint(0, len(contents[src]))
                cache.attach(slot, src, n)
                contents[slot] = contents[src][:n]
            else:
                cache.attach(slot, slot, 0)
                contents[slot] = []
        elif op < 0.8 and contents:
            slot = rng.choice(list(contents))
            new = [rng.randint(0, 3) for _ in range(rng.randint(1, 4))]
            cache.extend(slot, new)
            contents[slot] += new
        elif contents:
            slot = rng.choice(list(contents))
            cache.release(slot)
            del contents[slot]
        cache.check()
        for slot, toks in contents.items():
            assert cache.length(slot) == len(toks)
            match = cache.match(toks)
            assert match.num_tokens == len(toks)
            if toks:
                assert contents[match.slot][: len(toks)] == toks
