"""Which prefixes persist.save keeps on disk: the hottest, within a count and a byte budget."""

from __future__ import annotations

from pathlib import Path
from typing import cast

from hotspare.engine import persist
from hotspare.engine.backends.llama_cpp import LlamaCppModel
from hotspare.engine.scheduler import Scheduler, SchedulerConfig


class FakeModel:
    """save_state of any slot: `num_bytes` bytes; counts the calls."""

    def __init__(self, num_bytes: int) -> None:
        self.num_bytes = num_bytes
        self.num_saves = 0

    def save_state(self, slot: int) -> tuple[bytes, int]:
        self.num_saves += 1
        return bytes([slot]) * self.num_bytes, self.num_bytes


def scheduler_with(idle: list[int], host: list[tuple[list[int], int]]) -> Scheduler:
    """An idle KV slot holding `idle`, and host entries (tokens, state bytes), the last the hottest."""
    config = SchedulerConfig(
        capacity_tokens=1000,
        max_slots=4,
        max_running=2,
        max_queued=2,
        step_tokens=64,
        host_cache_bytes=100_000,
    )
    s = Scheduler(config)
    assert s.host is not None
    for tokens, num_bytes in host:
        entry_id = s.host.reserve(tokens)
        assert entry_id is not None
        s.host.fill(entry_id, b"h" * num_bytes, num_bytes)
    slot = s.kv.take_free_slot()
    assert slot is not None
    s.kv.adopt_idle(slot, idle)
    return s


def names(directory: Path) -> set[str]:
    return {p.name for p in directory.glob("prefix-*.kv")}


def name(tokens: list[int]) -> str:
    return f"prefix-{persist._name(tokens)}.kv"


def test_the_hottest_prefixes_are_kept_within_the_byte_budget(tmp_path: Path) -> None:
    idle = list(range(100, 140))  # the idle KV slot comes first: 40 tokens, 2,000 state bytes
    cold, warm, hot = [1] * 50, [2] * 50, [3] * 50
    s = scheduler_with(idle, [(cold, 500), (warm, 1000), (hot, 3000)])
    model = FakeModel(2000)
    sizes = {
        "idle": persist._file_size(idle, 2000),
        "hot": persist._file_size(hot, 3000),
        "warm": persist._file_size(warm, 1000),
        "cold": persist._file_size(cold, 500),
    }
    # Room for the idle slot and the warm entry, not for the hot one after the idle slot: the hot one
    # is skipped for colder ones that fit, until the budget or the count runs out.
    budget = sizes["idle"] + sizes["warm"] + sizes["cold"] - 1
    kept = persist.save(cast(LlamaCppModel, model), s, tmp_path, 4, budget)
    assert kept == 2 and names(tmp_path) == {name(idle), name(warm)}
    assert sum(p.stat().st_size for p in tmp_path.glob("prefix-*.kv")) == sizes["idle"] + sizes["warm"]
    # A smaller budget later: the existing files are measured on disk, and the one past it goes.
    assert persist.save(cast(LlamaCppModel, model), s, tmp_path, 4, sizes["idle"] + sizes["cold"]) == 2
    assert names(tmp_path) == {name(idle), name(cold)} and model.num_saves == 1
    # The count still applies.
    assert persist.save(cast(LlamaCppModel, model), s, tmp_path, 1, 10**9) == 1
    assert names(tmp_path) == {name(idle)}
    # Every file written reads back whole.
    loaded = persist._read(tmp_path / name(idle))
    assert loaded is not None and loaded[0] == idle and loaded[2] == 2000
