"""The engine process as the API side sees it: streams, cancellation, overload, crashes, warm-up."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psutil
import pytest

from hotspare.agents.fit import ContextPolicy
from hotspare.core import environment
from hotspare.core.errors import BackendUnavailable, ContextOverflow, ModelError, Overloaded
from hotspare.core.types import (
    ChatRequest,
    Finish,
    FinishReason,
    Message,
    Role,
    SamplingParams,
    StreamEvent,
    TextDelta,
)
from hotspare.engine.config import EngineConfig
from hotspare.engine.local import LocalEngine
from tests.agents.recorded import claude_code_turns


def chat(text: str, max_tokens: int = 8, **kw: object) -> ChatRequest:
    return ChatRequest(
        model="any",
        messages=(Message(Role.USER, text),),
        sampling=SamplingParams(temperature=0, max_tokens=max_tokens, **kw),  # type: ignore[arg-type]
    )


async def collect(engine: LocalEngine, request: ChatRequest) -> tuple[str, Finish]:
    text = ""
    async for event in engine.stream(request):
        if isinstance(event, TextDelta):
            text += event.text
        elif isinstance(event, Finish):
            return text, event
    raise AssertionError("stream ended without Finish")


@pytest.fixture
async def engine(model_path: Path) -> AsyncIterator[LocalEngine]:
    eng = LocalEngine(
        EngineConfig(model_path=model_path, model_name="smollm2-135m-instruct", max_running=4, max_queued=2)
    )
    await eng.start()
    yield eng
    await eng.stop()


async def test_stream_answers_with_truthful_usage(engine: LocalEngine) -> None:
    request = chat("What is 2 + 2?", max_tokens=5)
    text, finish = await collect(engine, request)
    assert text
    assert finish.reason is FinishReason.LENGTH and finish.usage.output_tokens == 5
    assert finish.usage.input_tokens == await engine.count_tokens(request)
    assert finish.model == "smollm2-135m-instruct"


async def test_max_tokens_beyond_the_context_is_clamped_not_refused(engine: LocalEngine) -> None:
    _text, finish = await collect(engine, chat("Say hi.", max_tokens=128_000, stop=("\n",)))
    assert finish.reason in (FinishReason.END_TURN, FinishReason.STOP_SEQUENCE, FinishReason.LENGTH)


async def test_cancelled_stream_frees_its_sequence(engine: LocalEngine) -> None:
    stream = engine.stream(chat("Write a very long story about a lighthouse.", max_tokens=500))
    async for event in stream:
        assert isinstance(event, TextDelta)
        break
    await stream.aclose()  # type: ignore[attr-defined]
    for _ in range(100):
        stats = await engine.stats()
        if stats["num_running"] == 0:
            break
        await asyncio.sleep(0.02)
    assert stats["num_running"] == 0 and stats["num_waiting"] == 0
    assert stats["num_generated_tokens"] < 400  # it stopped long before max_tokens


async def test_oversized_prompt_is_refused_with_the_limit(engine: LocalEngine) -> None:
    with pytest.raises(ContextOverflow) as info:
        await collect(engine, chat("lorem ipsum " * 6000))
    assert info.value.max_context_tokens == engine.context_tokens == 8192


async def test_queue_full_is_overloaded_and_nothing_hangs(engine: LocalEngine) -> None:
    requests = [collect(engine, chat(f"Count to {i}.", max_tokens=64)) for i in range(10)]
    results = await asyncio.wait_for(asyncio.gather(*requests, return_exceptions=True), timeout=120)
    overloaded = [r for r in results if isinstance(r, Overloaded)]
    answered = [r for r in results if isinstance(r, tuple)]
    assert len(answered) + len(overloaded) == 10
    assert overloaded and len(answered) >= 6  # 4 running + 2 queued are admitted


async def test_engine_killed_mid_stream_fails_cleanly_and_restarts(engine: LocalEngine) -> None:
    pid = engine.pid
    assert pid is not None
    stream = engine.stream(chat("Write a long poem about rain.", max_tokens=400))
    with pytest.raises(BackendUnavailable):
        async for _ in stream:
            os.kill(pid, signal.SIGKILL)
    for _ in range(300):
        if engine.is_ready and engine.pid != pid:
            break
        await asyncio.sleep(0.05)
    assert engine.num_restarts == 1
    _text, finish = await collect(engine, chat("Hello!", max_tokens=3))
    assert finish.usage.output_tokens == 3


async def test_warmed_conversation_hits_the_cache_after_an_outage(engine: LocalEngine) -> None:
    history = (
        Message(Role.SYSTEM, "You are the support bot of a bicycle shop. " * 40),
        Message(Role.USER, "My chain keeps slipping."),
        Message(Role.ASSISTANT, "Check the derailleur alignment and chain wear."),
    )
    seen_upstream = ChatRequest(model="claude-x", messages=history, sampling=SamplingParams(max_tokens=8))
    await engine.warm(seen_upstream)
    for _ in range(200):
        stats = await engine.stats()
        if stats["num_running"] == 0 and stats["num_warmups_waiting"] == 0:
            break
        await asyncio.sleep(0.05)
    next_turn = ChatRequest(
        model="claude-x",
        messages=(*history, Message(Role.USER, "It is a new chain.")),
        sampling=SamplingParams(temperature=0, max_tokens=4),
    )
    _, finish = await collect(engine, next_turn)
    assert finish.usage.cached_tokens > 0.9 * finish.usage.input_tokens


async def test_cached_prefixes_survive_a_restart_on_disk(model_path: Path, tmp_path: Path) -> None:
    config = EngineConfig(model_path=model_path, model_name="m", persist_dir=tmp_path)
    system = Message(Role.SYSTEM, "You translate legal contracts into plain English. " * 30)
    first = LocalEngine(config)
    await first.start()
    await collect(
        first,
        ChatRequest(
            model="m",
            messages=(system, Message(Role.USER, "Clause 1?")),
            sampling=SamplingParams(max_tokens=2),
        ),
    )
    await first.stop()  # saves at shutdown
    assert list(tmp_path.rglob("prefix-*.kv"))
    second = LocalEngine(config)
    await second.start()
    try:
        assert second.num_restored_tokens > 200
        _, finish = await collect(
            second,
            ChatRequest(
                model="m",
                messages=(system, Message(Role.USER, "Clause 2?")),
                sampling=SamplingParams(max_tokens=2),
            ),
        )
        assert finish.usage.cached_tokens > 200
    finally:
        await second.stop()


async def test_stats_count_steps_by_batch_size(engine: LocalEngine) -> None:
    await asyncio.gather(*(collect(engine, chat(f"Name {i} colours.", max_tokens=6)) for i in range(3)))
    stats = await engine.stats()
    assert stats["batch_size_bounds"] == [1, 2, 4, 8, 16, 32, 64]
    assert sum(stats["steps_by_batch_size"]) == stats["num_steps"]
    assert stats["num_batched_sequences"] >= stats["num_steps"]
    assert sum(stats["steps_by_batch_size"][1:]) >= 1  # some step decoded the requests together


ENGINE_OWNER = """
import asyncio, sys
from pathlib import Path
from hotspare.engine.config import EngineConfig
from hotspare.engine.local import LocalEngine
asyncio.run(LocalEngine(EngineConfig(model_path=Path(sys.argv[1]), model_name="m")).start())
"""


def test_the_engine_process_dies_with_a_killed_api_process(tmp_path: Path) -> None:
    """A killed API process closes the pipe, but an engine that is not reading it (loading, or hung
    in native code) must notice too. Here the model is a FIFO nobody writes: opening it blocks for
    good, as a hung load would."""
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    owner = subprocess.Popen([sys.executable, "-c", ENGINE_OWNER, str(fifo)])
    engine: psutil.Process | None = None
    try:
        deadline = time.monotonic() + 60
        while engine is None:  # until the engine process has loaded llama.cpp: it is about to load
            assert owner.poll() is None and time.monotonic() < deadline, "the engine never started"
            engine = next(filter(_has_llama, psutil.Process(owner.pid).children()), None)
            time.sleep(0.05)  # polling another process's state
        owner.kill()
        owner.wait()
        engine.wait(timeout=5)  # psutil.TimeoutExpired if the engine outlives the API process
    finally:
        owner.kill()
        owner.wait()
        if engine is not None and engine.is_running():
            engine.kill()


def _has_llama(process: psutil.Process) -> bool:
    with contextlib.suppress(psutil.Error):
        return any("libllama" in m.path for m in process.memory_maps())
    return False


async def test_with_a_host_cache_saved_prefixes_come_back_into_host_ram_not_the_kv_cache(
    model_path: Path, tmp_path: Path
) -> None:
    """Restored cells would sit idle in the KV cache and slow every step: they go to host RAM and are
    restored from there by the first request that needs them."""
    config = EngineConfig(model_path=model_path, model_name="m", persist_dir=tmp_path, host_cache_mib=64)
    system = Message(Role.SYSTEM, "You summarise incident reports for an airline. " * 30)

    def ask(question: str) -> ChatRequest:
        messages = (system, Message(Role.USER, question))
        return ChatRequest(model="m", messages=messages, sampling=SamplingParams(max_tokens=2))

    first = LocalEngine(config)
    await first.start()
    await collect(first, ask("Report 1?"))
    await first.stop()  # saves at shutdown
    second = LocalEngine(config)
    await second.start()
    try:
        stats = await second.stats()
        assert second.num_restored_tokens > 200
        assert stats["kv_used_tokens"] == 0 and stats["host_cache_entries"] == 1, stats
        _, finish = await collect(second, ask("Report 2?"))
        assert finish.usage.cached_tokens > 200
        stats = await second.stats()
        assert stats["host_restores"] == 1, stats
    finally:
        await second.stop()


async def test_many_conversations_through_a_small_kv_cache_all_complete_with_host_ram_in_play(
    model_path: Path,
) -> None:
    """Eight conversations, a few turns at once, through a KV cache that holds two or three of them:
    conversations go to host RAM and come back while others run, and every turn completes."""
    config = EngineConfig(
        model_path=model_path,
        model_name="m",
        kv_cache_tokens=2048,
        context_tokens=1024,
        max_running=3,
        host_cache_mib=256,
    )
    engine = LocalEngine(config)
    await engine.start()
    system = Message(Role.SYSTEM, "You are a helpful assistant for a shipping company. " * 8)
    histories: list[tuple[Message, ...]] = [(system,)] * 8
    order = [3, 1, 4, 1, 5, 0, 2, 6, 5, 3, 7, 0, 2, 4, 6, 1, 7, 3, 5, 0, 2, 6, 4, 7]

    async def turn(c: int) -> None:
        question = Message(Role.USER, f"Question {len(histories[c])} about parcel {c}: where is it now? " * 6)
        messages = (*histories[c], question)
        text, finish = await collect(
            engine, ChatRequest("m", messages, SamplingParams(temperature=0, max_tokens=16))
        )
        assert finish.reason in (FinishReason.END_TURN, FinishReason.LENGTH)
        histories[c] = (*messages, Message(Role.ASSISTANT, text))

    try:
        for i in range(0, len(order), 3):  # three conversations at a time (never the same one twice)
            await asyncio.gather(*(turn(c) for c in dict.fromkeys(order[i : i + 3])))
        stats = await engine.stats()
        # How many go to host RAM and back depends on the order turns arrive and finish in (usually 7
        # saves and 3 restores; 3 and 1 seen under load): both must have happened.
        assert stats["host_saves"] >= 2 and stats["host_restores"] >= 1, stats
        assert stats["prefix_cached_tokens"] > 0.5 * stats["prefix_prompt_tokens"], stats
    finally:
        await engine.stop()


async def test_conversations_held_in_host_ram_are_saved_at_shutdown_too(
    model_path: Path, tmp_path: Path
) -> None:
    """Four conversations through a KV cache that holds two: the older ones live in host RAM by the
    time the engine stops, and all four come back warm after a restart."""
    config = EngineConfig(
        model_path=model_path,
        model_name="m",
        kv_cache_tokens=1024,
        context_tokens=1024,
        max_running=1,
        persist_dir=tmp_path,
        persist_slots=8,
        host_cache_mib=64,
    )
    system = Message(Role.SYSTEM, "You keep the maintenance log of a lighthouse. " * 10)

    def ask(i: int, turn: int) -> ChatRequest:
        log = Message(Role.USER, f"Entry {i}: the lamp of tower {i} was cleaned and tested at dawn. " * 20)
        messages = (
            (system, log)
            if turn == 0
            else (system, log, Message(Role.ASSISTANT, "Noted."), Message(Role.USER, "When?"))
        )
        return ChatRequest("m", messages, SamplingParams(temperature=0, max_tokens=2))

    first = LocalEngine(config)
    await first.start()
    try:
        for i in range(4):
            await collect(first, ask(i, 0))
        stats = await first.stats()
        assert stats["host_cache_entries"] >= 2, stats  # the KV cache could not hold all four
    finally:
        await first.stop()
    second = LocalEngine(config)
    await second.start()
    try:
        for i in range(4):
            _, finish = await collect(second, ask(i, 1))
            assert finish.usage.cached_tokens > 200, (i, finish.usage)
    finally:
        await second.stop()


async def test_a_torn_or_foreign_prefix_file_is_discarded_at_start(model_path: Path, tmp_path: Path) -> None:
    config = EngineConfig(model_path=model_path, model_name="m", persist_dir=tmp_path, host_cache_mib=64)
    first = LocalEngine(config)
    await first.start()
    try:
        await collect(first, chat("Tell me about lighthouses and their keepers. " * 10, max_tokens=2))
    finally:
        await first.stop()
    (good,) = tmp_path.rglob("prefix-*.kv")
    data = good.read_bytes()
    (good.parent / "prefix-torn.kv").write_bytes(data[: len(data) // 2])
    (good.parent / "prefix-foreign.kv").write_bytes(b"GGSQ not ours at all")
    second = LocalEngine(config)
    await second.start()
    try:
        assert second.num_restored_tokens > 100  # the good one
        assert sorted(p.name for p in good.parent.glob("prefix-*.kv")) == [good.name]
    finally:
        await second.stop()


def lamp_log(i: int, *, follow_up: bool) -> ChatRequest:
    """Conversation `i` of the idle-cap tests: a ~250-token log entry, or its next turn."""
    log = Message(Role.USER, f"Entry {i}: the lamp of tower {i} was cleaned and tested at dawn. " * 12)
    messages = (log, Message(Role.ASSISTANT, "Noted."), Message(Role.USER, "When?")) if follow_up else (log,)
    return ChatRequest("m", messages, SamplingParams(temperature=0, max_tokens=2))


async def test_demotions_wait_until_the_engine_has_been_quiet_for_a_while(model_path: Path) -> None:
    """A conversation's next turn usually comes right after its answer, and must not wait for a
    demotion's save. With a long quiet period, nothing is demoted soon after the last answer though
    the idle cells are over the cap (the next test sees them demoted once the default second passes)."""
    config = EngineConfig(
        model_path=model_path,
        model_name="m",
        max_running=2,
        host_cache_mib=64,
        max_idle_kv_tokens=100,
        cache_work_quiet_s=30.0,
    )
    engine = LocalEngine(config)
    await engine.start()
    try:
        for i in range(3):
            await collect(engine, lamp_log(i, follow_up=False))
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            stats = await engine.stats()
            assert stats["kv_demotions"] == 0 and stats["kv_repacks"] == 0, stats
            await asyncio.sleep(0.1)
        assert stats["kv_idle_tokens"] > 100, stats
    finally:
        await engine.stop()


async def test_idle_cells_beyond_the_cap_go_to_host_ram_and_a_demoted_conversation_comes_back_warm(
    model_path: Path,
) -> None:
    """Three conversations of ~250 tokens, one after another, in a KV cache with room for all of them
    but a cap of 300 idle cells: once the engine is idle the older ones are demoted to host RAM (idle
    cells fall under the cap) and the one kept is moved to the bottom of the cache; its next turn
    reuses it there, and the first conversation's next turn is restored from host RAM."""
    cap = 300
    config = EngineConfig(
        model_path=model_path, model_name="m", max_running=2, host_cache_mib=64, max_idle_kv_tokens=cap
    )

    engine = LocalEngine(config)
    await engine.start()
    try:
        for i in range(3):
            _, finish = await collect(engine, lamp_log(i, follow_up=False))
            assert finish.usage.input_tokens > 200, finish.usage
        for _ in range(200):  # the engine demotes, then repacks, between its idle loop's turns
            stats = await engine.stats()
            if stats["kv_repacks"]:
                break
            await asyncio.sleep(0.02)
        assert stats["kv_idle_tokens"] <= cap and stats["kv_demotions"] == 2, stats
        assert stats["kv_demoted_tokens"] > 400 and stats["kv_repacks"] == 1, stats
        # kept in the KV cache (moved to its bottom)
        _, finish = await collect(engine, lamp_log(2, follow_up=True))
        assert finish.usage.cached_tokens > 200, finish.usage
        assert (await engine.stats())["host_restores"] == 0
        _, finish = await collect(engine, lamp_log(0, follow_up=True))  # demoted: back from host RAM
        assert finish.usage.cached_tokens > 200, finish.usage
        assert (await engine.stats())["host_restores"] == 1
    finally:
        await engine.stop()


