"""Which attention kernels the engine uses on this host: llama.cpp's flash attention on or off.

Neither is faster everywhere, so neither is hard-coded. llama.cpp's CPU flash-attention kernel
handles a batch of fewer than 64 query rows one row at a time; the other path is a matrix product
over every cell up to the highest used one, masked or not. Measured on two machines (docs/engine.md):
- on the 2-core dev VM (raw llama.cpp, 2 threads), flash attention off decoded 1 token after a cached
  2k context in 21 ms against 36, and 19 tokens in 82 ms against 464; with 4k idle cells of another
  conversation in the cache as well, 34 vs 62 ms and 170 vs 501 ms;
- on the machine an earlier session measured, one stream decoding after the agent workload (idle
  conversations cached) ran at 19.5 tokens/s with it off and 62.8 with it on.
And the batched step with idle conversations cached is where skipping masked cells pays most.

So the engine times the workloads that matter on the host it runs on (engine/calibrate.py) and
`choose` picks: the mode that is faster over the workloads together (geometric mean of the ratios,
each workload counting once), except that the mode chosen never makes the 8-stream step with idle
cells more than `MAX_BATCH_LOSS` slower than the other (the batched throughput with idle
conversations cached must not fall below what either kernel gives). A tie keeps flash attention on,
the engine's earlier fixed choice.

The result is cached in `$HOTSPARE_HOME/calibration/`, one file per `CalibrationKey` (CPU model and
flags, llama-cpp-python version, weights' sha256, thread count, workload version), so only the first
start on a host pays for the calibration. A file that does not match its key, or does not parse, is
ignored and replaced. Nothing here imports llama.cpp or touches a clock: pure logic and small files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

CALIBRATION_DIR_NAME = "calibration"
"""The cached results' folder under $HOTSPARE_HOME."""

WORKLOAD_VERSION = 1
"""Part of the cache key: bump it when the workloads change, so old results are measured again."""

DECODE_1 = "decode_1"
DECODE_19 = "decode_19"
DECODE_1_IDLE = "decode_1_idle"
DECODE_19_IDLE = "decode_19_idle"
BATCH_8_IDLE = "batch_8_idle"
WORKLOADS = (DECODE_1, DECODE_19, DECODE_1_IDLE, DECODE_19_IDLE, BATCH_8_IDLE)
"""What the calibration times (engine/calibrate.py): 1 and 19 new tokens after a cached 2k context,
the same with 4k idle cells of another sequence in the cache, and one decode step of 8 streams with
those idle cells cached."""

MAX_BATCH_LOSS = 1.05
"""The chosen mode's 8-stream step with idle cells may be at most this much slower than the other's:
within the runs' noise, never a real loss of batched throughput."""


class FlashAttention(StrEnum):
    """The `[local] flash_attention` setting."""

    AUTO = "auto"  # calibrate on this host (once, cached) and pick the faster
    ON = "on"
    OFF = "off"


@dataclass(frozen=True, slots=True)
class Measurement:
    """One workload's time in milliseconds with flash attention on and off."""

    workload: str
    on_ms: float
    off_ms: float


@dataclass(frozen=True, slots=True)
class AttentionChoice:
    """The mode the engine runs with and why: `source` is "setting", "calibrated" (measured at this
    start) or "cached" (measured at an earlier start on this host). `measurements` is empty for
    "setting"; `calibration_s` is what measuring took."""

    flash_attention: bool
    source: str
    measurements: tuple[Measurement, ...] = ()
    calibration_s: float = 0.0

    def describe(self) -> str:
        """One line for the engine-ready log: the mode, why, and each workload's on / off times."""
        mode = f"flash attention {'on' if self.flash_attention else 'off'}"
        if not self.measurements:
            return f"{mode} ({self.source})"
        times = ", ".join(f"{m.workload} {m.on_ms:.0f}/{m.off_ms:.0f} ms" for m in self.measurements)
        return f"{mode} ({self.source}; on/off: {times})"

    def as_status(self) -> dict[str, Any]:
        """What /status reports."""
        return {
            "flash_attention": "on" if self.flash_attention else "off",
            "source": self.source,
            "calibration_s": round(self.calibration_s, 2),
            "on_ms": {m.workload: round(m.on_ms, 1) for m in self.measurements},
            "off_ms": {m.workload: round(m.off_ms, 1) for m in self.measurements},
        }


def choose(measurements: Sequence[Measurement]) -> bool:
    """Flash attention on (True) or off, from the workloads' times (see the module docstring).
    Raises ValueError if BATCH_8_IDLE is missing or a time is not positive."""
    if any(not (m.on_ms > 0 and m.off_ms > 0) for m in measurements):
        raise ValueError("every time must be positive")
    batch = next((m for m in measurements if m.workload == BATCH_8_IDLE), None)
    if batch is None:
        raise ValueError(f"the calibration must time {BATCH_8_IDLE}")
    if batch.off_ms > batch.on_ms * MAX_BATCH_LOSS:
        return True
    if batch.on_ms > batch.off_ms * MAX_BATCH_LOSS:
        return False
    log_ratio = sum(math.log(m.off_ms / m.on_ms) for m in measurements) / len(measurements)
    return log_ratio >= 0


# ----- the cache of results -----


@dataclass(frozen=True, slots=True)
class CalibrationKey:
    """What a calibration's result depends on. `cpu` is the CPU's model name; `cpu_flags_sha256`
    hashes its feature flags (which kernels llama.cpp can use)."""

    cpu: str
    cpu_flags_sha256: str
    llama_cpp: str
    weights_sha256: str
    num_threads: int
    workload_version: int = WORKLOAD_VERSION

    def file_name(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return f"attention-{hashlib.sha256(blob).hexdigest()[:16]}.json"


def host_cpu(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, str]:
    """This CPU's model name and the sha256 of its feature flags (Linux's /proc/cpuinfo; elsewhere the
    platform's processor string and machine type)."""
    try:
        text = cpuinfo.read_text("utf-8", "replace")
    except OSError:
        text = ""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        fields.setdefault(name.strip().lower(), value.strip())
    model = fields.get("model name") or platform.processor() or platform.machine() or "unknown"
    flags = fields.get("flags") or fields.get("features") or platform.machine()
    return model, hashlib.sha256(" ".join(sorted(flags.split())).encode()).hexdigest()


def load_cached(directory: Path, key: CalibrationKey) -> AttentionChoice | None:
    """The result saved for `key`, as a "cached" choice; None when there is none or it does not match
    or parse."""
    try:
        record = json.loads((directory / key.file_name()).read_text("utf-8"))
        if record["key"] != asdict(key):
            return None
        measurements = tuple(
            Measurement(str(m["workload"]), float(m["on_ms"]), float(m["off_ms"]))
            for m in record["measurements"]
        )
        if {m.workload for m in measurements} != set(WORKLOADS):
            return None
        return AttentionChoice(choose(measurements), "cached", measurements, float(record["calibration_s"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_cached(directory: Path, key: CalibrationKey, choice: AttentionChoice) -> None:
    """Write `choice`'s measurements for `key` (temp file + rename). Raises OSError."""
    directory.mkdir(parents=True, exist_ok=True)
    record = {
        "key": asdict(key),
        "flash_attention": choice.flash_attention,
        "calibration_s": round(choice.calibration_s, 3),
        "measurements": [asdict(m) for m in choice.measurements],
    }
    target = directory / key.file_name()
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    try:
        partial.write_text(json.dumps(record, indent=1) + "\n", "utf-8")
        os.replace(partial, target)
    finally:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
