"""`hotspare serve` on a catalogue model with backend "vllm": a real `hotspare serve` process runs
the engine process ($HOTSPARE_VLLM_EXECUTABLE names the stand-in, tests/engine/vllm/fake_vllm.py) on the
model pulled into the Hugging Face cache, and the official openai SDK talks to hotspare."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest

from tests.models.factories import install_gpu_model
from tests.models.hub_server import COMMIT
from tests.serving import RunningServer, start_server, stop_server

from .test_vllm_backend import fake_vllm, is_gone

pytestmark = pytest.mark.real  # `hotspare serve` as a subprocess (see tests/conftest.py)


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_homes: Path) -> Iterator[RunningServer]:
    install_gpu_model(tmp_path / "models.toml", monkeypatch, stop=["\nUser:"])
    monkeypatch.setenv("HOTSPARE_VLLM_EXECUTABLE", fake_vllm(tmp_path))
    monkeypatch.setenv("FAKE_VLLM_START_DELAY_S", "1")
    monkeypatch.setenv("FAKE_VLLM_CHUNK_DELAY_S", "0.2")
    config = tmp_path / "hotspare.toml"
    # No GPU here, so the fit check would refuse a vLLM model: it is turned off.
    config.write_text('[local]\nmodel = "gpu-model"\ncheck_fit = false\ncontext_tokens = 2048\n')
    running = start_server(tmp_path, "--config", str(config), home=isolated_homes)  # the hashes pulled
    try:
        yield running
    finally:
        stop_server(running)


def engine_pids(server: RunningServer) -> list[int]:
    children = psutil.Process(server.process.pid).children(recursive=True)
    return [p.pid for p in children if any("fake_vllm.py" in part for part in p.cmdline())]


def wait_ready(base_url: str, expected: int) -> Any:
    """Poll /ready until it answers `expected`; that answer's body."""
    deadline = time.monotonic() + 60
    while (response := httpx.get(f"{base_url}/ready", timeout=5)).status_code != expected:
        assert time.monotonic() < deadline, f"/ready never said {expected}"
        time.sleep(0.05)  # polling another process's state
    return response.json()


def test_the_sdk_chats_through_vllm_which_survives_kill_9(server: RunningServer) -> None:
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
    try:
        reply = client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "Hi"}], stop=["###"]
        )
        answer = json.loads(reply.choices[0].message.content or "")
        assert reply.model == "gpu-model"
        assert answer["model_dir"].endswith(f"/models--o--r/snapshots/{COMMIT}")  # as pulled, verified
        assert answer["max_model_len"] == 2048 and answer["prefix_caching"] is True
        assert answer["stop"] == ["###", "\nUser:"]
        (pid,) = engine_pids(server)

        stream = client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
        chunks = iter(stream)
        while not next(chunks).choices[0].delta.content:  # the first chunk says the role
            pass
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(openai.APIError, match="vLLM engine"):
            list(chunks)
        assert wait_ready(server.base_url, 503) == {"status": "restarting"}
        with pytest.raises(openai.InternalServerError) as refused:
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}])
        assert refused.value.status_code == 503
        assert "the local vLLM engine is not running (starting or restarting)" in str(refused.value)

        wait_ready(server.base_url, 200)
        again = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}])
        assert json.loads(again.choices[0].message.content or "")["stop"] == ["\nUser:"]
        (restarted,) = engine_pids(server)
        assert restarted != pid and is_gone(pid)
    finally:
        client.close()
    assert stop_server(server) == -signal.SIGTERM
    assert is_gone(restarted)
    log = server.log()
    assert "vLLM killed by SIGKILL during serving; restarting (restart #1)" in log
    assert "Traceback" not in log


def test_the_engine_dies_with_a_killed_hotspare(server: RunningServer) -> None:
    """SIGKILL gives hotspare no chance to stop vLLM's process group: the kernel stops it instead."""
    (pid,) = engine_pids(server)
    try:
        server.process.kill()
        server.process.wait()
        deadline = time.monotonic() + 5
        while not is_gone(pid):
            assert time.monotonic() < deadline, "the engine outlived the hotspare that started it"
            time.sleep(0.05)  # polling another process's state
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).kill()