async def test_a_looping_answer_is_cut_and_reported_as_length(engine: LocalEngine) -> None:
    prompt = "Count: 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1. Continue the sequence of ones forever."
    _, finish = await collect(engine, chat(prompt, max_tokens=2000))
    assert finish.reason is FinishReason.LENGTH  # cut, never end_turn
    assert finish.usage.output_tokens < 200
    assert (await engine.stats())["num_repetition_stops"] == 1


async def test_answers_that_turn_to_noise_are_cut_and_reported_as_length(engine: LocalEngine) -> None:
    """Sampled hot, the embedded model drifts into word salad in long explanations (at temperature 1
    already, 5 of 8 seeds average over 4.5 nats of entropy in some 64-token window: scripts/
    measure_noise.py); those answers are cut early, as length, and counted apart from loops."""

    def explain(seed: int) -> ChatRequest:
        request = chat("Explain how a hash map works.", max_tokens=512, seed=seed)
        return dataclasses.replace(request, sampling=dataclasses.replace(request.sampling, temperature=1.5))

    requests = [explain(seed) for seed in range(4)]
    answers = await asyncio.gather(*(collect(engine, r) for r in requests))
    stats = await engine.stats()
    cut = [f for _, f in answers if f.reason is FinishReason.LENGTH and f.usage.output_tokens < 512]
    assert stats["num_noise_stops"] >= 2
    assert len(cut) == stats["num_noise_stops"] + stats["num_repetition_stops"]
    assert all(f.usage.output_tokens >= 64 for f in cut)  # never before a full window
    # a coherent answer as long is not cut
    _, finish = await collect(engine, chat("Write a Python function that parses a CSV file.", max_tokens=300))
    assert finish.usage.output_tokens >= 100
    assert (await engine.stats())["num_noise_stops"] == stats["num_noise_stops"]


