from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from hotspare.core.errors import ModelError
from hotspare.engine.vllm_launch import VllmOptions, main, vllm_launch
from hotspare.models.catalog import load_catalog
from hotspare.models.entry import ModelEntry
from tests.models.factories import entry_dict, install_gpu_model

REPO = Path(__file__).resolve().parents[3]
FAKE_VLLM = Path(__file__).with_name("fake_vllm.py")


def gpu_entry(**overrides: object) -> ModelEntry:
    source = {"kind": "huggingface", "repo": "o/r", "file": "model.safetensors", "revision": "a" * 40}
    return ModelEntry.model_validate(
        entry_dict(name="gpu-model", backend="vllm", context_tokens=32768, source=source) | overrides
    )


def test_command_for_the_shipped_awq_model() -> None:
    entry = load_catalog(REPO / "models.toml").get("qwen2.5-7b-instruct-awq")
    launch = vllm_launch(entry, Path("/m/qwen"), VllmOptions(port=9000), executable="/venv/bin/vllm")
    assert launch.argv == (
        "/venv/bin/vllm",
        "serve",
        "/m/qwen",
        "--served-model-name",
        "qwen2.5-7b-instruct-awq",
        "--host",
        "127.0.0.1",
        "--port",
        "9000",
        "--gpu-memory-utilization",
        "0.9",
        "--max-model-len",
        "32768",
        "--tensor-parallel-size",
        "1",
        "--enable-prefix-caching",
    )
    assert dict(launch.env) == {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    assert (launch.base_url, launch.health_url) == (
        "http://127.0.0.1:9000/v1",
        "http://127.0.0.1:9000/health",
    )


def test_options_shape_the_command() -> None:
    options = VllmOptions(
        host="0.0.0.0", port=8000, gpu_memory_utilization=0.5, max_model_len_tokens=4096, num_gpus=2
    )
    launch = vllm_launch(gpu_entry(chat_template="{{ messages }}"), Path("/m"), options, executable="vllm")
    argv = list(launch.argv)
    assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.5"
    assert argv[argv.index("--max-model-len") + 1] == "4096"
    assert argv[argv.index("--tensor-parallel-size") + 1] == "2"
    assert argv[-2:] == ["--chat-template", "{{ messages }}"]
    assert launch.base_url == "http://127.0.0.1:8000/v1"  # reachable locally even when bound to all addresses


def test_refusals() -> None:
    with pytest.raises(ModelError, match=r"model 'tiny' runs on llama_cpp, not vllm"):
        vllm_launch(ModelEntry.model_validate(entry_dict()), Path("/m"))
    with pytest.raises(ModelError, match=r"max model length 65536 exceeds 'gpu-model''s context of 32768"):
        vllm_launch(gpu_entry(), Path("/m"), VllmOptions(max_model_len_tokens=65536))
    with pytest.raises(ValueError, match=r"gpu_memory_utilization must be in \(0, 1\], not 1.5"):
        VllmOptions(gpu_memory_utilization=1.5)
    with pytest.raises(ValueError, match=r"port must be 1-65535, not 0"):
        VllmOptions(port=0)


def test_main_says_what_to_do_when_the_model_is_not_pulled(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["qwen2.5-7b-instruct-awq", "--catalog", str(REPO / "models.toml"), "--print"]) == 1
    assert capsys.readouterr().err.startswith(
        "hotspare: model 'qwen2.5-7b-instruct-awq' is not installed: run `hotspare models pull"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def fake_vllm_bin(tmp_path: Path) -> str:
    script = tmp_path / "vllm"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_VLLM}" "$@"\n')
    script.chmod(0o755)
    return str(script)


@pytest.fixture
def running(fake_vllm_bin: str, tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The launch command run as a real process; stopped afterwards."""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    launch = vllm_launch(gpu_entry(), model_dir, VllmOptions(port=free_port()), executable=fake_vllm_bin)
    process = subprocess.Popen(launch.argv, env={**os.environ, **dict(launch.env)})
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, "the engine process exited during start-up"
            try:
                if httpx.get(launch.health_url, timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the engine never became healthy"
            time.sleep(0.05)  # polling /health is how vLLM readiness is observed
        yield launch.base_url, process
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_launched_engine_answers_the_openai_sdk(
    running: tuple[str, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    base_url, _ = running
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
    try:
        assert [m.id for m in client.models.list()] == ["gpu-model"]
        reply = client.chat.completions.create(
            model="gpu-model", messages=[{"role": "user", "content": "hi"}]
        )
    finally:
        client.close()
    answer = json.loads(reply.choices[0].message.content or "")
    started = {k: answer[k] for k in ("model_dir", "prefix_caching", "max_model_len", "hf_hub_offline")}
    assert started == {
        "model_dir": str(tmp_path / "model"),
        "prefix_caching": True,
        "max_model_len": 32768,
        "hf_hub_offline": "1",
    }


def test_gpu_smoke_script_runs_end_to_end_against_a_stand_in_engine(
    fake_vllm_bin: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """scripts/gpu-smoke with everything real but the engine: catalogue, pulled and verified files,
    `hotspare serve` running the engine as its child, the openai SDK through hotspare, and the
    engine stopped with hotspare. On a GPU machine the same script runs real vLLM."""
    install_gpu_model(tmp_path / "models.toml", monkeypatch)
    monkeypatch.setenv("HOTSPARE_VLLM_EXECUTABLE", fake_vllm_bin)
    config = tmp_path / "hotspare.toml"
    config.write_text("[local]\ncheck_fit = false\n")  # no GPU here
    script = [sys.executable, str(REPO / "scripts" / "gpu-smoke"), "gpu-model", "--skip-pull"]
    result = subprocess.run(
        [*script, "--port", str(free_port()), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{fake_vllm_bin} serve " in result.stdout  # the printed launch command
    assert re.search(r"ready after [\d.]+ s; engine processes: \[\d+\]", result.stdout)
    assert len(re.findall(r"^[\d.]+ s, (7 \+ \d+ tokens|streamed): ", result.stdout, re.M)) == 3
    assert result.stdout.rstrip().endswith("== OK: the GPU path works end to end")
