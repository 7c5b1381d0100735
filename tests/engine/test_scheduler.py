"""Scheduler decisions with tiny factories and exact assertions; no model involved."""

from __future__ import annotations

import pytest

from hotspare.core.errors import Overloaded
from hotspare.core.types import FinishReason
from hotspare.engine.kv_ops import Remove, Restore, Save
from hotspare.engine.scheduler import Scheduler, SchedulerConfig, SchedulerOutput
from hotspare.engine.sequence import Sequence, SequenceStatus


def sched(**overrides: int) -> Scheduler:
    cfg = {
        "capacity_tokens": 1000,
        "max_slots": 8,
        "max_running": 4,
        "max_queued": 4,
        "step_tokens": 16,
        "reserve_tokens": 0,
    }
    cfg.update(overrides)
    return Scheduler(SchedulerConfig(**cfg))


def seq(rid: int, tokens: list[int], max_new: int = 4, warmup: bool = False) -> Sequence:
    return Sequence(
        request_id=rid,
        tokens=list(tokens),
        num_prompt_tokens=len(tokens),
        max_new_tokens=max_new,
        is_warmup=warmup,
    )


def fed(out: SchedulerOutput) -> list[tuple[int, int, int, bool]]:
    return [(i.seq.request_id, i.start, i.count, i.wants_logits) for i in out.items]


def run_step(s: Scheduler, next_token: int = 99) -> SchedulerOutput:
    """One step as the worker does it, sampling `next_token` for every sequence that asks."""
    out = s.schedule()
    for q in s.update_from_output(out):
        q.tokens.append(next_token)
    s.cache.check()
    return out


def test_decode_tokens_come_first_then_prefill_chunks_within_budget() -> None:
    s = sched(step_tokens=8)
    s.add(seq(1, [1, 2, 3]))
    assert fed(run_step(s)) == [(1, 0, 3, True)]
    s.add(seq(2, list(range(10, 30))))
    out = run_step(s)
    assert fed(out) == [(1, 3, 1, True), (2, 0, 7, False)]
    assert fed(run_step(s)) == [(1, 4, 1, True), (2, 7, 7, False)]
    assert fed(run_step(s)) == [(1, 5, 1, True), (2, 14, 6, True)]


def test_a_long_prompt_never_freezes_running_streams() -> None:
    s = sched(step_tokens=4)
    s.add(seq(1, [1], max_new=50))
    run_step(s)
    s.add(seq(2, list(range(100, 140))))
    for _ in range(10):
        out = run_step(s)
        assert out.items[0].seq.request_id == 1 and out.items[0].count == 1


def test_prefix_reuse_copies_cells_and_skips_them() -> None:
    s = sched()
    s.add(seq(1, [1, 2, 3, 4, 5]))
    run_step(s)
    s.finish(s.running[0], FinishReason.END_TURN)
    s.add(seq(2, [1, 2, 3, 4, 5, 6, 7]))
    out = s.schedule()
    assert out.copies == [(0, 1, 5)]  # slot ids are handed out from 0 upwards
    assert fed(out) == [(2, 5, 2, True)]
    assert s.running[0].num_cached_tokens == 5
    assert s.stats.num_cached_tokens == 5 and s.stats.num_prompt_tokens == 12


def test_identical_prompt_keeps_one_token_to_feed() -> None:
    s = sched()
    s.add(seq(1, [1, 2, 3]))
    run_step(s)
    s.finish(s.running[0], FinishReason.END_TURN)
    s.add(seq(2, [1, 2, 3]))
    out = s.schedule()
    assert out.copies == [(0, 1, 2)]
    assert fed(out) == [(2, 2, 1, True)]


def test_finished_request_frees_its_slot_for_reuse_and_keeps_cells_cached() -> None:
    s = sched(max_slots=2, max_running=2)
    s.add(seq(1, [1, 2]))
    s.add(seq(2, [3, 4]))
    run_step(s)
    s.finish(s.running[0], FinishReason.LENGTH)
    assert s.cache.idle_slots == [0]
    s.add(seq(3, [5, 6]))
    out = s.schedule()
    assert out.removals == [0]  # the idle slot is evicted to make a slot id free
    assert s.cache.num_used_tokens == 2


