"""`hotspare serve`: its help, its refusals, and real runs (logging, allowlist, clean stop, failed load)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from hotspare.cli import main
from hotspare.models.catalog import DEFAULT_MODEL
from tests.serving import RunningServer, free_port, start_server, stop_server


def test_serve_help_explains_every_flag_and_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for needle in ("--host", "--port", "--model", "--config", "127.0.0.1", "8765", DEFAULT_MODEL, "/ready"):
        assert needle in text


def test_top_level_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for command in ("serve", "models", "bundle", "doctor"):
        assert command in text


@pytest.mark.parametrize("port", ["0", "70000", "http"])
def test_a_bad_port_is_a_usage_error(port: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--port", port])
    assert exited.value.code == 2
    assert f"a port is a number from 1 to 65535, not '{port}'" in capsys.readouterr().err


def test_an_unknown_model_is_refused_before_listening(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--model", "no-such-model"]) == 2
    assert capsys.readouterr().err.startswith("hotspare: no model named 'no-such-model' in the catalogue")


def test_a_bad_config_file_is_refused_with_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[server]\nport = 8765\nworkers = 4\n")
    assert main(["serve", "--config", str(config)]) == 2
    assert (
        capsys.readouterr().err == f"hotspare: invalid config file {config}: [server] workers: unknown key\n"
    )


def test_serve_logs_where_it_listens_which_model_and_the_load_time(server: RunningServer) -> None:
    lines = [line for line in server.log().splitlines() if "hotspare listening on" in line]
    assert len(lines) == 1
    assert f"listening on http://127.0.0.1:{server.port}, model {DEFAULT_MODEL}, ready in " in lines[0]
    assert lines[0].rstrip().endswith(" s")


def test_serve_runs_the_embedded_model_on_weights_re_encoded_for_the_cpu(server: RunningServer) -> None:
    (line,) = [line for line in server.log().splitlines() if "engine ready" in line]
    assert "Q8_0; Q8_0, re-encoded from Q4_1)" in line


@pytest.mark.real
def test_a_configured_server_restricts_names_and_stops_cleanly(tmp_path: Path) -> None:
    config = tmp_path / "hotspare.toml"
    config.write_text('[local]\ncontext_tokens = 1024\n[api]\nallowed_models = ["gpt-4o"]\n')
    running = start_server(tmp_path, "--config", str(config), "--host", "127.0.0.1")
    try:
        with httpx.Client(base_url=running.base_url, timeout=60) as http:
            models = http.get("/v1/models").json()["data"]
            assert [model["id"] for model in models] == [DEFAULT_MODEL, "gpt-4o"]
            body = {"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
            assert http.post("/v1/chat/completions", json=body).status_code == 404
            answered = http.post("/v1/chat/completions", json={**body, "model": "gpt-4o"})
            assert answered.status_code == 200
            assert answered.json()["model"] == DEFAULT_MODEL
    finally:
        status = stop_server(running)
    assert status == -signal.SIGTERM, running.log()  # uvicorn re-raises it after a graceful shutdown
    log = running.log()
    assert "Traceback" not in log and " ERROR " not in log
    assert log.rstrip().endswith("hotspare stopped")  # the lifespan ran to its end: the engine is stopped


@pytest.mark.real
def test_ctrl_c_is_a_quiet_graceful_shutdown(tmp_path: Path) -> None:
    running = start_server(tmp_path)
    body = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert httpx.post(f"{running.base_url}/v1/chat/completions", json=body, timeout=60).status_code == 200
    running.process.send_signal(signal.SIGINT)
    status = running.process.wait(30)
    log = running.log()
    # 130 (the shell's "interrupted") when uvicorn re-raises the signal after its graceful shutdown;
    # it does not always (0): either is a clean stop.
    assert status in (0, 130), log
    assert "Traceback" not in log and "ERROR" not in log, log
    assert log.rstrip().endswith("hotspare stopped")


@pytest.mark.real
def test_a_second_ctrl_c_during_the_shutdown_stops_at_once_without_a_traceback(tmp_path: Path) -> None:
    """An impatient second Ctrl-C makes uvicorn give up on the graceful shutdown; what is left of
    its lifespan task is cancelled, which it used to report as an ERROR with a traceback."""
    running = start_server(tmp_path)
    body = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert httpx.post(f"{running.base_url}/v1/chat/completions", json=body, timeout=60).status_code == 200
    children = psutil.Process(running.process.pid).children(recursive=True)
    running.process.send_signal(signal.SIGINT)
    time.sleep(0.05)
    running.process.send_signal(signal.SIGINT)
    status = running.process.wait(30)
    log = running.log()
    assert status in (0, 130), log
    assert "Traceback" not in log and "ERROR" not in log, log
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, log  # the engine process goes too


@pytest.mark.real
def test_a_signal_to_the_whole_process_group_is_a_clean_shutdown_that_saves_the_prefix_cache(
    tmp_path: Path,
) -> None:
    """Ctrl-C in a terminal (SIGINT) or `kill -- -PGID` (SIGTERM) reaches the engine process too. It
    must leave the shutdown to the API process, which saves the prefix cache, instead of dying first
    (which looked like a crash: "engine process died; restarting", and lost the cache)."""
    home = tmp_path / "home"
    running = start_server(tmp_path, home=home)
    try:
        with httpx.Client(base_url=running.base_url, timeout=60) as http:
            question = "Name three rivers in Europe and one fact about each of them, briefly. " * 2
            body = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": question}]}
            assert http.post("/v1/chat/completions", json={**body, "max_tokens": 4}).status_code == 200
        engines = [
            p for p in psutil.Process(running.process.pid).children() if "spawn_main" in " ".join(p.cmdline())
        ]
        assert len(engines) == 1
        for sig in (signal.SIGINT, signal.SIGTERM):
            engines[0].send_signal(sig)  # what the group signal delivers to the engine...
        running.process.send_signal(signal.SIGTERM)  # ...and to the API process
        running.process.wait(30)
        engines[0].wait(10)
    finally:
        stop_server(running)
    log = running.log()
    assert "engine process died" not in log and "Traceback" not in log, log
    assert list((home / "kvcache").rglob("prefix-*.kv")), log  # saved at the orderly shutdown


@pytest.mark.real
def test_a_model_that_cannot_load_makes_serve_exit_non_zero(tmp_path: Path) -> None:
    weights = tmp_path / "broken.gguf"
    weights.write_bytes(b"this is not a GGUF file")
    catalogue = tmp_path / "models.toml"
    catalogue.write_text(
        '[[model]]\nname = "broken"\nfamily = "test"\nparams = "1M"\nquantization = "Q4_1"\n'
        'backend = "llama_cpp"\ncontext_tokens = 512\nmemory_bytes = 1000\nverified = true\n'
        f'sha256 = "{hashlib.sha256(weights.read_bytes()).hexdigest()}"\n'
        f"size_bytes = {weights.stat().st_size}\n"
        f'[model.source]\nkind = "local"\npath = "{weights}"\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "hotspare", "serve", "--model", "broken", "--port", str(free_port())],
        env={**os.environ, "HOTSPARE_CATALOG": str(catalogue)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert "hotspare cannot serve: " in done.stderr
    assert str(weights) in done.stderr
