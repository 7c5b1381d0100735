"""Timing llama.cpp's attention paths on this host, for engine/attention.py's choice.

`measure` opens the weights twice, once per mode (flash attention on and off), and times
attention.WORKLOADS in both, taking turns so both see the same background load. On the embedded
SmolLM2-135M on the 2-core dev VM it makes the first start about 3.7 s longer (ready in 4.5 s
instead of 0.8, median of 3, load 1.3; 5.9-7.2 s for `measure` alone at load 3-4;
docs/benchmarks.md), paid once per host (the result is cached); most of it is flash attention's
19-token decodes, about 0.5 s each.

What keeps it short: a workload's speed depends on how many cells the cache holds and where, not on
what they hold. So each context computes one 256-token piece, saves it (`save_state`) and lays copies
of it side by side (`restore_state` into a scratch slot, `shift` to the next positions, shared into
the target slot): a 2k context and 4k idle cells cost one 256-token prefill and a few memory copies
instead of a 6k-token prefill (about 9 s here) per mode. The copies' keys are re-rotated for their new
positions at the next decode, as llama.cpp does for any shift.

Each workload's time is the fastest of its runs (other processes only ever add time). A workload is
run once in each mode, and again (at most `MAX_ROUNDS` times) while the two modes are within
`SETTLED_RATIO` of each other and `budget_s` is not spent.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

from hotspare.core.errors import ModelError
from hotspare.engine.attention import (
    BATCH_8_IDLE,
    DECODE_1,
    DECODE_1_IDLE,
    DECODE_19,
    DECODE_19_IDLE,
    AttentionChoice,
    CalibrationKey,
    FlashAttention,
    Measurement,
    choose,
    host_cpu,
    load_cached,
    save_cached,
)
from hotspare.engine.backends.llama_cpp import LLAMA_CPP_VERSION, LlamaCppModel, resolve_threads
from hotspare.engine.build import read_marker
from hotspare.engine.config import EngineConfig
from hotspare.engine.model import DecodeItem
from hotspare.engine.threads import CpuSample
from hotspare.models.integrity import HashCache

log = logging.getLogger(__name__)

PIECE_TOKENS = 256
CONTEXT_TOKENS = 2048
IDLE_TOKENS = 4096
NUM_STREAMS = 8
SHORT_PREFILL_TOKENS = 19
SETTLED_RATIO = 1.5
MAX_ROUNDS = 3
BUDGET_S = 6.0
"""Past this, a workload is not run again; a first round that is not finished by then is given up."""
MAX_OTHERS_CORES = 0.5
"""Other processes' CPU use (cores, on average) on the cores the engine's threads need, above which the
kernels are not timed (checked before) or the result is not kept (during): timings under load say
more about the load than about the kernels."""
BUSY_CHECK_S = 0.2

_MAIN, _PROBE, _IDLE, _SCRATCH = 0, 1, 2, 3
_STREAMS = tuple(range(4, 4 + NUM_STREAMS))
_KV_TOKENS = CONTEXT_TOKENS + IDLE_TOKENS + NUM_STREAMS * PIECE_TOKENS + 512
_NEW = {DECODE_1: 1, DECODE_19: SHORT_PREFILL_TOKENS, DECODE_1_IDLE: 1, DECODE_19_IDLE: SHORT_PREFILL_TOKENS}


class AttentionBench:
    """One context in one mode, holding a 2k context in slot _MAIN (and after `add_idle`, 4k idle
    cells and 8 streams of one piece each). scripts/bench_raw.py times it with more modes."""

    def __init__(self, path: Path, flash_attention: bool, num_threads: int, kv_type: str = "f16") -> None:
        self.model = LlamaCppModel(
            path,
            kv_cache_tokens=_KV_TOKENS,
            max_slots=4 + NUM_STREAMS,
            batch_tokens=PIECE_TOKENS,
            num_threads=num_threads,
            flash_attention=flash_attention,
            kv_type=kv_type,
        )
        self._rng = random.Random(1)
        try:
            self._fill()
        except BaseException:
            self.model.close()  # the engine loads its own model next: leave it the memory
            raise

    def _fill(self) -> None:
        self.model.decode([DecodeItem(_MAIN, 0, self._tokens(PIECE_TOKENS), True)])
        self._piece, self._piece_bytes = self.model.save_state(_MAIN)
        self._lay(_MAIN, 1, CONTEXT_TOKENS // PIECE_TOKENS)
        self._decode(_PROBE, CONTEXT_TOKENS, 1)  # applies the shifts (not timed)

    def close(self) -> None:
        self.model.close()

    def add_idle(self) -> None:
        self._restore(_IDLE)
        self._lay(_IDLE, 1, IDLE_TOKENS // PIECE_TOKENS)
        for slot in _STREAMS:
            self._restore(slot)

    def time_ms(self, workload: str) -> float:
        if workload == BATCH_8_IDLE:
            items = [DecodeItem(s, PIECE_TOKENS, self._tokens(1), True) for s in _STREAMS]
            elapsed = self._timed(items)
            for slot in _STREAMS:
                self.model.trim(slot, PIECE_TOKENS, -1)
            return elapsed
        return self.time_decode(CONTEXT_TOKENS, _NEW[workload])

    def time_decode(self, start: int, num_tokens: int) -> float:
        """Milliseconds to decode `num_tokens` new tokens after the first `start` cells of the context."""
        return self._decode(_PROBE, start, num_tokens)

    def _decode(self, slot: int, start: int, num_tokens: int) -> float:
        self.model.copy_prefix(_MAIN, slot, start)
        try:
            return self._timed([DecodeItem(slot, start, self._tokens(num_tokens), True)])
        finally:
            self.model.remove(slot)

    def _timed(self, items: list[DecodeItem]) -> float:
        started = time.perf_counter()
        self.model.decode(items)
        return (time.perf_counter() - started) * 1e3

    def _lay(self, slot: int, first: int, end: int) -> None:
        """Copies first...end-1 of the piece into `slot`, each at its own positions."""
        for k in range(first, end):
            self._restore(_SCRATCH)
            self.model.shift(_SCRATCH, k * PIECE_TOKENS)
            self.model.copy_prefix(_SCRATCH, slot, (k + 1) * PIECE_TOKENS)
            self.model.remove(_SCRATCH)

    def _restore(self, slot: int) -> None:
        if self._piece is None or not self.model.restore_state(slot, self._piece, self._piece_bytes):
            raise MemoryError("no KV cache room for the calibration's cells")

    def _tokens(self, n: int) -> list[int]:
        return [self._rng.randrange(100, min(self.model.num_vocab, 30000)) for _ in range(n)]


@dataclass(slots=True)
class _Runs:
    on_ms: list[float]
    off_ms: list[float]

    def is_settled(self) -> bool:
        fast, slow = sorted((min(self.on_ms), min(self.off_ms)))
        return slow >= fast * SETTLED_RATIO


def measure(path: Path, *, num_threads: int, budget_s: float | None = None) -> tuple[Measurement, ...]:
    """Time attention.WORKLOADS with flash attention on and off. Raises ModelError, MemoryError or
    RuntimeError if llama.cpp fails, TimeoutError if `budget_s` passes before each workload ran once
    in each mode (default BUDGET_S)."""
    deadline = time.monotonic() + (BUDGET_S if budget_s is None else budget_s)
    with _bench(path, True, num_threads) as on, _bench(path, False, num_threads) as off:
        runs = {w: _Runs([], []) for w in (DECODE_1, DECODE_19)}
        _run(runs, on, off, deadline)
        on.add_idle()
        off.add_idle()
        idle = {w: _Runs([], []) for w in (DECODE_1_IDLE, DECODE_19_IDLE, BATCH_8_IDLE)}
        _run(idle, on, off, deadline)
    runs.update(idle)
    return tuple(Measurement(w, min(r.on_ms), min(r.off_ms)) for w, r in runs.items())


@contextmanager
def _bench(path: Path, flash_attention: bool, num_threads: int) -> Iterator[AttentionBench]:
    bench = AttentionBench(path, flash_attention, num_threads)
    try:
        yield bench
    finally:
        bench.close()


def _run(runs: dict[str, _Runs], on: AttentionBench, off: AttentionBench, deadline: float) -> None:
    for round_ in range(MAX_ROUNDS):
        for workload, r in runs.items():
            is_late = time.monotonic() > deadline
            if not round_ and is_late:
                raise TimeoutError("the machine is too busy to time the attention kernels")
            if round_ and (r.is_settled() or is_late):
                continue
            r.on_ms.append(on.time_ms(workload))
            r.off_ms.append(off.time_ms(workload))


def resolve(
    setting: FlashAttention,
    path: Path,
    *,
    num_threads: int,
    key: CalibrationKey | None,
    directory: Path | None,
) -> AttentionChoice:
    """The mode to run with: the setting's, else the cached result for `key` in `directory`, else a
    new calibration (saved there when it was measured on a quiet machine). Never raises: a calibration
    that fails leaves flash attention on, with a warning."""
    if setting is not FlashAttention.AUTO:
        return AttentionChoice(setting is FlashAttention.ON, "setting")
    if key is not None and directory is not None and (cached := load_cached(directory, key)) is not None:
        return cached
    max_others = _max_others_cores(num_threads)
    before = _sample_cpu()
    time.sleep(BUSY_CHECK_S)
    if (others := _others_cores(before)) > max_others:
        log.warning("other processes use %.1f cores: flash attention stays on until a quiet start", others)
        return AttentionChoice(True, "default")
    started, before = time.monotonic(), _sample_cpu()
    try:
        measurements = measure(path, num_threads=num_threads)
    except (ModelError, MemoryError, RuntimeError, OSError, ValueError) as exc:
        log.warning("could not time the attention kernels (%s); flash attention stays on", exc)
        return AttentionChoice(True, "default")
    choice = AttentionChoice(choose(measurements), "calibrated", measurements, time.monotonic() - started)
    if (others := _others_cores(before)) > max_others:
        log.warning("timed the attention kernels while other processes used %.1f cores: not kept", others)
    elif key is not None and directory is not None:
        try:
            save_cached(directory, key, choice)
        except OSError as exc:
            log.warning("could not save the attention calibration in %s (%s)", directory, exc)
    return choice


def _max_others_cores(num_threads: int) -> float:
    """Other processes may use the cores the engine's threads leave free, and MAX_OTHERS_CORES more."""
    spare = (psutil.cpu_count() or 1) - resolve_threads(num_threads)
    return max(0, spare) + MAX_OTHERS_CORES