async def test_the_answer_budget_caps_a_huge_or_absent_max_tokens(model_path: Path) -> None:
    config = EngineConfig(model_path=model_path, model_name="smollm2-135m-instruct", max_answer_tokens=12)
    eng = LocalEngine(config)
    await eng.start()
    try:
        for max_tokens in (64000, None):
            request = chat("Write a long story about a dragon and a knight.", max_tokens=8)
            request = dataclasses.replace(
                request, sampling=dataclasses.replace(request.sampling, max_tokens=max_tokens)
            )
            _, finish = await collect(eng, request)
            assert finish.reason is FinishReason.LENGTH and finish.usage.output_tokens == 12
    finally:
        await eng.stop()


async def test_a_request_that_asks_for_no_truncation_samples_with_the_default_min_p(model_path: Path) -> None:
    """Sampled from its whole distribution at temperature 1 the embedded model turns to word salad in
    most long answers; with min_p 0.05 none did (docs/engine.md). Only requests that set no truncation
    of their own get it, and greedy ones need none."""
    config = EngineConfig(
        model_path=model_path, model_name="smollm2-135m-instruct", max_answer_tokens=64, default_min_p=0.05
    )
    eng = LocalEngine(config)
    await eng.start()
    try:
        cases = [
            (SamplingParams(temperature=1.0), 0.05),
            (SamplingParams(temperature=0.7, max_tokens=100000), 0.05),
            (SamplingParams(temperature=1.0, top_p=0.9), 0.0),
            (SamplingParams(temperature=1.0, top_k=40), 0.0),
            (SamplingParams(temperature=1.0, min_p=0.2), 0.2),
            (SamplingParams(temperature=0), 0.0),
        ]
        for sampling, min_p in cases:
            request = ChatRequest("m", (Message(Role.USER, "Hi"),), sampling)
            turn = await eng.prepare(request)
            assert turn.sampling.min_p == min_p, sampling
            assert turn.sampling.max_tokens == 64  # the answer budget still applies
            assert dataclasses.replace(turn.sampling, min_p=0, max_tokens=None) == dataclasses.replace(
                sampling, min_p=0, max_tokens=None
            )
        _, finish = await collect(eng, ChatRequest("m", (Message(Role.USER, "Hi"),), SamplingParams()))
        assert finish.usage.output_tokens <= 64
    finally:
        await eng.stop()


