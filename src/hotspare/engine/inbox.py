"""The engine process's end of the command pipe, drained by a thread of its own.

The engine's main thread spends its time in `llama_decode` (ctypes releases the GIL there) and reads
commands only between steps. Read from that thread alone, a command larger than the pipe's free
buffer (about 208 KB on Linux: one long prompt, a warm-up of a whole conversation, a token count)
left the API process's writer blocked until the step ended, and every command queued behind it with
it. `Inbox` receives each command as soon as it arrives, on its own thread, and keeps it until the
main thread asks between steps; `poll` and `recv` behave as `Connection.poll` and `Connection.recv`
(a closed pipe polls True, then `recv` raises EOFError), so the loop reads them the same way.

Unbounded on purpose: what it holds was already accepted by the API process, which bounds its own
requests; the engine still refuses past `max_queued` as it handles them.
"""

from __future__ import annotations

import threading
from collections import deque
from multiprocessing.connection import Connection
from typing import Any


class Inbox:
    """Starts its reader thread at once; one consumer (the engine's main loop)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._items: deque[Any] = deque()
        self._changed = threading.Condition()
        self._is_closed = False
        threading.Thread(target=self._read, name="hotspare-engine-inbox", daemon=True).start()

    def poll(self, timeout_s: float | None = 0.0) -> bool:
        """Whether a command (or the pipe's end) is there, waiting up to `timeout_s` (None: forever)."""
        with self._changed:
            return self._changed.wait_for(self._has_news, timeout_s)

    def recv(self) -> Any:
        """The next command, waiting for it. Raises EOFError once the pipe is closed and drained."""
        with self._changed:
            self._changed.wait_for(self._has_news)
            if self._items:
                return self._items.popleft()
        raise EOFError

    def _has_news(self) -> bool:
        return bool(self._items) or self._is_closed

    def _read(self) -> None:
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                break
            with self._changed:
                self._items.append(message)
                self._changed.notify()
        with self._changed:
            self._is_closed = True
            self._changed.notify()
