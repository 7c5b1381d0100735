"""What the local backends' supervisors decide when their process dies: pure logic, no clock of its own.

Both local backends (the llama.cpp engine process and a vLLM server) restart a process that died.
Restarting blindly is wrong when the death repeats: a build that crashes on this CPU, or a request
that crashes the engine whenever it runs, would crash-loop for as long as requests come, with every
client told "restarting". So:

`CrashPolicy`: `max_deaths` deaths within `window_s` put the backend in state *failed*, with the cause
(the signal, "llama.cpp crashed in native code", what to run). Restarts go on, but backed off from
`failed_backoff_s` doubling to `max_backoff_s`, so a transient cause heals; a restart that comes up
clears *failed* (its warm-up ran the real kernels), while its deaths stay counted in the window, so
one more death fails it again at once.

`Suspects`: after a crash, the requests that were in flight are suspects (by prompt hash). Each is
retried once, alone. A prompt that crashes the engine alone is poison: refused from then on, so one
request cannot take the local model away from everyone. Both sets are bounded (oldest dropped).
"""

from __future__ import annotations

import logging
import signal
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Death:
    """One death of a backend process: when (monotonic s) and why, in words."""

    at: float
    cause: str


def death_cause(
    exitcode: int | None, *, during: str, hung_s: float | None = None, engine: str = "llama.cpp"
) -> str:
    """Words for how a process ended: `exitcode` as multiprocessing/asyncio report it (negative:
    killed by that signal), `during` what it was doing ("start-up", "serving"), `hung_s` set when
    the supervisor killed it for silence."""
    if hung_s is not None:
        return f"the engine hung (no sign of life for {hung_s:.0f} s with work in flight) during {during}"
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        native = f" ({engine} crashed in native code)" if name in _NATIVE_CRASHES else ""
        return f"killed by {name}{native} during {during}"
    return f"exited with code {exitcode} during {during}"


_NATIVE_CRASHES = frozenset({"SIGSEGV", "SIGILL", "SIGBUS", "SIGFPE", "SIGABRT"})

DOCTOR_HINT = (
    "run `hotspare doctor` to test the llama.cpp build on this CPU; `scripts/install` rebuilds it "
    "without the instruction sets that crash"
)


class CrashPolicy:
    """See the module docstring. Feed it each death and each successful start; ask it how long to
    wait before the next restart and whether the backend is failed."""

    def __init__(
        self,
        *,
        max_deaths: int = 3,
        window_s: float = 60.0,
        first_backoff_s: float = 0.5,
        failed_backoff_s: float = 30.0,
        max_backoff_s: float = 600.0,
        hint: str = DOCTOR_HINT,
    ) -> None:
        self.hint = hint
        self.max_deaths = max_deaths
        self.window_s = window_s
        self.first_backoff_s = first_backoff_s
        self.failed_backoff_s = failed_backoff_s
        self.max_backoff_s = max_backoff_s
        self._deaths: deque[Death] = deque()
        self._num_failed_restarts = 0  # restarts tried while failed, since the last good start
        self.num_deaths = 0  # all deaths since the backend was made (its restarts)
        self.failure: str | None = None  # the cause while failed, else None
        self.last_death: Death | None = None

    def on_death(self, death: Death) -> float:
        """Record `death`; return the seconds to wait before restarting."""
        self.last_death = death
        self.num_deaths += 1
        self._deaths.append(death)
        while self._deaths and death.at - self._deaths[0].at > self.window_s:
            self._deaths.popleft()
        recent = len(self._deaths)
        if recent >= self.max_deaths:
            self.failure = (
                f"the local engine died {recent} times within {self.window_s:.0f} s; last: {death.cause}. "
                f"Restarts are backed off. {self.hint}"
            )
            delay = self.failed_backoff_s * 2.0**self._num_failed_restarts
            self._num_failed_restarts += 1
            return min(delay, self.max_backoff_s)
        return min(self.first_backoff_s * 2.0 ** (recent - 1), self.max_backoff_s)

    def record(self, cause: str, logger: logging.Logger, *, name: str, process: str) -> float:
        """`on_death` now, logged as both backends log it: "<process> <cause>; restarting (restart
        #n)", or "<name> failed: <failure> (next restart in N s)" once failed. The wait, in seconds."""
        delay = self.on_death(Death(time.monotonic(), cause))
        if self.failure is not None:
            logger.error("%s failed: %s (next restart in %.0f s)", name, self.failure, delay)
        else:
            logger.error("%s %s; restarting (restart #%d)", process, cause, self.num_deaths)
        return delay

    def on_started(self) -> None:
        """A (re)start came up and passed its warm-up."""
        self.failure = None
        self._num_failed_restarts = 0

    @property
    def num_recent_deaths(self) -> int:
        return len(self._deaths)


class Suspects:
    """Prompt hashes under suspicion after a crash, and the poison ones. See the module docstring."""

    def __init__(self, max_entries: int = 1024) -> None:
        self.max_entries = max_entries
        self._suspects: OrderedDict[str, None] = OrderedDict()
        self._poison: OrderedDict[str, str] = OrderedDict()

    def is_poison(self, prompt_hash: str) -> str | None:
        """The cause recorded when `prompt_hash` crashed the engine alone, else None."""
        return self._poison.get(prompt_hash)

    def is_suspect(self, prompt_hash: str) -> bool:
        """True when the prompt was in flight at a crash: it must run alone."""
        return prompt_hash in self._suspects

    def on_crash(self, prompt_hash: str, *, was_alone: bool, cause: str) -> None:
        """The engine died while this prompt ran (alone or beside others)."""
        if was_alone:
            self._suspects.pop(prompt_hash, None)
            _put(self._poison, prompt_hash, cause, self.max_entries)
        else:
            _put(self._suspects, prompt_hash, None, self.max_entries)

    def on_success(self, prompt_hash: str) -> None:
        """The prompt ran to its end: no longer a suspect."""
        self._suspects.pop(prompt_hash, None)

    @property
    def num_poison(self) -> int:
        return len(self._poison)


def _put(table: OrderedDict[str, Any], key: str, value: Any, cap: int) -> None:
    table[key] = value
    table.move_to_end(key)
    while len(table) > cap:
        table.popitem(last=False)
