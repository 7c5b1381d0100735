"""The vLLM backend against a real OpenAI-compatible engine process standing in for vLLM
(tests/engine/vllm/fake_vllm.py, started from the exact command hotspare builds): health wait, chats,
the catalogue's stop strings, tool calls, errors, kill -9 and restart, and clean shutdown."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psutil
import pytest

from hotspare.core import environment
from hotspare.core.errors import BackendUnavailable, InvalidRequest, ModelError
from hotspare.core.types import (
    ChatRequest,
    Finish,
    FinishReason,
    JsonOutput,
    Message,
    Role,
    SamplingParams,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    ToolCallStart,
    ToolSpec,
    Usage,
)
from hotspare.engine import vllm as vllm_backend_module
from hotspare.engine.protocol import LocalBackend
from hotspare.engine.vllm import VllmBackend
from hotspare.engine.vllm_launch import VllmOptions, vllm_launch
from tests.serving import free_port

from .test_vllm_launch import FAKE_VLLM, gpu_entry

CONTEXT = 4096
VLLM_KEY = "vllm-loopback-key-0123456789"


def chat(text: str, **sampling: object) -> ChatRequest:
    return ChatRequest("gpt-4o", (Message(Role.USER, text),), SamplingParams(**sampling))  # type: ignore[arg-type]


async def collect(stream: AsyncIterator[StreamEvent]) -> tuple[str, list[StreamEvent]]:
    events = [event async for event in stream]
    return "".join(e.text for e in events if isinstance(e, TextDelta)), events


def fake_vllm(tmp_path: Path) -> str:
    script = tmp_path / "vllm"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_VLLM}" "$@"\n')
    script.chmod(0o755)
    return str(script)


def backend_for(
    tmp_path: Path,
    *,
    with_config: bool = True,
    executable: str | None = None,
    health_interval_s: float = 10.0,
    max_health_failures: int = 3,
) -> VllmBackend:
    model_dir = tmp_path / "model"
    model_dir.mkdir(exist_ok=True)
    if with_config:
        (model_dir / "config.json").write_text("{}")
    entry = gpu_entry(stop=["\nUser:"])
    options = VllmOptions(port=free_port(), max_model_len_tokens=CONTEXT)
    launch = vllm_launch(
        entry, model_dir, options, executable=executable or fake_vllm(tmp_path), api_key=VLLM_KEY
    )
    return VllmBackend(
        launch,
        context_tokens=CONTEXT,
        stop=entry.stop,
        stop_timeout_s=5,
        health_interval_s=health_interval_s,
        max_health_failures=max_health_failures,
    )


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[VllmBackend]:
    vllm = backend_for(tmp_path)
    await vllm.start()
    try:
        yield vllm
    finally:
        await vllm.stop()


def is_gone(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


async def test_chats_reach_the_engine_started_as_hotspare_built_it(
    backend: VllmBackend, tmp_path: Path
) -> None:
    assert backend.is_ready and backend.name == "local" and backend.model_name == "gpu-model"
    text, events = await collect(backend.stream(chat("Hi", stop=("###",), top_k=5, max_tokens=50)))
    answer = json.loads(text)
    assert answer == {
        "model_dir": str(tmp_path / "model"),
        "prefix_caching": True,
        "max_model_len": CONTEXT,
        "hf_hub_offline": "1",
        "api_key_required": True,
        "inherited_secrets": [],
        "messages": [{"role": "user", "content": "Hi"}],
        "stop": ["###", "\nUser:"],  # the client's own, then the catalogue entry's
        "max_tokens": 50,
        "top_k": 5,
        "response_format": None,
    }
    assert events[-1] == Finish(FinishReason.END_TURN, Usage(7, len(events) - 1), "gpu-model")
    assert await backend.count_tokens(chat("one two three")) == 3


async def test_it_is_a_local_backend_without_counters_or_warm_ups(backend: VllmBackend) -> None:
    assert isinstance(backend, LocalBackend)
    state = (backend.is_ready, backend.failure, backend.num_restarts, backend.can_warm)
    assert state == (True, None, 0, False)
    assert await backend.stats() is None
    await backend.warm(chat("Hello"))  # a no-op


async def test_tool_calls_are_read_out_of_the_answer(backend: VllmBackend) -> None:
    tool = ToolSpec("get_weather", "Weather in a city", {"type": "object", "properties": {}})
    request = ChatRequest("m", (Message(Role.USER, "CALL Paris"),), tools=(tool,))
    _, events = await collect(backend.stream(request))
    start, *deltas, finish = events
    assert isinstance(start, ToolCallStart) and start.name == "get_weather"
    assert json.loads("".join(d.arguments for d in deltas if isinstance(d, ToolCallDelta))) == {
        "city": "Paris"
    }
    assert isinstance(finish, Finish) and finish.reason is FinishReason.TOOL_CALLS


async def test_json_output_asks_vllm_for_its_guided_json(backend: VllmBackend) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    request = dataclasses.replace(chat("Hi", top_k=0), json_output=JsonOutput(schema))
    text, _ = await collect(backend.stream(request))
    answer = json.loads(text)
    assert answer["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": schema},
    }
    assert answer["top_k"] is None  # 0 means off, and is not sent
    assert "JSON" in answer["messages"][0]["content"]  # the prompt asks for it too (agents/prompt.py)


async def test_a_request_the_engine_refuses_is_the_clients_fault(backend: VllmBackend) -> None:
    with pytest.raises(InvalidRequest, match=r"the local vLLM engine refused the request: max_tokens is too"):
        await collect(backend.stream(chat("Hi", max_tokens=CONTEXT + 1)))
    assert backend.is_ready


async def test_kill_9_fails_requests_in_flight_then_it_is_restarted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_VLLM_CHUNK_DELAY_S", "0.2")
    monkeypatch.setenv("FAKE_VLLM_START_DELAY_S", "1")  # a restart takes a while, as a model load does
    vllm = backend_for(tmp_path)
    await vllm.start()
    try:
        first_pid = vllm.pid
        assert first_pid is not None
        stream = vllm.stream(chat("Hi"))
        assert isinstance(await anext(stream), TextDelta)
        os.kill(first_pid, signal.SIGKILL)
        with pytest.raises(BackendUnavailable, match="the local vLLM engine"):
            await collect(stream)
        while vllm.is_ready:  # the supervisor notices the exit
            await asyncio.sleep(0.01)
        with pytest.raises(BackendUnavailable, match="not running \\(starting or restarting\\)"):
            await collect(vllm.stream(chat("Hi")))
        async with asyncio.timeout(60):
            while not vllm.is_ready:
                await asyncio.sleep(0.05)
        assert vllm.num_restarts == 1 and vllm.pid != first_pid
        assert is_gone(first_pid)
        text, _ = await collect(vllm.stream(chat("again")))
        assert json.loads(text)["messages"] == [{"role": "user", "content": "again"}]
        second_pid = vllm.pid
    finally:
        await vllm.stop()
    assert second_pid is not None and is_gone(second_pid)
    assert not vllm.is_ready


async def test_a_hung_engine_is_killed_after_failed_health_checks_and_restarted(tmp_path: Path) -> None:
    vllm = backend_for(tmp_path, health_interval_s=0.2, max_health_failures=3)
    await vllm.start()
    try:
        hung = vllm.pid
        assert hung is not None
        os.kill(hung, signal.SIGSTOP)  # alive, but answers nothing
        async with asyncio.timeout(30):
            while vllm.num_restarts == 0 or not vllm.is_ready:
                await asyncio.sleep(0.05)
        assert vllm.pid != hung and is_gone(hung)
        text, _ = await collect(vllm.stream(chat("after")))
        assert json.loads(text)["messages"] == [{"role": "user", "content": "after"}]
    finally:
        await vllm.stop()


async def test_an_engine_that_exits_while_starting_is_a_model_error(tmp_path: Path) -> None:
    vllm = backend_for(tmp_path, with_config=False)
    with pytest.raises(ModelError, match=r"^vLLM exited with code 1 while starting$"):
        await vllm.start()
    await vllm.stop()
    missing = backend_for(tmp_path, executable=str(tmp_path / "no-such-vllm"))
    with pytest.raises(ModelError, match=r"cannot run '.*no-such-vllm': No such file or directory"):
        await missing.start()
    await missing.stop()


async def test_vllm_inherits_no_key_and_its_port_requires_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "HOTSPARE_API_KEYS", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "sk-must-not-leak-0123456789")
    monkeypatch.setenv("PROD_KEY_FOR_OPENAI", "sk-must-not-leak-0123456789")  # an `env:` name
    monkeypatch.setattr(environment, "_configured", {"PROD_KEY_FOR_OPENAI"})
    vllm = backend_for(tmp_path)
    await vllm.start()
    try:
        text, _ = await collect(vllm.stream(chat("Hi", max_tokens=50)))
        assert json.loads(text)["inherited_secrets"] == []
        environ = psutil.Process(vllm.pid).environ()
        assert "sk-must-not-leak-0123456789" not in environ.values()
        assert environ["VLLM_API_KEY"] == VLLM_KEY
        body = {"model": "gpu-model", "messages": [{"role": "user", "content": "Hi"}]}
        async with httpx.AsyncClient() as anyone:
            refused = await anyone.post(f"{vllm.launch.base_url}/chat/completions", json=body)
        assert refused.status_code == 401
    finally:
        await vllm.stop()
    assert os.environ["OPENAI_API_KEY"] == "sk-must-not-leak-0123456789"  # hotspare's own is intact


def test_hotspare_gives_its_vllm_a_random_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vllm_backend_module, "resolve_weights", lambda entry: tmp_path / "model" / "w")
    first, second = (vllm_backend_module.vllm_backend(gpu_entry()) for _ in range(2))
    keys = [dict(b.launch.env)["VLLM_API_KEY"] for b in (first, second)]
    assert keys[0] != keys[1] and min(len(k) for k in keys) >= 32
    assert not any(keys[0] in arg for arg in first.launch.argv)  # not on the command line (ps)
