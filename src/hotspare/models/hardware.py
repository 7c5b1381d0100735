"""What this machine can run, and which model `serve` picks when none is named.

`detect_machine()` measures the machine (psutil for cores, RAM and disk; `nvidia-smi`, else
/proc/driver/nvidia, for GPUs, so torch is not needed). The decision functions are pure: they take a
`MachineProfile` and catalogue entries and touch nothing, so they are tested with made-up machines.

Headroom rules (memory_bytes already counts weights, a full-context KV cache and runtime buffers):
  llama_cpp  memory_bytes * (1 + RAM_MARGIN) + RAM_RESERVE_BYTES <= available RAM
  vllm       a GPU, vllm installed, and memory_bytes * (1 + GPU_MARGIN) <= the GPU's budget,
             where the budget is GPU_MEMORY_UTILIZATION of its total memory (what vLLM will claim),
             and no more than is free now when that is known.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

from hotspare.core.errors import ModelError
from hotspare.home import hotspare_home
from hotspare.models.catalog import Catalog
from hotspare.models.entry import ModelEntry
from hotspare.models.locate import is_installed

RAM_MARGIN = 0.2
RAM_RESERVE_BYTES = 512 * 2**20  # the OS, the hotspare process itself, and the page cache it needs
GPU_MARGIN = 0.1
GPU_MEMORY_UTILIZATION = 0.9


@dataclass(frozen=True, slots=True)
class Gpu:
    name: str
    memory_total_bytes: int
    memory_free_bytes: int | None = None  # None: not known (no nvidia-smi)


@dataclass(frozen=True, slots=True)
class MachineProfile:
    num_cores: int  # physical
    num_threads: int  # logical
    ram_total_bytes: int
    ram_available_bytes: int
    disk_free_bytes: int  # where models are stored
    gpus: tuple[Gpu, ...] = ()
    has_vllm: bool = False
    gpu_note: str = ""  # how GPUs were (not) detected, for `doctor`


@dataclass(frozen=True, slots=True)
class Fit:
    """Whether `entry` fits the machine, with the numbers that decided it."""

    entry: ModelEntry
    fits: bool
    reason: str


@dataclass(frozen=True, slots=True)
class Choice:
    entry: ModelEntry
    reason: str


def gib(num_bytes: float) -> str:
    return f"{num_bytes / 2**30:.1f} GiB"


def ram_needed_bytes(entry: ModelEntry) -> int:
    return int(entry.memory_bytes * (1 + RAM_MARGIN)) + RAM_RESERVE_BYTES


def gpu_budget_bytes(gpu: Gpu) -> int:
    budget = int(gpu.memory_total_bytes * GPU_MEMORY_UTILIZATION)
    return min(budget, gpu.memory_free_bytes) if gpu.memory_free_bytes is not None else budget


def fit(entry: ModelEntry, machine: MachineProfile) -> Fit:
    """Does `entry` fit `machine` with headroom? Pure."""
    if entry.backend == "llama_cpp":
        need, have = ram_needed_bytes(entry), machine.ram_available_bytes
        verdict = "fits" if need <= have else "does not fit"
        return Fit(
            entry, need <= have, f"{verdict}: needs {gib(need)} of RAM with headroom, {gib(have)} available"
        )
    if not machine.gpus:
        return Fit(entry, False, "needs an NVIDIA GPU (vllm backend); none detected")
    if not machine.has_vllm:
        return Fit(entry, False, "needs vllm: pip install 'hotspare[gpu]'")
    need = int(entry.memory_bytes * (1 + GPU_MARGIN))
    best = max(machine.gpus, key=gpu_budget_bytes)
    have = gpu_budget_bytes(best)
    verdict = "fits" if need <= have else "does not fit"
    return Fit(
        entry, need <= have, f"{verdict}: needs {gib(need)} of GPU memory, {best.name} offers {gib(have)}"
    )


def check_fits(entry: ModelEntry, machine: MachineProfile) -> None:
    """Raise ModelError before loading a model that would not fit."""
    verdict = fit(entry, machine)
    if not verdict.fits:
        raise ModelError(
            f"model {entry.name!r} {verdict.reason}; choose a smaller model (see `hotspare doctor`)"
        )


def check_disk(entry: ModelEntry, machine: MachineProfile) -> None:
    """Raise ModelError when the weights cannot be stored on this disk (an entry without a known
    size is bounded by its memory_bytes, which includes the weights)."""
    need = entry.size_bytes if entry.size_bytes is not None else entry.memory_bytes
    if need > machine.disk_free_bytes:
        raise ModelError(
            f"model {entry.name!r} needs {gib(need)} of disk, {gib(machine.disk_free_bytes)} free"
        )


def _preference(entry: ModelEntry) -> tuple[bool, bool, float]:
    # A GPU model beats a CPU one, a chat model beats a completion-only one, then bigger is better.
    return (entry.backend == "vllm", not entry.completion_only, entry.params_count)


def choose_model(
    machine: MachineProfile, entries: Iterable[ModelEntry], installed: Collection[str]
) -> Choice:
    """The best installed entry that fits, and why. Pure. Raises ModelError when none does,
    saying for each installed model why not."""
    candidates = sorted((e for e in entries if e.name in installed), key=_preference, reverse=True)
    if not candidates:
        raise ModelError(
            "no catalogue model is installed; run `hotspare models pull NAME` or import a bundle"
        )
    verdicts = [fit(e, machine) for e in candidates]
    chosen = next((v for v in verdicts if v.fits), None)
    if chosen is None:
        why = "; ".join(f"{v.entry.name} {v.reason}" for v in verdicts)
        raise ModelError(f"no installed model fits this machine: {why}")
    passed = verdicts[: verdicts.index(chosen)]
    reason = f"the most capable installed model that fits; it {chosen.reason}"
    if passed:
        reason += " (passed over: " + "; ".join(f"{v.entry.name} {v.reason}" for v in passed) + ")"
    return Choice(chosen.entry, reason)


def choose_for_serve(
    machine: MachineProfile,
    catalog: Catalog,
    installed: Collection[str],
    requested: str | None,
    *,
    check_fit: bool = True,
) -> Choice:
    """The model `hotspare serve` runs. Pure. A named model (`requested`) is that entry, refused if it
    would not fit unless `check_fit` is False; with none named, the best installed model that fits
    (`choose_model`). Raises NotFound for an unknown name, ModelError when nothing can be served."""
    if requested is None:
        return choose_model(machine, catalog.entries, installed)
    entry = catalog.get(requested)
    if not check_fit:
        return Choice(entry, "named in the configuration; the fit check is off ([local] check_fit)")
    check_fits(entry, machine)
    return Choice(entry, f"named in the configuration; it {fit(entry, machine).reason}")


def serving_choice(catalog: Catalog, requested: str | None, *, check_fit: bool = True) -> Choice:
    """`choose_for_serve` on this machine and the models installed on it."""
    machine = detect_machine(hotspare_home())
    installed = {e.name for e in catalog.entries if is_installed(e)} if requested is None else set()
    return choose_for_serve(machine, catalog, installed, requested, check_fit=check_fit)


def detect_machine(disk_path: Path) -> MachineProfile:
    """Measure this machine; `disk_path` is where models are stored (it or its nearest parent)."""
    import psutil

    mem = psutil.virtual_memory()
    gpus, note = detect_gpus()
    probe = disk_path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return MachineProfile(
        num_cores=psutil.cpu_count(logical=False) or psutil.cpu_count() or 1,
        num_threads=psutil.cpu_count() or 1,
        ram_total_bytes=mem.total,
        ram_available_bytes=mem.available,
        disk_free_bytes=shutil.disk_usage(probe).free,
        gpus=gpus,
        has_vllm=importlib.util.find_spec("vllm") is not None,
        gpu_note=note,
    )


def detect_gpus(proc_root: Path = Path("/proc/driver/nvidia")) -> tuple[tuple[Gpu, ...], str]:
    """NVIDIA GPUs and how they were found, without torch: nvidia-smi (names, total and free memory),
    else the driver's /proc entries (names only; memory unknown, reported as 0)."""
    smi = shutil.which("nvidia-smi")
    if smi is not None:
        try:
            out = subprocess.run(
                [smi, "--query-gpu=name,memory.total,memory.free", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout
            return parse_nvidia_smi(out), "nvidia-smi"
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            return (), f"nvidia-smi failed: {exc}"
    gpu_dirs = sorted((proc_root / "gpus").glob("*")) if (proc_root / "gpus").is_dir() else []
    if gpu_dirs:
        gpus = tuple(Gpu(name=_proc_gpu_name(d / "information"), memory_total_bytes=0) for d in gpu_dirs)
        return gpus, f"{proc_root} (memory unknown without nvidia-smi)"
    return (), "no NVIDIA GPU (no nvidia-smi, no /proc/driver/nvidia)"


def parse_nvidia_smi(csv_text: str) -> tuple[Gpu, ...]:
    """Parse `nvidia-smi --query-gpu=name,memory.total,memory.free --format=csv,noheader,nounits` (MiB)."""
    gpus = []
    for line in csv_text.strip().splitlines():
        name, total_mib, free_mib = (part.strip() for part in line.rsplit(",", 2))
        gpus.append(
            Gpu(name=name, memory_total_bytes=int(total_mib) * 2**20, memory_free_bytes=int(free_mib) * 2**20)
        )
    return tuple(gpus)


def _proc_gpu_name(information: Path) -> str:
    try:
        for line in information.read_text().splitlines():
            if line.startswith("Model:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "NVIDIA GPU"