@pytest.fixture
async def fitting_engine(model_path: Path) -> AsyncIterator[LocalEngine]:
    config = EngineConfig(model_path=model_path, model_name="smollm2-135m-instruct", context_tokens=8192)
    eng = LocalEngine(config, context_policy=ContextPolicy.FIT)
    await eng.start()
    yield eng
    await eng.stop()


async def _tokens(engine: LocalEngine, prompt: str) -> list[int]:
    return await engine.tokens(prompt)


async def test_claude_code_s_warm_up_is_the_prefix_of_its_next_turn(fitting_engine: LocalEngine) -> None:
    answered, turn2 = claude_code_turns()
    warm = await fitting_engine.warm_prompt(answered)
    prompt = (await fitting_engine.prepare(turn2)).prompt
    assert warm and prompt.startswith(warm)
    warm_tokens, tokens = await _tokens(fitting_engine, warm), await _tokens(fitting_engine, prompt)
    assert tokens[: len(warm_tokens)] == warm_tokens  # every token but the new message's
    assert len(warm_tokens) / len(tokens) >= 0.9 and len(tokens) < 8192


async def test_a_growing_claude_code_session_misses_the_cache_only_at_rare_drops(
    fitting_engine: LocalEngine,
) -> None:
    """Turns k and k+1 of one conversation, fitted to the 8k context: the warm-up of turn k is the
    prefix of turn k+1 on every turn but the few where old turns are dropped."""
    _, conversation = claude_code_turns()
    num_misses = 0
    for k in range(16):
        answered = dataclasses.replace(
            conversation,
            messages=(
                *conversation.messages,
                Message(Role.ASSISTANT, f"Step {k} done. " + "Output line. " * 40),
            ),
        )
        conversation = dataclasses.replace(
            answered, messages=(*answered.messages, Message(Role.USER, f"Now do step {k + 1}, please."))
        )
        warm = await fitting_engine.warm_prompt(answered)
        prompt = (await fitting_engine.prepare(conversation)).prompt
        num_misses += not prompt.startswith(warm)
    assert num_misses <= 16 // 4


