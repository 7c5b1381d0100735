"""A lean HTTP/1.1 client for the passthrough hot path: asyncio protocols parsed by httptools (the C
parser uvicorn uses), with a keep-alive pool per upstream.

Why not httpx here: relaying one small request through a bare ASGI app cost 1.1-1.5 ms of CPU with
httpx and 0.25 ms with this (measured on the 2-core dev VM, docs/benchmarks.md); at 64 concurrent
requests on two cores that CPU is the added latency. httpx stays the client where this one does not
go (a proxy from the environment, an injected test transport): see session.py.

Contract: `Http1Pool.send` returns an `Http1Response` once the status line and headers arrived. The
response owns its connection until `aclose()`, which puts the connection back in the pool only when
its message ended and both sides allow keep-alive; otherwise the connection is closed. Bodies come
out of `read_chunk` with the transfer coding removed and gzip/deflate content decoded. Failures
raise the transport errors of transport.py. One event loop; not thread-safe.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import cast
from urllib.parse import urlsplit

import httptools

from hotspare.upstream.http1_response import Http1Response
from hotspare.upstream.transport import ConnectFailed, ConnectTimedOut, ProtocolFailed, ReadFailed

_KEEPALIVE_S = 5.0  # an idle connection older than this is closed rather than reused (httpx's default)
_MAX_IDLE = 256
MAX_CONNECTIONS = 1024  # per upstream, as httpx's pool: a client storm does not become a connection storm


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection, carrying one response at a time."""

    def __init__(self, pool: Http1Pool) -> None:
        self._pool = pool
        self._is_counted = True  # in the pool's number of open connections until lost
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._response: Http1Response | None = None
        self._is_paused = False
        self.is_lost = False
        self._can_keep_alive = False
        self._is_unsolicited = False
        self._is_interim = False  # parsing a 1xx interim response (100 Continue, 103 Early Hints)
        self.idle_since = 0.0
        self.num_requests = 0

    # --- asyncio.Protocol -------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not its subclasses

    def data_received(self, data: bytes) -> None:
        response = self._response
        if response is None or response.is_complete:  # bytes nobody asked for: untrustworthy now
            self._can_keep_alive = False
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            response.fail(ProtocolFailed(f"malformed response ({exc})"))
            self.close()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.is_lost = True
        if self._is_counted:
            self._is_counted = False
            self._pool._on_closed()
        response = self._response
        if response is None or response.is_complete:
            return
        if response.status and _is_close_delimited(response):
            response.message_complete()  # a body without length or chunking ends when the server closes
            return
        what = "before the response" if not response.status else "in the middle of the body"
        response.fail(ReadFailed(f"connection closed {what}", before_response=not response.status))

    # --- httptools callbacks ----------------------------------------------------------------------
    # A second message after the answer (in the same read) is nobody's: it is ignored and the
    # connection is not reused.
    def on_message_begin(self) -> None:
        if self._response is not None and self._response.is_complete:
            self._is_unsolicited = True

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._response is not None
        if not self._is_unsolicited:
            self._response.add_header(name.decode("latin-1").lower(), value.decode("latin-1"))

    def on_headers_complete(self) -> None:
        assert self._response is not None
        if self._is_unsolicited:
            return
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:  # interim: the real response follows
            self._is_interim = True
            self._response.clear_headers()
            return
        self._response.head_received(status)

    def on_body(self, body: bytes) -> None:
        assert self._response is not None
        if not self._is_unsolicited:
            self._response.body_received(body)

    def on_message_complete(self) -> None:
        assert self._response is not None
        if self._is_unsolicited:
            return
        if self._is_interim:
            self._is_interim = False
            return
        # Asked here: once the message is done the parser has reset and always says no.
        self._can_keep_alive = self._parser.should_keep_alive()
        self._response.message_complete()

    # --- used by the pool and the response --------------------------------------------------------
    def start(self, response: Http1Response, request: bytes) -> None:
        assert self._transport is not None
        self._response = response
        self.num_requests += 1
        self._transport.write(request)

    def release(self, response: Http1Response) -> None:
        """`response` is done with this connection: reuse it if that is safe, else close it."""
        if self._response is not response:
            return
        reusable = response.is_complete and response.error is None and self._can_keep_alive
        reusable = reusable and not self._is_unsolicited
        self._response, self._can_keep_alive = None, False
        if self._is_paused:
            self.resume()
        if reusable and not self.is_lost:
            self._parser = httptools.HttpResponseParser(self)
            self._pool._put_idle(self)
        else:
            self.close()

    def pause(self) -> None:
        if not self._is_paused and self._transport is not None:
            self._is_paused = True
            self._transport.pause_reading()

    def resume(self) -> None:
        if self._is_paused and self._transport is not None and not self._transport.is_closing():
            self._is_paused = False
            self._transport.resume_reading()

    def close(self) -> None:
        self.is_lost = True
        if self._transport is not None:
            self._transport.close()