def test_eviction_under_memory_pressure_is_lru_and_spares_running() -> None:
    s = sched(capacity_tokens=10, max_running=1)
    s.add(seq(1, [1, 2, 3, 4]))
    run_step(s)
    s.finish(s.running[0], FinishReason.LENGTH)
    s.add(seq(2, [5, 6, 7, 8]))
    run_step(s)
    s.finish(s.running[0], FinishReason.LENGTH)
    assert s.cache.num_used_tokens == 8
    s.add(seq(3, [9, 9, 9, 9, 9]))
    out = s.schedule()
    assert out.removals == [0]  # request 1's cells, least recently used
    assert s.cache.match([5, 6, 7, 8]).num_tokens == 4


def test_preemption_when_cells_run_out_requeues_youngest_with_its_cache() -> None:
    s = sched(capacity_tokens=12, max_running=2)
    s.add(seq(1, [1, 2, 3, 4], max_new=20))
    s.add(seq(2, [5, 6, 7, 8], max_new=20))
    run_step(s)
    for _ in range(2):
        run_step(s)
    assert s.cache.num_used_tokens == 12
    out = run_step(s)
    assert s.stats.num_preemptions == 1
    assert [q.request_id for q in s.waiting] == [2]
    assert s.waiting[0].status is SequenceStatus.WAITING
    assert fed(out) == [(1, 6, 1, True)]


def test_cancel_running_parks_cells_and_cancel_waiting_removes() -> None:
    s = sched(max_running=1)
    s.add(seq(1, [1, 2, 3]))
    s.add(seq(2, [4, 5]))
    run_step(s)
    assert s.cancel(2) is not None and not s.waiting
    assert s.cancel(1) is not None and not s.running
    assert s.cache.idle_slots == [0]
    assert s.cancel(42) is None


def test_queue_limit_raises_overloaded() -> None:
    s = sched(max_running=1, max_queued=1)
    s.add(seq(1, [1]))
    s.add(seq(2, [1]))
    with pytest.raises(Overloaded):
        s.add(seq(3, [1]))


def test_warmups_run_only_when_idle_and_yield_to_real_requests() -> None:
    s = sched(step_tokens=4)
    s.add(seq(10, list(range(20, 32)), max_new=0, warmup=True))
    assert fed(run_step(s)) == [(10, 0, 4, False)]
    s.add(seq(1, [1, 2]))
    out = run_step(s)
    assert fed(out) == [(1, 0, 2, True)]
    assert [q.request_id for q in s.warmups] == [10]
    s.finish(s.running[0], FinishReason.END_TURN)
    while s.has_work:
        run_step(s)
    assert s.cache.match(list(range(20, 32))).num_tokens == 12  # resumed from its parked 4 tokens


def test_a_warmup_of_an_already_cached_prompt_feeds_one_token_never_an_empty_batch() -> None:
    s = sched()
    s.add(seq(10, [5, 6, 7], max_new=0, warmup=True))
    while s.has_work:
        run_step(s)
    s.add(seq(11, [5, 6, 7], max_new=0, warmup=True))
    assert fed(run_step(s)) == [(11, 2, 1, False)]
    assert not s.has_work


def test_a_fixed_schedule_is_reproducible() -> None:
    def trace() -> list[list[tuple[int, int, int, bool]]]:
        s = sched(step_tokens=6, max_running=3)
        for rid in range(5):
            s.add(seq(rid, [rid] * (3 + rid), max_new=3))
        steps = []
        while s.has_work:
            out = run_step(s)
            steps.append(fed(out))
            for q in list(s.running):
                if q.num_output_tokens >= q.max_new_tokens:
                    s.finish(q, FinishReason.LENGTH)
        return steps

    assert trace() == trace()


def test_a_slot_freed_and_reused_in_one_step_is_emptied_before_the_prefix_is_copied_in() -> None:
    """Regression: removals used to be applied after copies, wiping the prefix just copied into a
    slot that was evicted to make room for it (the request then ran without its conversation)."""
    s = sched(max_slots=2, max_running=1)
    for rid, tokens in ((1, [1, 2, 3]), (2, [7, 8, 9])):
        s.add(seq(rid, tokens))
        run_step(s)
        s.finish(s.running[0], FinishReason.END_TURN)
    run_step(s)  # flush the ops of the finishes
    s.add(seq(3, [7, 8, 9, 10]))
    out = s.schedule()
    assert [type(op).__name__ for op in out.kv_ops] == ["Remove", "Copy"]
    assert out.removals == [0] and out.copies == [(1, 0, 3)]


