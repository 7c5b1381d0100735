"""The thread governor: fewer llama.cpp threads while other processes hold the cores, all of them again
once the machine is quiet. Pure decision logic with given CPU samples, then the real engine next to
real CPU hogs."""

from __future__ import annotations

import dataclasses
import multiprocessing
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from hotspare.core.types import SamplingParams
from hotspare.engine.config import EngineConfig
from hotspare.engine.core import EngineCore
from hotspare.engine.protocol import Submit
from hotspare.engine.threads import CpuSample, GovernorConfig, ThreadGovernor
from hotspare.engine.worker import load


def _run(governor: ThreadGovernor, others_cores: list[float], *, own_cores: float = 1.0) -> list[int | None]:
    """Feed one 0.5 s window per entry in which other processes used that many cores."""
    s = governor._last
    out = []
    for others in others_cores:
        s = CpuSample(s.at_s + 0.5, s.machine_busy_s + 0.5 * (others + own_cores), s.own_s + 0.5 * own_cores)
        out.append(governor.observe(s))
    return out


def test_drops_after_a_second_of_load_and_comes_back_only_after_a_quiet_spell() -> None:
    g = ThreadGovernor(GovernorConfig(max_threads=2, num_cpus=2), CpuSample(0, 0, 0))
    assert _run(g, [0.0, 0.2, 0.45]) == [None, None, None]  # below half a core: keep both threads
    assert _run(g, [0.9, 0.1, 0.8, 0.2]) == [None] * 4  # one busy window at a time: a request's burst
    assert _run(g, [0.9, 0.9]) == [None, 1]
    assert g.others_cores == pytest.approx(0.9)
    # Back below the raise threshold, but not long enough; a burst resets the count.
    assert _run(g, [0.1, 0.1, 0.6, 0.1, 0.1]) == [None] * 5
    assert _run(g, [0.4, 0.35]) == [None, None]  # quiet enough to keep 1, not to take 2
    assert _run(g, [0.1, 0.1, 0.1]) == [None, None, 2]
    assert (g.threads, g.num_changes) == (2, 2)


def test_many_cores_give_up_one_thread_per_busy_core_and_never_below_one() -> None:
    g = ThreadGovernor(GovernorConfig(max_threads=8, num_cpus=8), CpuSample(0, 0, 0))
    assert _run(g, [2.7, 2.7]) == [None, 5]
    assert _run(g, [20.0]) == [1]  # the load goes on: the second of it has been counted
    assert _run(g, [0.0, 0.0, 0.0]) == [None, None, 8]


def test_samples_closer_than_a_window_are_ignored() -> None:
    g = ThreadGovernor(GovernorConfig(max_threads=2, num_cpus=2), CpuSample(0, 0, 0))
    assert g.observe(CpuSample(0.1, 10.0, 0.0)) is None
    assert g.others_cores == 0.0  # not measured yet: the window is not over
    assert g.observe(CpuSample(0.6, 1.0, 0.4)) is None  # others: (1.0 - 0.4) / 0.6 s = 1 core...
    assert g.others_cores == pytest.approx(1.0)
    assert g.observe(CpuSample(1.2, 2.0, 0.8)) == 1  # ...for 1.2 s


def _hog(stop_at: float) -> None:
    while time.time() < stop_at:
        pass


@pytest.fixture(scope="module")
def core(model_path: Path) -> Iterator[EngineCore]:
    core, _ = load(EngineConfig(model_path=model_path, model_name="test", max_running=4, num_threads=2))
    yield core
    core.model.close()


def _decode_for(core: EngineCore, seconds: float) -> None:
    """Keep the engine decoding (resubmitting as answers end) for `seconds`."""
    deadline = time.monotonic() + seconds
    request_id = 1000 + int(time.monotonic() * 1000) % 100000
    while time.monotonic() < deadline:
        if not core.scheduler.has_work:
            request_id += 1
            params = SamplingParams(temperature=0.8, max_tokens=200)
            core.submit(Submit(request_id, "Tell me a long story about a lighthouse.", params))
        core.step()


@pytest.mark.skipif((psutil.cpu_count() or 1) < 2, reason="needs two CPUs")
def test_the_real_engine_gives_a_thread_up_while_hogs_run_and_takes_it_back(core: EngineCore) -> None:
    assert core.governor is not None and core.model.threads == 2
    ncpu = psutil.cpu_count() or 2
    ctx = multiprocessing.get_context("spawn")
    hogs = [ctx.Process(target=_hog, args=(time.time() + 3.5,), daemon=True) for _ in range(ncpu)]
    for hog in hogs:
        hog.start()
    try:
        time.sleep(0.5)  # the hogs are spinning
        _decode_for(core, 2.2)  # a second of load, and slack
        assert core.model.threads == 1, core.stats()
        assert core.stats()["others_cpu_cores"] >= 0.5
    finally:
        for hog in hogs:
            hog.join(timeout=10)
    # Whether the machine is quiet now depends on what else runs beside the tests: count any load
    # as quiet, so the way back up is exercised on the real engine either way.
    cpus = float(ncpu)
    core.governor.config = dataclasses.replace(core.governor.config, raise_below=cpus, drop_above=cpus)
    _decode_for(core, 3.0)  # three quiet windows and some slack
    stats = core.stats()
    assert core.model.threads == 2 == stats["num_threads"], stats
    assert stats["num_thread_changes"] >= 2


def test_one_long_quiet_window_is_enough_to_take_the_thread_back() -> None:
    """Windows end between decode steps, and a long prefill step makes one seconds long: quiet is
    counted in time, so a short burst from another process does not cost several slow steps."""
    g = ThreadGovernor(GovernorConfig(max_threads=2, num_cpus=2), CpuSample(0, 0, 0))
    assert g.observe(CpuSample(1.0, 2.0, 1.0)) == 1  # others used a whole core for a second
    assert g.observe(CpuSample(3.5, 4.5, 3.5)) == 2  # then a 2.5 s step with nobody else about


def test_load_while_the_engine_sat_idle_gives_no_thread_up_but_quiet_then_takes_one_back() -> None:
    g = ThreadGovernor(GovernorConfig(max_threads=2, num_cpus=2), CpuSample(0, 0, 0))
    # 10 s idle, others busy 4 s of it on both cores: not held against the engine
    assert g.observe(CpuSample(10.0, 8.0, 0.0), was_idle=True) is None
    assert _run(g, [0.9]) == [None]  # and the busy time starts over
    assert _run(g, [0.9]) == [1]
    assert g.observe(CpuSample(13.0, 10.5, 1.5), was_idle=True) == 2  # a quiet idle spell


def test_one_long_busy_window_is_enough_to_give_a_thread_up() -> None:
    """Load is counted in time too: a 1.2 s prefill step beside a hog gives the thread up at its end."""
    g = ThreadGovernor(GovernorConfig(max_threads=2, num_cpus=2), CpuSample(0, 0, 0))
    assert g.observe(CpuSample(1.2, 2.4, 1.2)) == 1
