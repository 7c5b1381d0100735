"""The restart loop both local backends run around their process (the llama.cpp engine process,
engine/local.py, and vLLM, engine/vllm.py): watch it until it dies, record the death, wait the
backoff, start it again. What to decide at each death (backoff, *failed*) is `CrashPolicy`'s
(engine/supervision.py); how to watch and start a process is the backend's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from hotspare.core.errors import EngineDied, ModelError
from hotspare.engine.supervision import CrashPolicy

Spawn = Callable[[], Awaitable[None]]
"""Starts the process; returns once it serves. Raises EngineDied (killed while starting) or ModelError."""

Watch = Callable[[], Awaitable[str]]
"""Waits until the running process is gone (dead, or killed as hung); returns the cause, in words."""


class Supervisor:
    """See the module docstring. Logs each death as "<process> <cause>; restarting (restart #n)",
    or "<name> failed: ..." once the policy says failed."""

    def __init__(self, policy: CrashPolicy, logger: logging.Logger, *, name: str, process: str) -> None:
        self.policy = policy
        self._log = logger
        self._name = name
        self._process = process

    def on_death(self, cause: str) -> float:
        """Record a death; the seconds to wait before the next restart."""
        return self.policy.record(cause, self._log, name=self._name, process=self._process)

    async def restart(self, spawn: Spawn) -> float | None:
        """One restart attempt: None when the process serves, else the wait before the next one."""
        try:
            await spawn()
        except EngineDied as exc:
            return self.on_death(exc.cause)
        except ModelError as exc:
            return self.on_death(f"could not restart: {exc.message}")
        self.policy.on_started()
        return None

    async def run(
        self, spawn: Spawn, watch: Watch, delay: float | None, is_stopping: Callable[[], bool]
    ) -> None:
        """Supervise until cancelled or `is_stopping()`. `delay` is set when the process is down now
        (the wait before the next restart), None when it serves."""
        while not is_stopping():
            if delay is None:
                delay = self.on_death(await watch())
            await asyncio.sleep(delay)
            if not is_stopping():
                delay = await self.restart(spawn)