def test_a_slot_evicted_after_a_prefix_was_copied_from_it_is_emptied_after_the_copy() -> None:
    s = sched(max_slots=3, max_running=2, capacity_tokens=8)
    s.add(seq(1, [1, 2, 3, 4, 9, 9]))
    run_step(s)
    s.finish(s.running[0], FinishReason.END_TURN)
    run_step(s)
    s.add(seq(2, [1, 2, 3, 4, 5, 6, 7]))  # copies 4 cells of slot 0, then needs room: evicts slot 0
    out = s.schedule()
    assert [type(op).__name__ for op in out.kv_ops] == ["Copy", "Remove"]
    assert s.cache.match([1, 2, 3, 4]).num_tokens == 4  # the shared cells survive in the new slot


# ----- demoting idle cells beyond max_idle_tokens -----


def idle_after(s: Scheduler, *conversations: list[int]) -> None:
    """Run `conversations` side by side (one answer token each, never fed) and finish them in the
    order given, then flush the finishes' ops with a step of no work; the last one is the most
    recently used idle slot."""
    new = [seq(rid, tokens, max_new=1) for rid, tokens in enumerate(conversations, start=100)]
    for q in new:
        s.add(q)
    while any(q.num_output_tokens == 0 for q in new):
        run_step(s)
    for q in new:
        s.finish(q, FinishReason.END_TURN)


def test_idle_cells_beyond_the_cap_are_saved_to_host_and_removed_lru_first_one_slot_a_step() -> None:
    s = sched(step_tokens=64, max_idle_tokens=15, host_cache_bytes=10_000, host_min_tokens=8)
    a, b, c = list(range(100, 110)), list(range(200, 210)), list(range(300, 310))
    idle_after(s, a, b, c)  # slots 0, 1, 2; finished in that order: 30 idle cells
    assert s.cache.num_idle_tokens == 30 and s.needs_demotion and not s.has_work
    out = s.schedule()
    assert out.kv_ops == [Save(0, 1), Remove(0)] and not out.items
    assert s.needs_demotion  # 20 cells: one slot a step
    assert s.schedule().kv_ops == [Save(1, 2), Remove(1)]
    assert not s.needs_demotion and s.cache.num_idle_tokens == 10
    assert (s.stats.num_demotions, s.stats.num_demoted_tokens) == (2, 20)
    # Nothing runs, and the cells kept may sit above the freed ones: they are moved to the bottom
    # (saved, removed, restored into an empty cache), once.
    assert s.needs_repack
    assert s.schedule().kv_ops == [Save(2, 3), Remove(2), Restore(2, 3, 10, -1, 0)]
    assert not s.has_cache_work and s.schedule().kv_ops == [] and s.stats.num_repacks == 1
    assert s.cache.idle_slots == [2] and s.cache.match(c).num_tokens == 10
    assert s.host is not None and [e.tokens for e in s.host.entries.values()] == [a, b, c]
    assert [e.is_pinned for e in s.host.entries.values()] == [False, False, True]  # until restored


def test_a_repack_restores_the_kept_slots_in_lru_order_sharing_their_common_prefix() -> None:
    s = sched(step_tokens=64, max_idle_tokens=30, host_cache_bytes=10_000, host_min_tokens=4)
    system = list(range(100, 108))
    idle_after(s, list(range(200, 220)))  # slot 0: 20 cells, demoted below
    idle_after(s, [*system, 1, 1])  # slot 1
    idle_after(s, [*system, 2, 2])  # slot 2, sharing slot 1's system prompt: 32 idle cells
    assert s.cache.num_idle_tokens == 32
    assert s.schedule().kv_ops == [Save(0, 1), Remove(0)]
    assert s.needs_repack and not s.needs_demotion
    out = s.schedule()
    assert out.kv_ops == [
        Save(1, 2), Remove(1), Save(2, 3), Remove(2),
        Restore(2, 2, 10, -1, 0),  # slot 1's cells, restored into slot 2 (the free slots' order) ...
        Restore(1, 3, 10, 2, 8),  # ... and slot 2's, its system prompt shared from there
    ]  # fmt: skip
    assert s.cache.idle_slots == [2, 1] and s.cache.num_used_tokens == 12 and s.cache.num_idle_tokens == 12


