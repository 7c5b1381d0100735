"""One llama.cpp engine child process and the threads that speak to it over its Pipe.

The child runs `engine_main`, which imports the worker (engine/worker.py, and llama_cpp with it)
inside the child only: the API process never loads llama.cpp. Tests swap `engine_main` for a
stand-in (tests/engine/crashing_worker.py).

Commands never touch the pipe on the event loop: `send` queues them for a writer thread. The pipe's
buffer is about 208 KB, so a command bigger than its free space (a long prompt, a warm-up of a whole
conversation, a token count) blocked `Connection.send` until the engine read it; written from the
loop, that stalled every stream, passthrough included, and /health, and forever with a hung engine,
whose watchdog runs on the same loop. The engine drains its end on a thread of its own too
(engine/inbox.py). A reader thread receives each step's events and hands them to the asyncio loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from queue import SimpleQueue
from typing import Any

from hotspare.core.environment import scrubbed_environ
from hotspare.core.errors import EngineDied, ModelError
from hotspare.engine.config import EngineConfig
from hotspare.engine.protocol import EngineCommand, Failed, LoadFailed, Ready
from hotspare.engine.supervision import death_cause


def engine_main(conn: Connection, config: EngineConfig, log_level: int = logging.WARNING) -> None:
    """The engine process's entry: imports the worker here, in the child."""
    from hotspare.engine.worker import worker_main  # llama_cpp with it: in the child only

    worker_main(conn, config, log_level)


class PendingRequests:
    """The requests in flight on the engine process, by request id, each with the queue its events go
    to. Used on the event loop only (the reader thread hands `dispatch` to the loop)."""

    def __init__(self) -> None:
        self._queues: dict[int, asyncio.Queue[Any]] = {}
        self._ids = itertools.count(1)

    def __len__(self) -> int:
        return len(self._queues)

    def new_id(self) -> int:
        """A request id for a command nobody waits on (a warm-up)."""
        return next(self._ids)

    def open(self) -> tuple[int, asyncio.Queue[Any]]:
        """A new request id and the queue its events will arrive in, until `close(id)`."""
        rid = next(self._ids)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self._queues[rid] = queue
        return rid, queue

    def close(self, rid: int) -> None:
        self._queues.pop(rid, None)

    def dispatch(self, events: list[Any]) -> None:
        """Hand one step's events to their requests (a closed request's are dropped)."""
        for event in events:
            queue = self._queues.get(event.request_id)
            if queue is not None:
                queue.put_nowait(event)

    def fail_all(self, kind: str, *args: str) -> None:
        """End every request in flight with the core error `kind` (see `Failed`) made of `args`."""
        for rid, queue in list(self._queues.items()):
            queue.put_nowait(Failed(rid, kind, args))


class EngineProcess:
    """One engine child process, the thread that writes its commands and the one that reads its
    events (`start_reading`)."""

    def __init__(self, config: EngineConfig, load_timeout_s: float) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child_conn = ctx.Pipe()
        self.process: BaseProcess = ctx.Process(
            target=engine_main,
            args=(child_conn, config, logging.getLogger().getEffectiveLevel()),
            name="hotspare-engine",
            daemon=True,
        )
        with scrubbed_environ():  # the engine needs no key: it inherits none (core/environment.py)
            self.process.start()
        child_conn.close()
        self._load_timeout_s = load_timeout_s
        self.last_heard = time.monotonic()
        self.hung_s: float | None = None  # set when the supervisor killed it for silence
        self.sending_since: float | None = None  # when the command being written began (None: idle)
        self._outbox: SimpleQueue[EngineCommand | None] = SimpleQueue()
        threading.Thread(target=self._write, name="hotspare-engine-writer", daemon=True).start()

    def wait_ready(self) -> Ready:
        """Block until the model is loaded and warm. Raises ModelError if it cannot be, EngineDied
        when the process was killed by a signal while starting (a restart may fix that)."""
        if not self.conn.poll(self._load_timeout_s):
            self.kill()
            raise ModelError(f"the engine did not load the model within {self._load_timeout_s:.0f} s")
        try:
            msg = self.conn.recv()
        except EOFError:
            self.process.join(timeout=5)
            code = self.process.exitcode
            if code is None or code >= 0:  # a Python-level failure: no restart would fix it
                raise ModelError(f"the engine process exited while loading (code {code})") from None
            cause = death_cause(code, during="start-up (loading the model, warm-up)")
            raise EngineDied(f"the engine process died while starting: {cause}", cause) from None
        if isinstance(msg, LoadFailed):
            raise ModelError(f"the engine could not load the model: {msg.message}")
        assert isinstance(msg, Ready)
        return msg

    def send(self, cmd: EngineCommand) -> None:
        """Queue `cmd` for the writer thread, in order; never blocks."""
        self._outbox.put(cmd)

    def start_reading(
        self,
        loop: asyncio.AbstractEventLoop,
        on_events: Callable[[list[Any]], None],
        on_exit: Callable[[EngineProcess], None],
    ) -> None:
        """Start the reader thread: `on_events(step's events)` on `loop` for each message, then
        `on_exit(self)` on `loop` once the process is gone (it is killed and reaped first)."""
        args = (loop, on_events, on_exit)
        threading.Thread(target=self._read, args=args, name="hotspare-engine-reader", daemon=True).start()

    def is_hung(self, has_work: bool, timeout_s: float) -> bool:
        """Silent for `timeout_s` with work in flight, or stuck that long taking a command."""
        now = time.monotonic()
        sending_since = self.sending_since
        is_silent = has_work and now - self.last_heard > timeout_s
        return is_silent or (sending_since is not None and now - sending_since > timeout_s)

    def _write(self) -> None:
        """Writer thread: send each queued command until `kill` (a None) or a broken pipe."""
        while (cmd := self._outbox.get()) is not None:
            self.sending_since = time.monotonic()
            try:
                self.conn.send(cmd)
            except (OSError, ValueError):  # the process is gone: the reader thread reports it
                return
            finally:
                self.sending_since = None

    def _read(
        self,
        loop: asyncio.AbstractEventLoop,
        on_events: Callable[[list[Any]], None],
        on_exit: Callable[[EngineProcess], None],
    ) -> None:
        """Reader thread: forward each message to the loop until the process goes away."""
        while True:
            try:
                msg = self.conn.recv()
            except (EOFError, OSError):
                break
            self.last_heard = time.monotonic()
            loop.call_soon_threadsafe(on_events, msg)
        self.kill()
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left to tell
            loop.call_soon_threadsafe(on_exit, self)

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        self._outbox.put(None)
