"""A real webhook receiver on 127.0.0.1: records every JSON POST, answers with scripted statuses."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class WebhookReceiver:
    """Use as a context manager. `script(503, 503)` answers the next POSTs with those statuses
    (then 200); `received` holds (monotonic time, body) for every POST, failed ones included."""

    def __init__(self) -> None:
        self.received: list[tuple[float, dict[str, Any]]] = []
        self._statuses: deque[int] = deque()
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with receiver._cond:
                    receiver.received.append((time.monotonic(), json.loads(body)))
                    status = receiver._statuses.popleft() if receiver._statuses else 200
                    receiver._cond.notify_all()
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/hook"

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def script(self, *statuses: int) -> None:
        with self._cond:
            self._statuses.extend(statuses)

    def wait_for(self, predicate: Any, timeout_s: float = 20.0) -> list[dict[str, Any]]:
        """Block until `predicate(bodies)` holds; returns the bodies received so far."""
        with self._cond:
            ok = self._cond.wait_for(lambda: predicate([b for _, b in self.received]), timeout_s)
            bodies = [b for _, b in self.received]
        if not ok:
            raise TimeoutError(f"webhook received {bodies}")
        return bodies

    def events(self) -> list[tuple[str, str]]:
        with self._cond:
            return [(b["event"], b["upstream"]) for _, b in self.received]