def test_no_repack_without_freed_cells_and_no_cache_work_while_a_request_runs() -> None:
    s = sched(step_tokens=64, max_idle_tokens=30, host_cache_bytes=10_000, host_min_tokens=4)
    idle_after(s, list(range(200, 210)), list(range(300, 310)))
    assert not s.has_cache_work  # nothing was freed: the cells are where llama.cpp put them, packed
    s.add(seq(1, list(range(400, 420)), max_new=50))
    run_step(s)
    idle_after(s, list(range(500, 515)))  # 35 idle cells beside request 1
    assert s.kv.is_over_idle_cap and s.running
    run_step(s)
    assert s.stats.num_demotions == 0 and not s.has_cache_work  # nothing stalls a running request
    s.cancel(1)  # its cells are idle too now: 56; three demotions (LRU first), one a step, then a repack
    ops = [run_step(s).kv_ops for _ in range(4)]
    assert s.stats.num_demotions == 3 and not s.has_cache_work
    assert isinstance(ops[-1][-1], Restore) and s.stats.num_repacks == 1
    (kept,) = s.cache.idle_slots  # request 1's cells, the most recently used
    assert (
        s.cache.tokens(kept)[:20] == list(range(400, 420)) and s.cache.length(kept) == s.cache.num_used_tokens
    )


def test_demotion_follows_last_use_not_slot_order() -> None:
    s = sched(step_tokens=64, max_idle_tokens=15)
    a, b = list(range(100, 110)), list(range(200, 210))
    idle_after(s, a, b)  # 20 idle cells: slot 0 (a) would go first ...
    idle_after(s, [*a, 7, 7])  # ... but a's conversation went on (slot 2; slot 0 is now redundant)
    out = run_step(s)
    assert out.removals == [0, 1]  # slot 0 frees no cell; slot 1 (b) is the demotion
    assert not [op for op in out.kv_ops if isinstance(op, Save)]  # no host cache: dropped
    assert s.cache.idle_slots == [2] and s.stats.num_demotions == 1 and s.stats.num_demoted_tokens == 10


def test_cells_a_running_sequence_shares_are_never_idle_nor_demoted() -> None:
    s = sched(step_tokens=64, max_idle_tokens=1)
    system = list(range(100, 108))
    idle_after(s, system)  # 8 cells, all shared by the next request: none idle
    s.add(seq(1, [*system, 1, 2, 3], max_new=50))
    run_step(s)
    assert s.cache.num_idle_tokens == 0 and not s.needs_demotion
    idle_after(s, [*system[:4], 9, 9, 9, 9])  # the system prompt's first 4 cells + 4 of its own
    assert s.cache.num_idle_tokens == 4
    idle_after(s, [50, 51, 52])
    assert s.cache.num_idle_tokens == 7 and not s.needs_demotion  # not while request 1 runs
    running = s.running[0]
    s.cancel(1)  # now the most recent conversation: never demoted, whatever the cap
    while s.has_cache_work:
        run_step(s)
    # slot 0 (the system prompt alone) was released as redundant: no cell; the two older
    # conversations' own cells were the demotions; the cancelled request's cells, shared system
    # prompt included, stay.
    assert s.stats.num_demotions == 2 and s.stats.num_demoted_tokens == 4 + 3
    (kept,) = s.cache.idle_slots
    assert s.cache.tokens(kept) == running.tokens[: s.cache.length(kept)]
    assert s.cache.tokens(kept)[:11] == [*system, 1, 2, 3]


def test_the_most_recent_idle_conversation_stays_in_the_kv_cache_whatever_the_cap() -> None:
    # A long agent conversation over the cap on its own stays warm (its next turn, or a failover,
    # needs it); the cap sends the older ones away.
    s = sched(step_tokens=64, max_idle_tokens=5)
    older, latest = list(range(100, 110)), list(range(200, 212))
    idle_after(s, older)
    assert s.cache.num_idle_tokens == 10 and not s.needs_demotion  # alone: kept though over the cap
    idle_after(s, latest)
    assert s.needs_demotion
    out = run_step(s)
    assert out.removals == [0] and s.cache.idle_slots == [1] and s.cache.num_idle_tokens == 12
    assert not s.needs_demotion and s.stats.num_demotions == 1


def test_no_demotion_while_a_request_waits_or_runs() -> None:
    s = sched(step_tokens=64, max_idle_tokens=5, max_running=1)
    idle_after(s, list(range(100, 110)))  # slot 0, the older one
    idle_after(s, list(range(200, 210)))
    s.add(seq(1, [1, 2, 3], max_new=50))
    s.add(seq(2, [4, 5, 6]))
    out = run_step(s)
    assert out.removals == [] and not s.needs_demotion and s.stats.num_demotions == 0
    assert s.cancel(2) is not None
    assert run_step(s).removals == [] and s.stats.num_demotions == 0  # request 1 still runs
    assert s.cancel(1) is not None
    assert run_step(s).removals == [0] and s.stats.num_demotions == 1


