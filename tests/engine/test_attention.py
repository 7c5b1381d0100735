"""Choosing flash attention on or off from timings, and the cache of those timings (engine/attention.py):
pure logic on fake timings and small files."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from hotspare.engine.attention import (
    BATCH_8_IDLE,
    WORKLOADS,
    AttentionChoice,
    CalibrationKey,
    Measurement,
    choose,
    host_cpu,
    load_cached,
    save_cached,
)

KEY = CalibrationKey("Some CPU", "ab" * 32, "0.3.36", "cd" * 32, 2)


def timings(on: list[float], off: list[float]) -> tuple[Measurement, ...]:
    """The five workloads in WORKLOADS order (the last is BATCH_8_IDLE)."""
    return tuple(Measurement(w, a, b) for w, a, b in zip(WORKLOADS, on, off, strict=True))


# The table (2k context, 2 threads, this VM), and the batched step as timed here.
THIS_VM = timings([36, 464, 62, 501, 74], [21, 82, 34, 170, 130])


def test_off_when_it_is_faster_everywhere() -> None:
    assert choose(timings([36, 464, 62, 501, 74], [21, 82, 34, 170, 70])) is False


def test_on_when_it_is_faster_everywhere() -> None:
    assert choose(timings([20, 80, 30, 160, 60], [21, 82, 34, 170, 130])) is True


def test_the_batched_step_with_idle_cells_may_not_get_slower() -> None:
    # Off is 2-5x faster for one stream, but 1.76x slower for 8 streams with idle cells cached.
    assert choose(THIS_VM) is True


def test_a_batched_step_within_the_noise_does_not_decide() -> None:
    # Off's batched step is 5 % slower (MAX_BATCH_LOSS): the other workloads decide.
    assert choose(timings([36, 464, 62, 501, 100], [21, 82, 34, 170, 105])) is False
    assert choose(timings([36, 464, 62, 501, 100], [21, 82, 34, 170, 105.1])) is True


def test_on_loses_when_its_batched_step_is_slower_even_if_it_wins_the_rest() -> None:
    assert choose(timings([20, 80, 30, 160, 106], [21, 82, 34, 170, 100])) is False


def test_the_geometric_mean_weighs_each_workload_once() -> None:
    # Off 1.5x faster on three workloads, as fast on the batched step, and 3.3x slower on one:
    # 3.3 / 1.5^3 = 0.98 < 1, off. 3.4x slower: 1.007, on.
    assert choose(timings([10, 15, 15, 15, 15], [33, 10, 10, 10, 15])) is False
    assert choose(timings([10, 15, 15, 15, 15], [34, 10, 10, 10, 15])) is True


def test_a_tie_keeps_flash_attention_on() -> None:
    assert choose(timings([10, 20, 30, 40, 50], [10, 20, 30, 40, 50])) is True


def test_bad_timings_are_refused() -> None:
    with pytest.raises(ValueError, match=BATCH_8_IDLE):
        choose(THIS_VM[:4])
    with pytest.raises(ValueError, match="positive"):
        choose(timings([36, 464, 62, 501, 74], [21, 0, 34, 170, 130]))


def test_the_choice_describes_itself_for_the_log_and_status() -> None:
    choice = AttentionChoice(choose(THIS_VM), "calibrated", THIS_VM, 2.345)
    assert choice.describe() == (
        "flash attention on (calibrated; on/off: decode_1 36/21 ms, decode_19 464/82 ms, "
        "decode_1_idle 62/34 ms, decode_19_idle 501/170 ms, batch_8_idle 74/130 ms)"
    )
    assert choice.as_status() == {
        "flash_attention": "on",
        "source": "calibrated",
        "calibration_s": 2.35,
        "on_ms": dict(zip(WORKLOADS, (36, 464, 62, 501, 74), strict=True)),
        "off_ms": dict(zip(WORKLOADS, (21, 82, 34, 170, 130), strict=True)),
    }
    assert list(choice.as_status()["on_ms"]) == list(WORKLOADS)
    assert AttentionChoice(False, "setting").describe() == "flash attention off (setting)"


def test_a_saved_calibration_is_read_back_as_cached(tmp_path: Path) -> None:
    save_cached(tmp_path, KEY, AttentionChoice(True, "calibrated", THIS_VM, 2.5))
    assert load_cached(tmp_path, KEY) == AttentionChoice(True, "cached", THIS_VM, 2.5)
    assert [p.name for p in tmp_path.iterdir()] == [KEY.file_name()]


@pytest.mark.parametrize(
    "change",
    [
        {"cpu": "Another CPU"},
        {"cpu_flags_sha256": "ef" * 32},
        {"llama_cpp": "0.3.37"},
        {"weights_sha256": "00" * 32},
        {"num_threads": 1},
        {"workload_version": 0},
    ],
)
def test_anything_the_timings_depend_on_invalidates_them(tmp_path: Path, change: dict[str, object]) -> None:
    save_cached(tmp_path, KEY, AttentionChoice(True, "calibrated", THIS_VM, 2.5))
    other = dataclasses.replace(KEY, **change)  # type: ignore[arg-type]
    assert other.file_name() != KEY.file_name()
    assert load_cached(tmp_path, other) is None
    # A file under another key's name (copied, renamed) is not trusted either.
    (tmp_path / KEY.file_name()).rename(tmp_path / other.file_name())
    assert load_cached(tmp_path, other) is None


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: text[: len(text) // 2],
        lambda text: "[]",
        lambda text: text.replace('"batch_8_idle"', '"batch_9_idle"'),
        lambda text: text.replace('"on_ms": 36', '"on_ms": -36'),
        lambda text: text.replace('"on_ms": 36', '"on_ms": "fast"'),
    ],
)
def test_a_damaged_file_is_ignored(tmp_path: Path, damage: object) -> None:
    save_cached(tmp_path, KEY, AttentionChoice(True, "calibrated", THIS_VM, 2.5))
    path = tmp_path / KEY.file_name()
    path.write_text(damage(path.read_text()))  # type: ignore[operator]
    assert load_cached(tmp_path, KEY) is None


def test_the_cached_choice_is_decided_again_from_the_timings(tmp_path: Path) -> None:
    # The file records the mode, but the timings are what is trusted: the rule decides again.
    save_cached(tmp_path, KEY, AttentionChoice(True, "calibrated", THIS_VM, 2.5))
    path = tmp_path / KEY.file_name()
    record = json.loads(path.read_text())
    record["flash_attention"] = False
    path.write_text(json.dumps(record))
    cached = load_cached(tmp_path, KEY)
    assert cached is not None and cached.flash_attention is True


def test_no_folder_no_file(tmp_path: Path) -> None:
    assert load_cached(tmp_path / "absent", KEY) is None


def test_the_cpu_is_named_by_model_and_flags_in_any_order(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Xeon X\nflags\t\t: avx2 fma sse\n\nprocessor\t: 1\n")
    model, flags = host_cpu(info)
    info.write_text("model name: Xeon X\nflags: sse avx2 fma\n")
    assert host_cpu(info) == (model, flags) and model == "Xeon X"
    info.write_text("model name: Xeon X\nflags: sse avx2 fma avx512f\n")
    assert host_cpu(info)[1] != flags
