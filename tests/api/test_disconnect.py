"""A client that goes away cancels its request in the backend: driven at the ASGI level, where the
moment of the disconnect is exact."""

from __future__ import annotations

import asyncio
import json
from collections.abc import MutableMapping
from typing import Any

import pytest

from hotspare.app import create_app
from hotspare.config import Settings

from .fakes import FakeBackend

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {"model": "claude-haiku-4-5", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}


async def call(backend: FakeBackend, path: str, body: dict[str, Any], leave_after_chunks: int) -> list[bytes]:
    """POST `body` to the app and disconnect once `leave_after_chunks` body chunks arrived (0: as soon
    as the backend is busy). Returns the body chunks sent."""
    app = create_app(Settings(), backend=backend)
    chunks: list[bytes] = []
    enough = asyncio.Event()
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}
        await enough.wait()
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            chunks.append(message["body"])
            if len(chunks) >= leave_after_chunks > 0:
                enough.set()

    async def leave_when_stalled() -> None:
        assert backend.stalled is not None
        await backend.stalled.wait()
        if leave_after_chunks == 0:
            enough.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"host", b"localhost")],
        "client": ("127.0.0.1", 50000),
        "server": ("localhost", 80),
    }
    watcher = asyncio.create_task(leave_when_stalled())
    await asyncio.wait_for(app(scope, receive, send), timeout=10)
    await asyncio.sleep(0)  # let a cancelled backend read finish its cleanup
    watcher.cancel()
    return chunks


@pytest.mark.parametrize(("path", "body"), [("/v1/chat/completions", CHAT), ("/v1/messages", MESSAGES)])
def test_leaving_during_a_non_streamed_answer_cancels_it(path: str, body: dict[str, Any]) -> None:
    backend = FakeBackend(stall_after=1, stalled=asyncio.Event())
    asyncio.run(call(backend, path, body, leave_after_chunks=0))
    assert (backend.num_cancelled, backend.num_closed, backend.num_finished) == (1, 0, 0)


@pytest.mark.parametrize(
    ("path", "body", "num_chunks"),
    [
        ("/v1/chat/completions", {**CHAT, "stream": True}, 2),  # role chunk, "Hello"
        ("/v1/messages", {**MESSAGES, "stream": True}, 4),  # message_start, block start, ping, "Hello"
    ],
)
def test_leaving_during_a_stream_cancels_it(path: str, body: dict[str, Any], num_chunks: int) -> None:
    backend = FakeBackend(stall_after=1, stalled=asyncio.Event())
    chunks = asyncio.run(call(backend, path, body, leave_after_chunks=num_chunks))
    assert b"Hello" in chunks[-1]
    assert (backend.num_cancelled, backend.num_closed, backend.num_finished) == (1, 0, 0)