def _sample_cpu() -> CpuSample:
    """CPU time so far, as engine/threads.py counts it but without niced processes' time: those yield
    the cores to the engine's threads, so they barely touch its timings (a niced compiler ran beside
    every calibration on the dev VM)."""
    times = psutil.cpu_times()
    idle = times.idle + getattr(times, "iowait", 0.0) + getattr(times, "nice", 0.0)
    return CpuSample(time.monotonic(), sum(times) - idle, time.process_time())


def _others_cores(before: CpuSample) -> float:
    """Other processes' CPU use since `before`, in cores."""
    after = _sample_cpu()
    span = after.at_s - before.at_s
    others = (after.machine_busy_s - before.machine_busy_s) - (after.own_s - before.own_s)
    return max(0.0, others / span) if span > 0 else 0.0


def choose_attention(config: EngineConfig, weights: Path) -> AttentionChoice:
    """`resolve` for the engine about to load `weights` (the file it loads) with `config`'s setting,
    threads and calibration folder. Never raises."""
    if config.flash_attention is not FlashAttention.AUTO:
        return resolve(config.flash_attention, weights, num_threads=0, key=None, directory=None)
    key = calibration_key(weights, config.num_threads)
    return resolve(
        config.flash_attention,
        weights,
        num_threads=config.num_threads,
        key=key,
        directory=config.calibration_dir,
    )


def calibration_key(weights: Path, num_threads: int) -> CalibrationKey | None:
    """The key of a calibration of `weights` with the thread setting `num_threads` on this host; None
    when the weights cannot be hashed (the result is then not cached)."""
    try:
        weights_sha256 = HashCache().sha256(weights)
    except (OSError, ModelError):
        return None
    cpu, flags = host_cpu()
    build = f"{LLAMA_CPP_VERSION}+{read_marker().get('patch', 'stock')}"  # the kernels are what is timed
    return CalibrationKey(cpu, flags, build, weights_sha256, resolve_threads(num_threads))
