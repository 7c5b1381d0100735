"""`hotspare serve` picks the model with the hardware policy when none is named, and refuses a named
model that would not fit before loading anything. Real `hotspare serve` processes on the real
embedded weights; catalogue entries point at that file under other names and memory needs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from hotspare.models.catalog import DEFAULT_MODEL, load_catalog, resolve_weights
from tests.serving import free_port, start_server, stop_server

from .factories import entry_dict, write_catalog

TIB = 2**40


@pytest.fixture
def catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Two installed models on the embedded weights: "huge" (7B, needs 10 TiB, so it never fits) and
    "small"; and "absent", which would fit but is not installed."""
    real = load_catalog().get(DEFAULT_MODEL)
    weights = resolve_weights(real)
    common = {"sha256": real.sha256, "size_bytes": real.size_bytes, "context_tokens": 2048}
    source = {"kind": "local", "path": str(weights)}
    path = write_catalog(
        tmp_path / "models.toml",
        entry_dict(name="huge", params="7B", memory_bytes=10 * TIB, source=source, **common),
        entry_dict(name="small", params="135M", memory_bytes=real.memory_bytes, source=source, **common),
        entry_dict(name="absent", params="3B", memory_bytes=real.memory_bytes),
    )
    monkeypatch.setenv("HOTSPARE_CATALOG", str(path))
    return path


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    """`hotspare serve` expected to stop on its own (a refusal)."""
    argv = [sys.executable, "-m", "hotspare", "serve", "--port", str(free_port()), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=os.environ.copy())


@pytest.mark.real
def test_without_a_model_serve_runs_the_best_installed_model_that_fits(catalog: Path, tmp_path: Path) -> None:
    running = start_server(tmp_path)
    try:
        ready = httpx.get(f"{running.base_url}/ready", timeout=10).json()
        body = {"model": "any", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
        answer = httpx.post(f"{running.base_url}/v1/chat/completions", json=body, timeout=60)
    finally:
        stop_server(running)
    assert ready == {"status": "ready", "model": "small"}
    assert answer.status_code == 200 and answer.json()["model"] == "small"
    log = running.log()
    assert "model small: the most capable installed model that fits; it fits: needs 1.1 GiB of RAM" in log
    assert "(passed over: huge does not fit: needs 12288.5 GiB of RAM with headroom" in log


@pytest.mark.real
@pytest.mark.parametrize("where", ["--model", "[local] model"])
def test_a_named_model_that_does_not_fit_is_refused_before_loading(
    catalog: Path, tmp_path: Path, where: str
) -> None:
    config = tmp_path / "hotspare.toml"
    config.write_text('[local]\nmodel = "huge"\n')
    done = serve("--model", "huge") if where == "--model" else serve("--config", str(config))
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.startswith(
        "hotspare: model 'huge' does not fit: needs 12288.5 GiB of RAM with headroom, "
    )
    assert done.stderr.rstrip().endswith("available; choose a smaller model (see `hotspare doctor`)")
    assert "Traceback" not in done.stderr and "engine ready" not in done.stderr  # nothing was loaded


@pytest.mark.real
def test_check_fit_off_loads_it_anyway(catalog: Path, tmp_path: Path) -> None:
    config = tmp_path / "hotspare.toml"
    config.write_text('[local]\nmodel = "huge"\ncheck_fit = false\n')
    running = start_server(tmp_path, "--config", str(config))
    try:
        ready = httpx.get(f"{running.base_url}/ready", timeout=10).json()
    finally:
        stop_server(running)
    assert ready == {"status": "ready", "model": "huge"}
    assert "model huge: named in the configuration; the fit check is off" in running.log()


@pytest.mark.real
def test_nothing_installed_fits_is_a_clear_refusal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    only_huge = entry_dict(name="huge", memory_bytes=10 * TIB)  # its file does not exist either
    monkeypatch.setenv("HOTSPARE_CATALOG", str(write_catalog(tmp_path / "models.toml", only_huge)))
    done = serve()
    assert done.returncode == 1
    assert done.stderr == (
        "hotspare: no catalogue model is installed; run `hotspare models pull NAME` or import a bundle\n"
    )


def test_the_default_install_still_serves_the_embedded_model() -> None:
    """The real catalogue on this machine: what `scripts/install && hotspare serve` runs."""
    from hotspare.models.hardware import serving_choice

    assert serving_choice(load_catalog(), None).entry.name == DEFAULT_MODEL
