"""The crash-loop rule (engine/supervision.py) as pure logic, and in LocalEngine with a stand-in engine
process that dies by SIGSEGV on start or on a given prompt (tests/engine/crashing_worker.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hotspare.core.errors import EngineDied, PoisonRequest
from hotspare.core.types import ChatRequest, Finish, Message, Role, SamplingParams, StreamEvent, TextDelta
from hotspare.engine import process
from hotspare.engine.config import EngineConfig
from hotspare.engine.local import LocalEngine
from hotspare.engine.protocol import LocalBackend
from hotspare.engine.supervision import CrashPolicy, Death, Suspects, death_cause

from .crashing_worker import crashing_worker

# ----- pure logic -----


def test_three_deaths_within_the_window_fail_with_the_cause() -> None:
    policy = CrashPolicy(
        max_deaths=3, window_s=60, first_backoff_s=0.5, failed_backoff_s=30, max_backoff_s=100
    )
    cause = death_cause(-11, during="serving")
    assert cause == "killed by SIGSEGV (llama.cpp crashed in native code) during serving"
    assert policy.on_death(Death(0.0, cause)) == 0.5
    assert policy.on_death(Death(1.0, cause)) == 1.0
    assert policy.failure is None
    assert policy.on_death(Death(2.0, cause)) == 30
    assert policy.failure is not None
    assert "died 3 times within 60 s" in policy.failure and "SIGSEGV" in policy.failure
    assert "hotspare doctor" in policy.failure
    assert policy.on_death(Death(3.0, cause)) == 60  # backed off, doubling...
    assert policy.on_death(Death(4.0, cause)) == 100  # ...to the cap


def test_deaths_outside_the_window_do_not_add_up() -> None:
    policy = CrashPolicy(max_deaths=3, window_s=60)
    for at in (0.0, 61.0, 122.0, 183.0):
        policy.on_death(Death(at, "x"))
    assert policy.failure is None and policy.num_recent_deaths == 1


def test_a_good_start_clears_failed_but_keeps_the_deaths_counted() -> None:
    policy = CrashPolicy(max_deaths=3, window_s=60, failed_backoff_s=30)
    for at in (0.0, 1.0, 2.0):
        policy.on_death(Death(at, "x"))
    policy.on_started()
    assert policy.failure is None
    assert policy.on_death(Death(40.0, "x")) == 30  # fails again at once, backoff restarted
    assert policy.failure is not None


def test_a_hang_and_an_exit_code_are_named() -> None:
    assert death_cause(-9, during="serving", hung_s=60) == (
        "the engine hung (no sign of life for 60 s with work in flight) during serving"
    )
    assert death_cause(1, during="start-up") == "exited with code 1 during start-up"
    assert death_cause(-9, during="serving") == "killed by SIGKILL during serving"


def test_a_suspect_becomes_poison_only_when_it_crashes_alone() -> None:
    suspects = Suspects(max_entries=2)
    suspects.on_crash("a", was_alone=False, cause="SIGSEGV")
    assert suspects.is_suspect("a") and suspects.is_poison("a") is None
    suspects.on_crash("a", was_alone=True, cause="SIGSEGV")
    assert not suspects.is_suspect("a") and suspects.is_poison("a") == "SIGSEGV"
    suspects.on_crash("b", was_alone=False, cause="x")
    suspects.on_success("b")
    assert not suspects.is_suspect("b")
    for key in ("c", "d", "e"):
        suspects.on_crash(key, was_alone=True, cause="x")
    assert suspects.num_poison == 2 and suspects.is_poison("a") is None  # bounded: oldest dropped


# ----- LocalEngine with a stand-in engine process -----


def chat(text: str) -> ChatRequest:
    return ChatRequest(
        model="any",
        messages=(Message(Role.USER, text),),
        sampling=SamplingParams(temperature=0, max_tokens=8),
    )


async def answer(engine: LocalEngine, text: str) -> str:
    out = ""
    async for event in engine.stream(chat(text)):
        if isinstance(event, TextDelta):
            out += event.text
        elif isinstance(event, Finish):
            return out
    raise AssertionError("no Finish")


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(process, "engine_main", crashing_worker)


async def started(name: str) -> LocalEngine:
    config = EngineConfig(model_path=Path("/nonexistent.gguf"), model_name=name)
    engine = LocalEngine(config, load_timeout_s=30)
    await engine.start()
    return engine


@pytest.fixture
async def engine(stand_in: None) -> AsyncIterator[LocalEngine]:
    eng = await started("stand-in")
    yield eng
    await eng.stop()


async def test_the_engine_is_a_local_backend(engine: LocalEngine) -> None:
    assert isinstance(engine, LocalBackend)
    assert (engine.is_ready, engine.failure, engine.num_restarts, engine.can_warm) == (True, None, 0, True)
    assert await engine.stats() == {"num_prompts_prepared": 0, "num_prompts_sent": 0}


async def test_an_engine_that_dies_on_start_ends_failed_with_the_cause(stand_in: None) -> None:
    engine = await started("crash-on-start")
    try:
        assert not engine.is_ready
        assert engine.failure is not None
        assert "died 3 times" in engine.failure and "SIGSEGV" in engine.failure
        assert "start-up" in engine.failure
        assert engine.num_restarts == 3
    finally:
        await engine.stop()


async def test_a_poison_request_is_retried_alone_once_then_refused(engine: LocalEngine) -> None:
    assert await answer(engine, "hello") == "ok"
    with pytest.raises(PoisonRequest, match="crashed the local engine twice") as caught:
        await answer(engine, "POISON please")
    assert "SIGSEGV" in caught.value.message
    await _until_ready(engine)
    assert engine.num_restarts == 2  # crashed once, then once alone: no third chance
    assert engine.num_poison_requests == 1
    with pytest.raises(PoisonRequest):  # refused at once, without touching the engine
        await answer(engine, "POISON please")
    assert engine.num_restarts == 2
    assert await answer(engine, "hello again") == "ok"  # everyone else is served
    assert engine.failure is None


async def test_requests_in_flight_beside_a_poison_one_are_retried_and_answered(engine: LocalEngine) -> None:
    slow = asyncio.create_task(answer(engine, "innocent"))
    poison = asyncio.create_task(answer(engine, "POISON"))
    results = await asyncio.gather(slow, poison, return_exceptions=True)
    assert results[0] == "ok"
    assert isinstance(results[1], PoisonRequest)


async def test_a_request_that_delivered_text_is_not_retried(engine: LocalEngine) -> None:
    """Only an answer with nothing delivered yet can be run again invisibly."""
    stream = engine.stream(chat("HOLD"))
    first = await anext(stream)
    assert isinstance(first, TextDelta) and first.text == "partial"
    assert engine.pid is not None
    os.kill(engine.pid, signal.SIGSEGV)
    with pytest.raises(EngineDied, match="SIGSEGV"):
        await anext(stream)
    await _until_ready(engine)
    assert await answer(engine, "hello") == "ok"


async def _until_ready(engine: LocalEngine) -> None:
    for _ in range(200):
        if engine.is_ready:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the engine did not come back")


# ----- the n choices of one request (issue 17 point 1) -----


async def answers(engine: LocalEngine, text: str, n: int) -> list[str]:
    """The n choices of one request, read side by side; every choice closed at the end."""
    request = dataclasses.replace(chat(text), num_choices=n)
    choices = [engine.stream(request)]
    choices += engine.more_choices(request)

    async def read(events: AsyncIterator[StreamEvent]) -> str:
        out = ""
        async for event in events:
            if isinstance(event, TextDelta):
                out += event.text
        return out

    reads = [asyncio.ensure_future(read(c)) for c in choices]
    try:
        return list(await asyncio.gather(*reads))
    finally:
        for task in reads:
            task.cancel()
        await asyncio.gather(*reads, return_exceptions=True)
        for c in choices:
            await c.aclose()  # type: ignore[attr-defined]


async def test_n_choices_are_prepared_and_sent_once(engine: LocalEngine) -> None:
    """Before: each choice prepared the prompt and sent its own Submit."""
    assert await answers(engine, "hello", 3) == ["ok", "ok", "ok"]
    assert (engine.num_prompts_prepared, engine.num_prompts_sent) == (1, 1)


async def test_a_poison_group_is_retried_alone_once_then_refused_for_every_choice(
    engine: LocalEngine,
) -> None:
    """The group is the unit: one retry alone (not one per choice), then every choice is refused."""
    with pytest.raises(PoisonRequest):
        await answers(engine, "POISON", 3)
    await _until_ready(engine)
    assert engine.num_restarts == 2 and engine.num_poison_requests == 1
    assert engine.num_prompts_sent == 2  # the first run and the retry alone, each one Submit
    assert await answers(engine, "hello", 2) == ["ok", "ok"]


async def test_a_group_that_delivered_text_is_not_retried(engine: LocalEngine) -> None:
    request = dataclasses.replace(chat("HOLD"), num_choices=2)
    first = engine.stream(request)
    second, *_ = engine.more_choices(request)
    try:
        assert await anext(first) == TextDelta("partial")
        assert engine.pid is not None
        os.kill(engine.pid, signal.SIGSEGV)
        with pytest.raises(EngineDied):
            await anext(first)
        with pytest.raises(EngineDied):  # the same verdict for the sibling (it had text too)
            async for _ in second:
                pass
    finally:
        await first.aclose()  # type: ignore[attr-defined]
        await second.aclose()  # type: ignore[attr-defined]
    await _until_ready(engine)
    assert engine.num_prompts_sent == 1


async def test_choices_nobody_took_are_cancelled_with_the_first(engine: LocalEngine) -> None:
    request = dataclasses.replace(chat("HOLD"), num_choices=3)
    first = engine.stream(request)
    assert await anext(first) == TextDelta("partial")
    assert len(engine._pending) == 3
    await first.aclose()  # type: ignore[attr-defined]
    assert len(engine._pending) == 0 and not engine.gate.is_exclusive
    assert await answer(engine, "hello") == "ok"


async def test_closing_choices_that_never_started_frees_them(engine: LocalEngine) -> None:
    request = dataclasses.replace(chat("HOLD"), num_choices=3)
    first = engine.stream(request)
    assert await anext(first) == TextDelta("partial")
    rest = engine.more_choices(request)
    await first.aclose()  # type: ignore[attr-defined]
    assert len(engine._pending) == 2  # taken: they are theirs to close
    for choice in rest:
        await choice.aclose()  # type: ignore[attr-defined]
    assert len(engine._pending) == 0
