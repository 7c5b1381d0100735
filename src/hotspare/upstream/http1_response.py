"""One HTTP/1.1 response of the lean client (http1.py), as its caller sees it and as its connection
feeds it: status and headers once the head arrived, then the body through `read_chunk`, buffered up
to `_PAUSE_BYTES` before the connection stops reading from the socket (back-pressure).

Contract: the connection calls the "fed by the connection" methods from its protocol callbacks, on
the event loop; the caller reads and finally calls `aclose()`, which hands the connection back
(`Carrier.release`). One event loop; not thread-safe.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Protocol

from hotspare.upstream.headers import header_value
from hotspare.upstream.transport import BodyReader, ContentDecoder, ProtocolFailed

_PAUSE_BYTES = 1 << 20  # stop reading from the socket while this much body waits for the consumer


class Carrier(Protocol):
    """The connection a response arrives on (http1.py's `_Connection`)."""

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def release(self, response: Http1Response) -> None: ...


class Http1Response(BodyReader):
    """One response. `status` and `headers` (lower-case names, in order) are set when `send` returns."""

    def __init__(self, connection: Carrier) -> None:
        self.status = 0
        self.headers: tuple[tuple[str, str], ...] = ()
        self._connection = connection
        self._raw_headers: list[tuple[str, str]] = []
        self._chunks: deque[bytes] = deque()
        self._num_buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._head: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._decoder: ContentDecoder | None = None
        self.is_complete = False
        self.error: Exception | None = None
        self._is_closed = False

    def header(self, name: str) -> str | None:
        return header_value(self.headers, name)

    async def read_chunk(self) -> bytes | None:
        """All of the body that has arrived and was not read yet (decoded at most
        MAX_DECODED_PIECE_BYTES at a time), or None at its end. Raises ReadFailed if the connection
        broke first, ProtocolFailed on a malformed message, zlib.error on a corrupt encoding."""
        if self._decoder is not None and self._decoder.has_more:
            return self._decoder.decode(b"")
        while not self._chunks:
            if self.error is not None:
                raise self.error
            if self.is_complete:
                return self._flush()
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        # Everything that has arrived, in one piece: a burst of events is relayed in one write.
        chunk = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._num_buffered = 0
        self._connection.resume()
        return self._decoder.decode(chunk) if self._decoder is not None else chunk

    async def aclose(self) -> None:
        if not self._is_closed:
            self._is_closed = True
            self._connection.release(self)

    def _flush(self) -> bytes | None:
        if self._decoder is None:
            return None
        rest, self._decoder = self._decoder.flush(), None
        return rest or None

    # --- fed by the connection --------------------------------------------------------------------
    async def head_received_or_failed(self) -> None:
        """Wait for the status line and headers; raises what failed the response before them."""
        await self._head

    def add_header(self, name: str, value: str) -> None:
        self._raw_headers.append((name, value))

    def clear_headers(self) -> None:
        """Forget an interim (1xx) response's headers: the real response follows."""
        self._raw_headers.clear()

    def head_received(self, status: int) -> None:
        self.status = status
        self.headers = tuple(self._raw_headers)
        coding = (self.header("content-encoding") or "identity").lower()
        if coding in ("gzip", "deflate"):
            self._decoder = ContentDecoder()
        elif coding != "identity":
            self.fail(ProtocolFailed(f"unsupported content-encoding {coding!r}"))
            return
        if not self._head.done():
            self._head.set_result(None)

    def body_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self._num_buffered += len(data)
        if self._num_buffered > _PAUSE_BYTES:
            self._connection.pause()
        self._wake()

    def message_complete(self) -> None:
        self.is_complete = True
        self._wake()

    def fail(self, error: Exception) -> None:
        if self.is_complete or self.error is not None:
            return
        self.error = error
        if not self._head.done():
            self._head.set_exception(error)
            self._head.exception()  # retrieved here: a cancelled sender never awaits it
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