def test_demotion_goes_on_beside_warm_ups() -> None:
    s = sched(step_tokens=64, max_idle_tokens=5)
    idle_after(s, list(range(100, 110)))
    idle_after(s, list(range(200, 210)))
    s.add(seq(1, list(range(300, 400)), warmup=True))  # 100 tokens: two steps of prefill
    assert run_step(s).removals == [0] and s.stats.num_demotions == 1 and s.running


def test_a_cap_of_zero_demotes_nothing() -> None:
    s = sched(step_tokens=64, max_idle_tokens=0, host_cache_bytes=10_000, host_min_tokens=8)
    idle_after(s, list(range(100, 110)), list(range(200, 210)), list(range(300, 310)))
    assert not s.needs_demotion
    assert s.schedule().kv_ops == [] and len(s.cache.idle_slots) == 3
    assert s.stats.num_demotions == 0


def test_the_warmup_queue_is_capped_dropping_the_oldest() -> None:
    s = sched(max_warmups=3)
    s.add(seq(1, [1, 2, 3], max_new=50))  # a real request runs: warm-ups wait
    run_step(s)
    for rid in range(10, 20):
        s.add(seq(rid, list(range(rid * 10, rid * 10 + 5)), max_new=0, warmup=True))
    assert [q.request_id for q in s.warmups] == [17, 18, 19]
    out = run_step(s)
    assert sorted(q.request_id for q in out.finished) == list(range(10, 17))  # for the worker to forget
    assert all(q.status is SequenceStatus.FINISHED for q in out.finished)


def test_a_warmup_that_finds_the_queue_full_is_dropped_and_reported() -> None:
    s = sched(max_running=1, max_queued=1)
    s.add(seq(1, [1, 2, 3], max_new=50))
    s.add(seq(2, [4, 5, 6], max_new=50))
    warm = seq(10, [7, 8, 9], max_new=0, warmup=True)
    s.add(warm)
    assert list(s.warmups) == [] and warm in run_step(s).finished


# ----- the n choices of one request (issue 17 point 1) -----


def test_sibling_choices_wait_for_the_leader_s_prompt_then_share_its_cells() -> None:
    """Before: n choices came as n requests, admitted together, and each prefilled the prompt."""
    s = sched(step_tokens=32)
    prompt = list(range(1, 11))
    s.add(seq(1, prompt), [seq(2, prompt), seq(3, prompt)])
    out = run_step(s)
    assert fed(out) == [(1, 0, 10, True)]  # the siblings are held: they would compute it again
    assert (len(s.waiting), s.num_held) == (0, 2)
    out = run_step(s)
    assert out.copies == [(0, 1, 9), (0, 2, 9)]  # all but the last prompt token, shared
    assert fed(out) == [(1, 10, 1, True), (2, 9, 1, True), (3, 9, 1, True)]
    assert [q.num_cached_tokens for q in s.running] == [0, 9, 9]
    assert s.siblings == []


def test_a_group_takes_one_queue_place_and_runs_at_most_max_running_choices() -> None:
    s = sched(max_running=2, max_queued=0)
    prompt = [5, 6, 7]
    s.add(seq(1, prompt, max_new=2), [seq(i, prompt, max_new=2) for i in (2, 3, 4)])
    s.add(seq(9, [1]))  # a second request still fits: the group took one place
    with pytest.raises(Overloaded):
        s.add(seq(10, [1]))
    s.cancel(9)
    run_step(s)
    out = run_step(s)
    assert [q.request_id for q in s.running] == [1, 2]
    assert fed(out) == [(1, 3, 1, True), (2, 2, 1, True)]
    seen = set()
    while s.has_work:
        out = run_step(s)
        assert len(s.running) <= 2
        seen |= {i.seq.request_id for i in out.items}
        for q in list(s.running):
            if q.num_output_tokens >= q.max_new_tokens:
                s.finish(q, FinishReason.LENGTH)
    assert seen == {1, 2, 3, 4}


def test_a_held_sibling_can_be_cancelled() -> None:
    s = sched()
    s.add(seq(1, [1, 2, 3]), [seq(2, [1, 2, 3])])
    cancelled = s.cancel(2)
    assert cancelled is not None and cancelled.status is SequenceStatus.FINISHED
    run_step(s)
    run_step(s)
    assert [q.request_id for q in s.running] == [1] and s.siblings == []
