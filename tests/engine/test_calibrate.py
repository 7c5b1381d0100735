"""Timing flash attention on and off on the real embedded model (engine/calibrate.py), and the engine
running with, and reporting, the mode chosen."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import psutil
import pytest

from hotspare.engine import calibrate
from hotspare.engine.attention import (
    WORKLOADS,
    AttentionChoice,
    CalibrationKey,
    FlashAttention,
    Measurement,
    choose,
    load_cached,
    save_cached,
)
from hotspare.engine.backends.llama_cpp import LlamaCppModel
from hotspare.engine.calibrate import calibration_key, resolve
from hotspare.engine.config import EngineConfig
from hotspare.engine.local import LocalEngine
from hotspare.engine.model import DecodeItem

# Off faster everywhere, the batched step too: a cached result that turns flash attention off.
OFF_WINS = tuple(Measurement(w, 50.0, 20.0) for w in WORKLOADS)
KEY = CalibrationKey("Some CPU", "ab" * 32, "0.3.36", "cd" * 32, 2)


def _state_and_logits(path: Path, is_on: bool) -> tuple[bytes, np.ndarray]:
    model = LlamaCppModel(
        path, kv_cache_tokens=512, max_slots=2, batch_tokens=64, num_threads=2, flash_attention=is_on
    )
    try:
        tokens = model.tokenize("The quick brown fox jumps over the lazy dog.", add_bos=True)
        (row,) = model.decode([DecodeItem(0, 0, tokens, True)])
        state, num_bytes = model.save_state(0)
        assert state is not None
        return bytes(state)[:num_bytes], model.logits(row)
    finally:
        model.close()


def test_the_mode_reaches_llama_cpp(model_path: Path) -> None:
    on_state, on_logits = _state_and_logits(model_path, True)
    off_state, off_logits = _state_and_logits(model_path, False)
    # Without flash attention llama.cpp keeps V transposed: same size, other bytes...
    assert len(on_state) == len(off_state) and on_state != off_state
    # ...and the same model underneath.
    assert int(np.argmax(on_logits)) == int(np.argmax(off_logits))


def test_a_calibration_times_every_workload_and_is_kept(
    model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Time it whatever else runs on this machine, and keep the result (a busy machine would skip both).
    monkeypatch.setattr(calibrate, "MAX_OTHERS_CORES", math.inf)
    monkeypatch.setattr(calibrate, "BUDGET_S", 300.0)
    key = calibration_key(model_path, 2)
    assert key is not None
    first = resolve(FlashAttention.AUTO, model_path, num_threads=2, key=key, directory=tmp_path)
    assert first.source == "calibrated" and first.calibration_s > 0
    assert [m.workload for m in first.measurements] == list(WORKLOADS)
    assert all(m.on_ms > 0 and m.off_ms > 0 for m in first.measurements)
    assert first.flash_attention is choose(first.measurements)
    # The next start reads it back and loads no model (the path is not even read).
    again = resolve(FlashAttention.AUTO, tmp_path / "absent.gguf", num_threads=2, key=key, directory=tmp_path)
    assert again == AttentionChoice(first.flash_attention, "cached", first.measurements, again.calibration_s)
    assert again.calibration_s == pytest.approx(first.calibration_s, abs=0.001)


def test_a_setting_is_taken_as_it_is(tmp_path: Path) -> None:
    absent = tmp_path / "absent.gguf"  # nothing is loaded or timed
    for setting, is_on in ((FlashAttention.ON, True), (FlashAttention.OFF, False)):
        assert resolve(setting, absent, num_threads=2, key=None, directory=tmp_path) == AttentionChoice(
            is_on, "setting"
        )
    assert list(tmp_path.iterdir()) == []


def test_a_failed_calibration_leaves_flash_attention_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(calibrate, "MAX_OTHERS_CORES", math.inf)
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a model")
    choice = resolve(FlashAttention.AUTO, broken, num_threads=2, key=None, directory=tmp_path)
    assert choice == AttentionChoice(True, "default")


async def test_the_engine_runs_with_the_choice_and_reports_it(
    model_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A result cached at an earlier start says off: the engine starts with it, without timing again.
    key = calibration_key(model_path, 0)
    assert key is not None
    save_cached(tmp_path, key, AttentionChoice(False, "calibrated", OFF_WINS, 3.0))
    config = EngineConfig(
        model_path=model_path,
        model_name="m",
        flash_attention=FlashAttention.AUTO,
        calibration_dir=tmp_path,
    )
    engine = LocalEngine(config)
    with caplog.at_level(logging.INFO, logger="hotspare.engine.local"):
        await engine.start()
    try:
        assert engine.attention == AttentionChoice(False, "cached", OFF_WINS, 3.0)
        assert (await engine.stats())["flash_attention"] is False
        assert "flash attention off (cached; on/off: decode_1 50/20 ms," in caplog.text
    finally:
        await engine.stop()


def test_only_the_cores_the_engine_needs_count_as_busy() -> None:
    cpus = psutil.cpu_count() or 1
    assert calibrate._max_others_cores(cpus) == 0.5
    assert calibrate._max_others_cores(1) == cpus - 1 + 0.5


def _fake_load(monkeypatch: pytest.MonkeyPatch, others_cores: list[float]) -> list[int]:
    """Other processes' load as `_others_cores` reports it, one value per call; `measure` returns
    OFF_WINS at once. Returns a list that counts the calls to `measure`."""
    calls: list[int] = []
    loads = iter(others_cores)
    monkeypatch.setattr(calibrate, "_others_cores", lambda _before: next(loads))
    monkeypatch.setattr(calibrate, "measure", lambda *_a, **_k: calls.append(1) or OFF_WINS)
    return calls


def test_a_busy_machine_is_not_timed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_load(monkeypatch, [calibrate._max_others_cores(2) + 0.1])
    choice = resolve(FlashAttention.AUTO, tmp_path / "m.gguf", num_threads=2, key=KEY, directory=tmp_path)
    assert choice == AttentionChoice(True, "default") and calls == [] and list(tmp_path.iterdir()) == []


def test_timings_taken_while_the_machine_got_busy_are_used_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    busy = calibrate._max_others_cores(2) + 0.1
    _fake_load(monkeypatch, [0.0, busy, 0.0, 0.0])
    choice = resolve(FlashAttention.AUTO, tmp_path / "m.gguf", num_threads=2, key=KEY, directory=tmp_path)
    assert (choice.flash_attention, choice.source, choice.measurements) == (False, "calibrated", OFF_WINS)
    assert list(tmp_path.iterdir()) == []
    # Quiet throughout: kept, and read back at the next start.
    resolve(FlashAttention.AUTO, tmp_path / "m.gguf", num_threads=2, key=KEY, directory=tmp_path)
    assert load_cached(tmp_path, KEY) is not None
