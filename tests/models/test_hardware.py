from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest

from hotspare.core.errors import ModelError, NotFound
from hotspare.models.catalog import Catalog
from hotspare.models.entry import ModelEntry
from hotspare.models.hardware import (
    RAM_RESERVE_BYTES,
    Gpu,
    MachineProfile,
    check_disk,
    check_fits,
    choose_for_serve,
    choose_model,
    detect_gpus,
    detect_machine,
    fit,
    parse_nvidia_smi,
)

from .factories import entry_dict

GiB = 2**30


def model(name: str, params: str, memory_gib: float, **overrides: object) -> ModelEntry:
    memory = int(memory_gib * GiB)
    data = entry_dict(name=name, params=params, size_bytes=memory // 2, memory_bytes=memory) | overrides
    return ModelEntry.model_validate(data)


def vllm_model(name: str, params: str, memory_gib: float) -> ModelEntry:
    return model(
        name,
        params,
        memory_gib,
        backend="vllm",
        source={"kind": "huggingface", "repo": "o/r", "file": "model.safetensors", "revision": "main"},
    )


def laptop(ram_available_gib: float, **overrides: object) -> MachineProfile:
    values: dict[str, object] = {
        "num_cores": 4,
        "num_threads": 8,
        "ram_total_bytes": 16 * GiB,
        "ram_available_bytes": int(ram_available_gib * GiB),
        "disk_free_bytes": 100 * GiB,
    }
    return MachineProfile(**(values | overrides))  # type: ignore[arg-type]


TINY = model("tiny", "135M", 0.5)
SMALL = model("small", "1B", 1.3)
MID = model("mid", "3B", 3.2)
BASE = model("base", "270M", 1.0, completion_only=True, chat_template="{{ x }}")
GPU_MODEL = vllm_model("gpu", "7B", 10.0)
CATALOG = (TINY, BASE, SMALL, MID, GPU_MODEL)


def test_ram_rule_is_margin_plus_reserve() -> None:
    need = int(SMALL.memory_bytes * 1.2) + RAM_RESERVE_BYTES
    assert fit(SMALL, laptop(need / GiB)).fits
    assert not fit(SMALL, laptop((need - 1) / GiB)).fits


def test_largest_installed_model_that_fits_is_chosen() -> None:
    choice = choose_model(laptop(8), CATALOG, installed={"tiny", "small", "mid"})
    assert choice.entry is MID
    assert choice.reason.startswith("the most capable installed model that fits; it fits: needs 4.3 GiB")


def test_a_model_too_big_is_passed_over_and_named_in_the_reason() -> None:
    choice = choose_model(laptop(3), CATALOG, installed={"tiny", "small", "mid"})
    assert choice.entry is SMALL
    assert (
        "passed over: mid does not fit: needs 4.3 GiB of RAM with headroom, 3.0 GiB available"
        in choice.reason
    )


def test_uninstalled_models_are_never_chosen() -> None:
    assert choose_model(laptop(64), CATALOG, installed={"tiny"}).entry is TINY


def test_a_chat_model_beats_a_bigger_completion_only_model() -> None:
    assert choose_model(laptop(8), CATALOG, installed={"tiny", "base"}).entry is TINY
    assert choose_model(laptop(8), CATALOG, installed={"base"}).entry is BASE


def test_nothing_fits_says_why_for_each() -> None:
    with pytest.raises(
        ModelError, match=r"no installed model fits this machine: mid does not fit: .*; small does"
    ):
        choose_model(laptop(0.5), CATALOG, installed={"small", "mid"})
    with pytest.raises(ModelError, match=r"no catalogue model is installed"):
        choose_model(laptop(8), CATALOG, installed=set())


def test_gpu_model_needs_gpu_and_vllm_and_memory() -> None:
    h100 = Gpu("NVIDIA H100 80GB HBM3", 80 * GiB, 79 * GiB)
    assert not fit(GPU_MODEL, laptop(64)).fits
    assert fit(GPU_MODEL, laptop(64)).reason == "needs an NVIDIA GPU (vllm backend); none detected"
    assert fit(GPU_MODEL, laptop(64, gpus=(h100,))).reason == "needs vllm: pip install 'hotspare[gpu]'"
    verdict = fit(GPU_MODEL, laptop(64, gpus=(h100,), has_vllm=True))
    assert verdict.fits
    assert verdict.reason == "fits: needs 11.0 GiB of GPU memory, NVIDIA H100 80GB HBM3 offers 72.0 GiB"
    busy = Gpu("T4", 16 * GiB, 4 * GiB)
    assert not fit(GPU_MODEL, laptop(64, gpus=(busy,), has_vllm=True)).fits


def test_gpu_machine_prefers_the_vllm_model() -> None:
    machine = laptop(64, gpus=(Gpu("L4", 24 * GiB, 23 * GiB),), has_vllm=True)
    assert choose_model(machine, CATALOG, installed={"mid", "gpu"}).entry is GPU_MODEL
    no_vllm = laptop(64, gpus=(Gpu("L4", 24 * GiB, 23 * GiB),))
    choice = choose_model(no_vllm, CATALOG, installed={"mid", "gpu"})
    assert choice.entry is MID
    assert "gpu needs vllm" in choice.reason


def test_refusing_before_loading_and_checking_disk() -> None:
    with pytest.raises(
        ModelError, match=r"model .mid. does not fit: needs 4.3 GiB of RAM .*\(see `hotspare doctor`\)"
    ):
        check_fits(MID, laptop(2))
    check_fits(MID, laptop(8))
    with pytest.raises(ModelError, match=r"model 'mid' needs 1.6 GiB of disk, 1.0 GiB free"):
        check_disk(MID, laptop(8, disk_free_bytes=GiB))


def test_serve_without_a_name_chooses_and_with_a_name_refuses_what_does_not_fit() -> None:
    catalog, installed = Catalog(CATALOG), {"tiny", "small", "mid"}
    assert choose_for_serve(laptop(3), catalog, installed, None).entry is SMALL
    named = choose_for_serve(laptop(3), catalog, set(), "tiny")
    assert named.entry is TINY
    assert named.reason == (
        "named in the configuration; it fits: needs 1.1 GiB of RAM with headroom, 3.0 GiB available"
    )
    with pytest.raises(ModelError, match=r"^model 'mid' does not fit: needs 4.3 GiB of RAM .* 3.0 GiB"):
        choose_for_serve(laptop(3), catalog, installed, "mid")
    forced = choose_for_serve(laptop(3), catalog, installed, "mid", check_fit=False)
    assert forced.entry is MID
    assert "the fit check is off" in forced.reason
    with pytest.raises(NotFound, match=r"no model named 'huge' in the catalogue"):
        choose_for_serve(laptop(3), catalog, installed, "huge")
    with pytest.raises(ModelError, match=r"no installed model fits this machine"):
        choose_for_serve(laptop(0.5), catalog, installed, None)


def test_parse_nvidia_smi_csv() -> None:
    out = "NVIDIA H100 80GB HBM3, 81559, 81000\nTesla T4, 15360, 100\n"
    assert parse_nvidia_smi(out) == (
        Gpu("NVIDIA H100 80GB HBM3", 81559 * 2**20, 81000 * 2**20),
        Gpu("Tesla T4", 15360 * 2**20, 100 * 2**20),
    )


def test_detect_gpus_runs_nvidia_smi_from_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA L4, 23034, 22000'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert detect_gpus() == ((Gpu("NVIDIA L4", 23034 * 2**20, 22000 * 2**20),), "nvidia-smi")


def test_detect_gpus_falls_back_to_proc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    info = tmp_path / "nvidia" / "gpus" / "0000:01:00.0" / "information"
    info.parent.mkdir(parents=True)
    info.write_text("Model: \t\t NVIDIA A10G\nIRQ: 10\n")
    gpus, note = detect_gpus(tmp_path / "nvidia")
    assert gpus == (Gpu("NVIDIA A10G", 0),)
    assert "memory unknown" in note
    assert detect_gpus(tmp_path / "absent") == ((), "no NVIDIA GPU (no nvidia-smi, no /proc/driver/nvidia)")


def test_detect_machine_measures_this_machine(tmp_path: Path) -> None:
    machine = detect_machine(tmp_path / "not" / "yet" / "created")
    assert machine.num_threads == psutil.cpu_count()
    assert 1 <= machine.num_cores <= machine.num_threads
    assert machine.ram_total_bytes == psutil.virtual_memory().total
    assert 0 < machine.ram_available_bytes <= machine.ram_total_bytes
    assert machine.disk_free_bytes > 0
