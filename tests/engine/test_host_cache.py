"""The host-RAM tier of the prefix cache: entry bookkeeping, the scheduler's Save/Restore plans, and a
randomized run of the engine core (its scheduler, KV operations and decode) on a fake model that
keeps llama.cpp's cells by brute force (tests/engine/fake_model.py) and checks, after every step,
that each slot holds exactly the tokens the scheduler believes it holds."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from hotspare.core.types import FinishReason, SamplingParams
from hotspare.engine.config import EngineConfig
from hotspare.engine.core import EngineCore
from hotspare.engine.host_cache import HostCache
from hotspare.engine.kv_ops import Remove, Restore, Save
from hotspare.engine.protocol import Submit
from hotspare.engine.scheduler import Scheduler, SchedulerConfig, SchedulerOutput
from hotspare.engine.sequence import Sequence

from .fake_model import FakeModel


def seq(rid: int, tokens: list[int], max_new: int = 2) -> Sequence:
    return Sequence(
        request_id=rid, tokens=list(tokens), num_prompt_tokens=len(tokens), max_new_tokens=max_new
    )


# ----- HostCache on its own -----


def test_entries_match_only_once_saved_and_the_longest_prefix_wins() -> None:
    host = HostCache(budget_bytes=1000)
    a = host.reserve([1, 2, 3, 4])
    b = host.reserve([1, 2, 9, 9, 9])
    assert a is not None and b is not None
    assert host.match([1, 2, 3, 4, 5]) == (None, 0)  # nothing saved yet
    host.fill(a, "state-a", 100)
    host.fill(b, "state-b", 100)
    entry, n = host.match([1, 2, 3, 4, 5])
    assert entry is not None and (entry.entry_id, n) == (a, 4)
    entry, n = host.match([1, 2, 9, 7])
    assert entry is not None and (entry.entry_id, n) == (b, 3)
    assert host.match([7, 1, 2]) == (None, 0)


def test_a_longer_entry_supersedes_its_prefix_and_a_covered_one_is_not_saved_twice() -> None:
    host = HostCache(budget_bytes=1000)
    a = host.reserve([1, 2, 3])
    assert a is not None
    host.fill(a, "a", 100)
    assert host.reserve([1, 2]) is None  # already covered by a saved entry
    b = host.reserve([1, 2, 3, 4, 5])
    assert b is not None and set(host.entries) == {b}
    assert host.num_bytes == 0 and host.stats.num_dropped == 1


def test_the_budget_drops_least_recently_used_entries_but_never_a_pinned_one() -> None:
    host = HostCache(budget_bytes=250)
    ids = []
    for first in (1, 2, 3):
        entry_id = host.reserve([first, 0, 0])
        assert entry_id is not None
        ids.append(entry_id)
        host.fill(entry_id, f"s{first}", 100)
    assert set(host.entries) == {ids[1], ids[2]} and host.num_bytes == 200
    assert host.take(ids[1], 3) is not None  # pinned and now the most recently used
    four = host.reserve([4, 0, 0])
    assert four is not None
    host.fill(four, "s4", 100)
    assert set(host.entries) == {ids[1], four}
    five = host.reserve([5, 0, 0])
    assert five is not None
    host.fill(five, "s5", 100)
    assert ids[1] in host.entries  # pinned: kept even though the oldest
    host.unpin(ids[1])
    assert host.fill(host.reserve([6, 0, 0]) or 0, "s6", 100) is None and ids[1] not in host.entries
    assert host.reserve([7]) is not None and host.fill(99, "nobody", 10) is None  # unknown id: ignored
    too_big = host.reserve([8, 0])
    assert too_big is not None
    host.fill(too_big, "huge", 10_000)
    assert too_big not in host.entries


# ----- the scheduler's plans -----


def sched(**overrides: int) -> Scheduler:
    cfg = {
        "capacity_tokens": 100,
        "max_slots": 8,
        "max_running": 4,
        "max_queued": 8,
        "step_tokens": 64,
        "reserve_tokens": 0,
        "host_cache_bytes": 10_000,
        "host_min_tokens": 8,
    }
    cfg.update(overrides)
    return Scheduler(SchedulerConfig(**cfg))


def serve(s: Scheduler, sq: Sequence) -> SchedulerOutput:
    """Admit `sq`, run steps until it finishes; returns the admission step's output."""
    s.add(sq)
    first = None
    while not sq.is_finished:
        out = s.schedule()
        for q in s.update_from_output(out):
            q.tokens.append(5)
            if q.num_output_tokens >= q.max_new_tokens:
                s.finish(q, FinishReason.LENGTH)
        first = first or out
    assert first is not None
    return first


