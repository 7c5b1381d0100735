"""How many CPU threads llama.cpp uses: all it may while the machine is otherwise idle, fewer while other
processes compete for the cores.

llama.cpp splits every operation of a forward pass across its threads and makes them meet at a
spinning barrier after each one, hundreds of times per decode. When another process holds a core,
the thread that lost it is descheduled and its partners spin at the next barrier until the scheduler
gives it back. Measured on this project's 2-core machine while other test runs kept it busy (load ~5):
an 8-sequence decode step took 878 ms with 2 threads and 143 ms with 1; a 50-token prefill after a
2.5k-token prefix 3.0 s against 1.4 s. On an idle machine 2 threads are the faster choice.

`ThreadGovernor` watches, over short windows, how much CPU the rest of the machine uses (all non-idle
CPU time minus this process's own) and picks the thread count that leaves those cores alone: it drops
threads after 1 s of load (contention is expensive) and adds them back after 1.5 s of quiet
(hysteresis, so a brief burst neither makes it flap nor costs more than that).

Why a second of load and not one busy window: every request starts with a burst in the API process
(parsing, rendering the prompt) and in its client, and 8 streams starting at once read as 0.6-0.9 of
another core for one 0.5 s window. Dropping a thread on that kept llama.cpp on one thread for the
next ~1.7 s, a third of the burst: measured on the 2-core AMD host (scripts/bench_paired.py, 8
streams beside an idle 6k conversation, 9 rounds taking turns with llama-server), hotspare's rounds
split into 141-164 tokens/s (a thread given up at the start) and 187-215 (not). For the same reason a
window in which the engine sat idle never gives a thread up: it spans the whole idle spell, and what
others did then (there, llama-server's burst between two of hotspare's) neither slowed the engine
nor says they are still at it. Such a window does count as quiet: taking a thread back is the cheap
mistake.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import psutil


@dataclass(frozen=True, slots=True)
class CpuSample:
    """CPU seconds used so far: by the whole machine (non-idle, all cores) and by this process."""

    at_s: float
    machine_busy_s: float
    own_s: float


def sample_cpu() -> CpuSample:
    times = psutil.cpu_times()
    idle = times.idle + getattr(times, "iowait", 0.0)
    busy = sum(times) - idle
    return CpuSample(time.monotonic(), busy, time.process_time())


@dataclass(frozen=True, slots=True)
class GovernorConfig:
    """max_threads: the most threads llama.cpp gets (its thread count at start).
    num_cpus: the cores the machine schedules on (logical CPUs: what psutil's times cover).
    window_s: how often the load is measured.
    drop_above: the share of a core others may take before a thread is given up for it.
    raise_below: others must use less than this share of the freed core before a thread comes back...
    quiet_s: ...for this long without a break (time, not a count of windows: the engine samples between
        decode steps, and one long prefill step makes a window seconds long).
    busy_s: others must use more than drop_above for this long without a break before a thread is
        given up (a request's own start-up burst is shorter).
    """

    max_threads: int
    num_cpus: int
    window_s: float = 0.5
    drop_above: float = 0.5
    raise_below: float = 0.3
    quiet_s: float = 1.5
    busy_s: float = 1.0


class ThreadGovernor:
    """Pure decision logic: feed it samples, it says when the thread count should change."""

    def __init__(self, config: GovernorConfig, first: CpuSample) -> None:
        self.config = config
        self.threads = config.max_threads
        self.others_cores = 0.0  # the last window's CPU use by other processes, in cores
        self.num_changes = 0
        self._last = first
        self._quiet_s = 0.0
        self._busy_s = 0.0

    def is_due(self, now_s: float) -> bool:
        """Whether a window has passed since the last sample (`observe` ignores earlier ones)."""
        return now_s - self._last.at_s >= self.config.window_s

    def observe(self, sample: CpuSample, *, was_idle: bool = False) -> int | None:
        """Account one sample; returns the new thread count when it changes, else None. `was_idle`:
        the engine ran nothing for most of the window (its load then is not counted against it)."""
        if not self.is_due(sample.at_s):
            return None
        span = sample.at_s - self._last.at_s
        others = (sample.machine_busy_s - self._last.machine_busy_s) - (sample.own_s - self._last.own_s)
        self._last = sample
        self.others_cores = max(0.0, others / span)
        cfg = self.config
        # The cores left to us, with the others' load rounded up past drop_above (to give threads up)
        # and past raise_below (to take them back).
        upper = math.floor(cfg.num_cpus - self.others_cores + cfg.drop_above)
        lower = math.floor(cfg.num_cpus - self.others_cores + cfg.raise_below)
        wanted = self.threads
        if upper < self.threads and was_idle:
            self._busy_s = 0.0
            self._quiet_s = 0.0
        elif upper < self.threads:
            self._busy_s += span
            self._quiet_s = 0.0
            if self._busy_s >= cfg.busy_s:
                wanted = upper
        elif lower > self.threads:
            self._busy_s = 0.0
            self._quiet_s += span
            if self._quiet_s >= cfg.quiet_s:
                wanted = lower
                self._quiet_s = 0.0
        else:
            self._busy_s = 0.0
            self._quiet_s = 0.0
        wanted = max(1, min(cfg.max_threads, wanted))
        if wanted == self.threads:
            return None
        self.threads = wanted
        self.num_changes += 1
        return wanted