def _is_close_delimited(response: Http1Response) -> bool:
    has_length = response.header("content-length") is not None
    return not has_length and "chunked" not in (response.header("transfer-encoding") or "").lower()


class Http1Pool:
    """Keep-alive connections to one origin (`base_url`: http or https, optional path prefix), at most
    `max_connections` open at once: past that a request waits for one to come free (the caller's
    deadline bounds the wait)."""

    def __init__(
        self,
        base_url: str,
        connect_timeout_s: float,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = MAX_CONNECTIONS,
    ):
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._host = url.hostname
        self._port = url.port or (443 if url.scheme == "https" else 80)
        default_port = self._port == (443 if url.scheme == "https" else 80)
        host = f"[{self._host}]" if ":" in self._host else self._host
        self._host_header = host if default_port else f"{host}:{self._port}"
        self._prefix = url.path.rstrip("/")
        self._ssl = (ssl_context or ssl.create_default_context()) if url.scheme == "https" else None
        self._connect_timeout_s = connect_timeout_s
        self._idle: list[_Connection] = []
        self._is_closed = False
        self._max_connections = max_connections
        self.num_open = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def send(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Http1Response:
        """Send a request; return when its response's headers arrived.

        A pooled connection the server closed is skipped when its close has arrived; one closed in
        the very moment of sending fails with ReadFailed(before_response=True), as in httpx: it is
        not resent here, because a reset that answers the request itself looks the same and the
        router decides about retries."""
        request = self._encode(method, path, headers, body)
        connection = await self._acquire()
        response = Http1Response(connection)
        connection.start(response, request)
        try:
            await response.head_received_or_failed()
        except BaseException:
            connection.close()
            raise
        return response

    def _encode(self, method: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
        lines = [f"{method} {self._prefix}{path} HTTP/1.1", f"host: {self._host_header}"]
        for name, value in headers.items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
                raise ProtocolFailed(f"header {name!r} cannot be sent")
            lines.append(f"{name}: {value}")
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(f"content-length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    async def _acquire(self) -> _Connection:
        while True:
            connection = self._take_idle()
            if connection is not None:
                return connection
            if self.num_open < self._max_connections:
                return await self._connect()
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _on_closed(self) -> None:
        self.num_open -= 1
        self._wake_one()

    async def _connect(self) -> _Connection:
        """A new connection, counted in `num_open` from now until it is lost (its own
        connection_lost counts it out once it was made; a failed attempt is counted out here)."""
        if self._is_closed:
            raise ConnectFailed("client closed")
        self.num_open += 1
        made: list[_Connection] = []

        def factory() -> _Connection:
            made.append(_Connection(self))
            return made[-1]

        try:
            return await self._open(factory)
        except BaseException:
            if made and made[0]._transport is not None:
                made[0].close()  # connected after all (cancelled just then): its loss counts it out
            else:
                for connection in made:
                    connection._is_counted = False
                self._on_closed()
            raise

    async def _open(self, factory: Callable[[], _Connection]) -> _Connection:
        loop = asyncio.get_running_loop()
        server_hostname = self._host if self._ssl is not None else None
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, protocol = await loop.create_connection(
                    factory, self._host, self._port, ssl=self._ssl, server_hostname=server_hostname
                )
        except TimeoutError:
            raise ConnectTimedOut("connect timed out") from None
        except (OSError, ssl.SSLError) as exc:  # refused, reset, DNS, TLS
            raise ConnectFailed(f"connect failed ({type(exc).__name__})") from exc
        return protocol

    def _take_idle(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if not connection.is_lost and now - connection.idle_since < _KEEPALIVE_S:
                return connection
            connection.close()
        return None

    def _put_idle(self, connection: _Connection) -> None:
        if self._is_closed or len(self._idle) >= _MAX_IDLE:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        self._idle.append(connection)
        self._wake_one()

    async def aclose(self) -> None:
        self._is_closed = True
        while self._idle:
            self._idle.pop().close()