def test_an_evicted_conversation_is_saved_and_restored_with_the_shared_prefix_from_the_kv_cache() -> None:
    s = sched()
    system = list(range(1000, 1020))  # 20 tokens conversations start with
    a = system + list(range(2000, 2040))
    serve(s, seq(1, a))  # 61 cells: the prompt and the first answer token (the last is never fed)
    out = serve(s, seq(2, list(range(3000, 3050))))  # no room beside it: conversation a goes to host
    save = [op for op in out.kv_ops if isinstance(op, Save)]
    assert len(save) == 1 and out.kv_ops.index(save[0]) < out.kv_ops.index(Remove(save[0].slot))
    assert s.host is not None and s.host.entries[save[0].entry_id].tokens == [*a, 5]
    s.host.fill(save[0].entry_id, "state", 1000)
    # A new conversation with the same system prompt: its 20 tokens come from host RAM (the restore
    # needs room for all 61 saved cells at first, so the unrelated conversation is evicted).
    out = serve(s, seq(3, system + [7] * 6))
    r = next(op for op in out.kv_ops if isinstance(op, Restore))
    assert (r.entry_id, r.num_tokens, r.num_shared) == (save[0].entry_id, 20, 0)
    # Conversation a comes back with a new turn: restored from host, its system prompt shared with
    # the KV cache's copy (conversation 3's idle slot) instead of duplicated.
    again = [*a, 5, 7, 7, 7]
    out = serve(s, seq(4, again))
    r = next(op for op in out.kv_ops if isinstance(op, Restore))
    assert (r.entry_id, r.num_tokens, r.num_shared) == (save[0].entry_id, len(a) + 1, 20)
    assert out.items[0].start == len(a) + 1 and out.items[0].count == 3
    assert s.host.stats.num_restored_tokens == 20 + len(a) + 1 - 20
    s.cache.check()


def test_short_idle_prefixes_are_not_worth_saving() -> None:
    s = sched(capacity_tokens=12, host_min_tokens=8)
    serve(s, seq(1, [1, 2, 3, 4]))
    out = serve(s, seq(2, [9, 8, 7, 6, 5, 4, 3, 2, 1]))
    assert not [op for op in out.kv_ops if isinstance(op, Save)] and Remove(0) in out.kv_ops


def test_a_failed_restore_sends_the_request_back_to_be_computed_from_the_kv_cache() -> None:
    s = sched()
    a = list(range(100, 160))
    serve(s, seq(1, a))
    out = serve(s, seq(2, list(range(300, 350))))
    entry_id = next(op.entry_id for op in out.kv_ops if isinstance(op, Save))
    assert s.host is not None
    s.host.fill(entry_id, "state", 10)
    s.add(seq(3, [*a, 1, 2]))
    out = s.schedule()
    r = next(op for op in out.kv_ops if isinstance(op, Restore))
    s.on_restore_failed(out, r)
    assert not out.items and not s.running and s.waiting[0].num_computed == 0
    assert entry_id not in s.host.entries
    out = s.schedule()
    assert not [op for op in out.kv_ops if isinstance(op, Restore)]
    assert out.items[0].start == 0
    s.cache.check()


# ----- against a brute-force model of the cells -----


def core_on(s: Scheduler, model: FakeModel) -> EngineCore:
    """The engine core on `model`, running the scheduler `s` (its small config is the test's)."""
    config = EngineConfig(Path("fake.gguf"), "fake", adapt_threads=False, host_cache_mib=0)
    core = EngineCore(model, config, context_tokens=s.config.capacity_tokens)
    core.scheduler = s
    return core


@pytest.mark.parametrize(("seed", "max_idle"), [(0, 0), (1, 0), (2, 0), (3, 0), (4, 40), (5, 40), (6, 70)])
def test_random_conversations_keep_every_slot_exact_through_saves_and_restores(
    seed: int, max_idle: int
) -> None:
    rng = random.Random(seed)
    s = sched(
        capacity_tokens=160, max_running=3, host_cache_bytes=2500, step_tokens=24, max_idle_tokens=max_idle
    )
    model = FakeModel(capacity_tokens=160, batch_tokens=24, answer="\x05" * 8)
    core = core_on(s, model)
    system = [rng.randrange(1000, 1100) for _ in range(12)]
    histories: list[list[int]] = [list(system) for _ in range(6)]
    rid = 0
    for _ in range(120):
        # A few requests at once: new turns of random conversations (forks now and then).
        for _ in range(rng.randint(1, 3)):
            c = rng.randrange(len(histories))
            if rng.random() < 0.1:
                histories[c] = histories[c][: rng.randint(len(system), len(histories[c]))]
            if len(histories[c]) > 70:
                histories[c] = list(system)
            histories[c] += [rng.randrange(100, 200) for _ in range(rng.randint(3, 12))]
            rid += 1
            prompt = "".join(map(chr, histories[c]))
            assert core.submit(Submit(rid, prompt, SamplingParams(max_tokens=rng.randint(1, 4)))) == []
        while s.has_work or s.has_cache_work:  # as the worker does: demotions and repacks when idle too
            core.step()
            model.check(s)
        # Within the cap, or over it only by the most recent conversation (never demoted).
        older = s.cache.idle_slots[:-1]
        within = s.cache.num_idle_tokens <= max_idle or all(s.cache.unique_tokens(x) == 0 for x in older)
        assert max_idle == 0 or within
    assert s.host is not None
    assert s.host.stats.num_saved > 10 and s.host.stats.num_restored > 5, s.host.stats
    assert model.num_shared_restores > 0
    assert s.host.num_bytes <= s.host.budget_bytes
    assert (s.stats.num_demotions > 10) == (max_idle > 0), s.stats
    assert (s.stats.num_repacks > 5) == (max_idle > 0), s.stats