async def test_the_engine_process_inherits_no_key(model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-must-not-leak-0123456789"
    for name in ("OPENAI_API_KEY", "HOTSPARE_API_KEYS", "HF_TOKEN", "PROD_UPSTREAM"):
        monkeypatch.setenv(name, secret)
    monkeypatch.setattr(environment, "_configured", {"PROD_UPSTREAM"})  # an upstream's `env:` name
    eng = LocalEngine(EngineConfig(model_path=model_path, model_name="smollm2-135m-instruct"))
    await eng.start()
    try:
        assert eng._proc is not None
        inherited = psutil.Process(eng._proc.process.pid).environ()
        assert secret not in inherited.values()
        assert inherited["PATH"] == os.environ["PATH"]  # the rest is passed on
        text, _ = await collect(eng, chat("Say hi"))
        assert text
    finally:
        await eng.stop()
    assert os.environ["OPENAI_API_KEY"] == os.environ["PROD_UPSTREAM"] == secret  # restored here


async def test_no_warmup_is_sent_while_the_engine_has_a_backlog(model_path: Path) -> None:
    eng = LocalEngine(EngineConfig(model_path=model_path, model_name="smollm2-135m-instruct", max_running=1))
    await eng.start()
    try:
        stream = eng.stream(chat("Count from one to one hundred.", max_tokens=96))
        await anext(stream)  # the one request the engine runs at once is decoding
        conversation = chat("An earlier conversation, long enough to be worth warming. " * 4)
        for _ in range(5):
            await eng.warm(conversation)
        stats = await eng.stats()
        assert (stats["num_running"], stats["num_warmups_waiting"]) == (1, 0)
        assert eng.num_warmups_skipped == 5
        await stream.aclose()
    finally:
        await eng.stop()


# --- commands never block the event loop ------------------------------------------------------------


BIG = "word " * 400_000  # 2 MB of prompt: ten times the pipe's buffer


class LoopLag:
    """The longest the event loop went without running a 10 ms ticker: what /health, heartbeats and
    every other stream on the loop (passthrough included) wait for."""

    def __init__(self) -> None:
        self.max_s = 0.0
        self._last = time.monotonic()  # from now: a loop blocked before the first tick counts too
        self._task = asyncio.create_task(self._tick())

    async def _tick(self) -> None:
        while True:
            now = time.monotonic()
            self.max_s = max(self.max_s, now - self._last)
            self._last = now
            await asyncio.sleep(0.01)

    async def stop(self) -> float:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        return self.max_s


@contextlib.contextmanager
def stopped(pid: int, resume_after_s: float) -> Iterator[None]:
    """The engine process frozen (SIGSTOP: a hung engine, or one deep in a long step), resumed after
    `resume_after_s` by a timer thread (so that a loop blocked on the pipe comes back) or on exit."""
    os.kill(pid, signal.SIGSTOP)
    timer = threading.Timer(resume_after_s, os.kill, (pid, signal.SIGCONT))
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


async def test_big_commands_beside_a_stream_never_stall_the_loop(engine: LocalEngine) -> None:
    assert engine.pid is not None
    stream = engine.stream(chat("Count from one to one hundred.", max_tokens=64))
    first = await anext(stream)
    assert isinstance(first, TextDelta)
    with stopped(engine.pid, resume_after_s=1.5):  # a step that takes 1.5 s
        lag = LoopLag()
        await engine.warm(chat(BIG))
        counting = asyncio.create_task(engine.count_tokens(chat(BIG)))
        await asyncio.sleep(1.0)
        assert await lag.stop() < 0.3  # ticks 10 ms apart, plus scheduling noise
    assert await counting > 100_000  # delivered whole once the engine read it
    rest = [event async for event in stream]
    assert isinstance(rest[-1], Finish)  # the stream went on to its end


async def test_a_hung_engine_never_blocks_the_loop_and_its_watchdog_fires(model_path: Path) -> None:
    eng = LocalEngine(
        EngineConfig(model_path=model_path, model_name="smollm2-135m-instruct"), hang_timeout_s=2.0
    )
    await eng.start()
    try:
        assert eng.pid is not None
        with stopped(eng.pid, resume_after_s=30.0):
            lag = LoopLag()
            counting = asyncio.create_task(eng.count_tokens(chat(BIG)))
            with pytest.raises(BackendUnavailable):  # killed: it took no command for 2 s
                await asyncio.wait_for(counting, 10.0)
            assert await lag.stop() < 0.3
        for _ in range(600):
            if eng.is_ready and eng.num_restarts == 1:
                break
            await asyncio.sleep(0.05)
        text, _ = await collect(eng, chat("Say hi"))
        assert text
    finally:
        await eng.stop()


async def test_a_failed_load_leaves_no_writer_thread_behind(tmp_path: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a model" * 100)
    eng = LocalEngine(EngineConfig(model_path=junk, model_name="junk"))
    with pytest.raises(ModelError):
        await eng.start()
    await eng.stop()
    writers = [t for t in threading.enumerate() if t.name == "hotspare-engine-writer"]
    for thread in writers:
        thread.join(timeout=5)
    assert not any(t.is_alive() for t in writers)


# ----- the n choices of one request (issue 17 point 1) -----


async def read_all(events: AsyncIterator[StreamEvent]) -> tuple[str, Finish]:
    text = ""
    async for event in events:
        if isinstance(event, TextDelta):
            text += event.text
        elif isinstance(event, Finish):
            return text, event
    raise AssertionError("stream ended without Finish")


async def test_n_choices_are_prepared_sent_and_tokenized_once_and_share_the_prompt_s_cells(
    engine: LocalEngine,
) -> None:
    """Before: each of the 4 choices was prepared, sent and tokenized on its own (4 of each), and
    choices admitted in one step each computed the prompt."""
    before = await engine.stats()
    request = dataclasses.replace(chat("Name a colour.", max_tokens=6), num_choices=4)
    choices = [engine.stream(request), *engine.more_choices(request)]
    try:
        results = await asyncio.wait_for(asyncio.gather(*(read_all(c) for c in choices)), timeout=120)
    finally:
        for c in choices:
            await c.aclose()  # type: ignore[attr-defined]
    after = await engine.stats()
    assert [after[k] - before[k] for k in ("num_prompts_prepared", "num_prompts_sent", "num_prompts")] == [
        1,
        1,
        1,
    ]
    finishes = [finish for _text, finish in results]
    assert all(text for text, _finish in results)
    prompt = finishes[0].usage.input_tokens
    assert [f.usage.input_tokens for f in finishes] == [prompt] * 4
    assert [f.usage.cached_tokens for f in finishes[1:]] == [prompt - 1] * 3  # the first choice's cells
    assert after["num_running"] == 0 and after["num_waiting"] == 0


async def test_closing_n_choices_cancels_them_all_on_the_engine(engine: LocalEngine) -> None:
    request = dataclasses.replace(
        chat("Write a very long story about a lighthouse.", max_tokens=500), num_choices=4
    )
    choices = [engine.stream(request), *engine.more_choices(request)]
    assert isinstance(await anext(choices[0]), TextDelta)
    assert isinstance(await anext(choices[1]), TextDelta)  # 2 and 3 are never read
    for c in choices:
        await c.aclose()  # type: ignore[attr-defined]
    for _ in range(100):
        stats = await engine.stats()
        if stats["num_running"] == 0 and stats["num_waiting"] == 0:
            break
        await asyncio.sleep(0.02)
    assert stats["num_running"] == 0 and stats["num_waiting"] == 0
    assert stats["num_generated_tokens"] < 4 * 400  # they stopped long before max_tokens
