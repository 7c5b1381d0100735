"""The lean HTTP/1.1 client against real sockets on 127.0.0.1: a scripted server answers each request
with raw bytes, so every framing (content-length, chunked, close-delimited), keep-alive reuse, gzip,
a cut in the middle of a body, a malformed answer and back-pressure are exercised on the wire."""

from __future__ import annotations

import asyncio
import gzip
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hotspare.upstream.http1 import Http1Pool
from hotspare.upstream.session import HttpxSession, open_session
from hotspare.upstream.transport import ConnectFailed, ProtocolFailed, ReadFailed


@dataclass
class Server:
    """Answers request N with `answers[N]` (raw bytes, or a coroutine function given the writer)."""

    answers: list[bytes | Callable[[asyncio.StreamWriter], object]]
    requests: list[bytes] = field(default_factory=list)
    num_connections: int = 0
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.num_connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                answer = self.answers[len(self.requests) - 1]
                if isinstance(answer, bytes):
                    writer.write(answer)
                    await writer.drain()
                else:
                    await answer(writer)  # type: ignore[misc]  # a coroutine function
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the client left, or the test's loop is ending
        finally:
            writer.close()


Start = Callable[..., Awaitable[tuple[Server, Http1Pool]]]


@pytest.fixture
async def serve() -> AsyncIterator[Start]:
    servers: list[asyncio.Server] = []

    async def start(*answers: bytes | Callable[[asyncio.StreamWriter], object]) -> tuple[Server, Http1Pool]:
        state = Server(list(answers))
        server = await asyncio.start_server(state.handle, "127.0.0.1", 0)
        servers.append(server)
        state.port = server.sockets[0].getsockname()[1]
        return state, Http1Pool(f"http://127.0.0.1:{state.port}/base", 2.0)

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


def ok(body: bytes, *headers: str) -> bytes:
    head = "".join(f"{h}\r\n" for h in headers)
    return f"HTTP/1.1 200 OK\r\ncontent-length: {len(body)}\r\n{head}\r\n".encode() + body


def chunked(*pieces: bytes) -> bytes:
    out = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    for piece in pieces:
        out += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    return out + b"0\r\n\r\n"


async def test_requests_reuse_one_connection_and_carry_path_prefix_headers_and_body(serve: Start) -> None:
    server, pool = await serve(ok(b'{"a": 1}', "x-one: 1"), chunked(b"data: 1\n\n", b"data: 2\n\n"))
    first = await pool.send("POST", "/v1/x", {"authorization": "Bearer k"}, b'{"q": 1}')
    assert first.status == 200 and first.header("x-one") == "1"
    assert await first.aread() == b'{"a": 1}'
    await first.aclose()
    second = await pool.send("POST", "/v1/y", {}, b"{}")
    assert second.header("content-type") == "text/event-stream"
    assert await second.aread() == b"data: 1\n\ndata: 2\n\n"
    await second.aclose()
    assert server.num_connections == 1  # kept alive and reused
    head = server.requests[0].split(b"\r\n")
    assert head[0] == b"POST /base/v1/x HTTP/1.1" and f"host: 127.0.0.1:{server.port}".encode() in head
    assert b"authorization: Bearer k" in head and b"content-length: 8" in head
    assert server.requests[0].endswith(b'\r\n\r\n{"q": 1}')
    await pool.aclose()


async def test_a_response_closed_before_its_end_does_not_go_back_to_the_pool(serve: Start) -> None:
    release = asyncio.Event()

    async def half(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await release.wait()  # the rest never comes while the client decides

    _, pool = await serve(half)
    first = await pool.send("POST", "/", {}, b"")
    assert await first.read_chunk() == b"hello"
    await first.aclose()  # its end not seen: the connection cannot carry another request
    assert pool._idle == [] and first._connection.is_lost
    release.set()
    await pool.aclose()


async def test_connection_close_and_close_delimited_bodies(serve: Start) -> None:
    async def until_close(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nall of it")
        await writer.drain()

    server, pool = await serve(ok(b"bye", "connection: close"), until_close)
    first = await pool.send("GET", "/", {}, b"")
    assert await first.aread() == b"bye"
    await first.aclose()
    second = await pool.send("GET", "/", {}, b"")  # the server said close: a new connection
    assert await second.aread() == b"all of it"  # ends when the server closes
    await second.aclose()
    assert server.num_connections == 2
    await pool.aclose()


async def test_gzip_bodies_are_decoded(serve: Start) -> None:
    _, pool = await serve(ok(gzip.compress(b"hello " * 100), "content-encoding: gzip"))
    response = await pool.send("GET", "/", {}, b"")
    assert await response.aread() == b"hello " * 100
    await response.aclose()
    await pool.aclose()


async def test_a_cut_in_the_body_raises_read_failed_after_what_arrived(serve: Start) -> None:
    async def cut(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        writer.transport.abort()

    _, pool = await serve(cut)
    response = await pool.send("POST", "/", {}, b"")
    assert await response.read_chunk() == b"hello"
    with pytest.raises(ReadFailed) as info:
        await response.read_chunk()
    assert not info.value.before_response
    await response.aclose()
    await pool.aclose()


async def test_a_reset_before_the_answer_and_a_malformed_answer(serve: Start) -> None:
    async def reset(writer: asyncio.StreamWriter) -> None:
        writer.transport.abort()

    _, pool = await serve(reset)
    with pytest.raises(ReadFailed) as info:
        await pool.send("POST", "/", {}, b"")
    assert info.value.before_response
    _, pool2 = await serve(b"NOT HTTP AT ALL\r\n\r\n")
    with pytest.raises(ProtocolFailed):
        await pool2.send("POST", "/", {}, b"")
    await pool.aclose()
    await pool2.aclose()


async def test_refused_and_header_injection_are_errors() -> None:
    pool = Http1Pool("http://127.0.0.1:9", 1.0)  # the discard port: nothing listens
    with pytest.raises(ConnectFailed):
        await pool.send("GET", "/", {}, b"")
    with pytest.raises(ProtocolFailed):
        await pool.send("GET", "/", {"x-evil": "a\r\nhost: other"}, b"")
    await pool.aclose()


async def test_a_slow_reader_pauses_the_socket_and_still_gets_every_byte(serve: Start) -> None:
    big = bytes(range(256)) * 16384  # 4 MiB: past the pause threshold
    _, pool = await serve(ok(big))
    response = await pool.send("GET", "/", {}, b"")
    await asyncio.sleep(0.2)  # let the socket fill our buffer up to the threshold
    connection = response._connection
    assert connection._is_paused
    assert await response.aread() == big
    await response.aclose()
    await pool.aclose()


def test_a_proxy_in_the_environment_selects_httpx(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "internal.example")
    assert isinstance(open_session("https://api.example.com", 1.0, 1.0), Http1Pool)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert isinstance(open_session("https://api.example.com", 1.0, 1.0), HttpxSession)
    assert isinstance(open_session("https://internal.example", 1.0, 1.0), Http1Pool)
    assert isinstance(open_session("http://api.example.com", 1.0, 1.0), Http1Pool)


async def test_https_verifies_the_server_certificate(tmp_path: Path) -> None:
    # A self-signed certificate for 127.0.0.1: trusted, the request goes through TLS; with the default
    # trust store (which lacks it), the connection is refused before any byte of the request leaves.
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    request = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test"]
    request += ["-addext", "subjectAltName=IP:127.0.0.1"]
    subprocess.run(
        ["openssl", *request, "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    state = Server([ok(b"over tls")])
    server = await asyncio.start_server(state.handle, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    try:
        pool = Http1Pool(f"https://127.0.0.1:{port}", 2.0, ssl.create_default_context(cafile=str(cert)))
        response = await pool.send("GET", "/v1/models", {}, b"")
        assert await response.aread() == b"over tls"
        await response.aclose()
        await pool.aclose()
        untrusting = Http1Pool(f"https://127.0.0.1:{port}", 2.0)
        with pytest.raises(ConnectFailed):
            await untrusting.send("GET", "/v1/models", {}, b"")
        await untrusting.aclose()
        assert len(state.requests) == 1
    finally:
        server.close()
        await server.wait_closed()


async def test_past_max_connections_a_request_waits_for_one_to_come_free(serve: Start) -> None:
    server, _ = await serve(ok(b"one"), ok(b"two"), ok(b"three"))
    pool = Http1Pool(f"http://127.0.0.1:{server.port}", 2.0, max_connections=1)
    first = await pool.send("GET", "/", {}, b"")
    second = asyncio.ensure_future(pool.send("GET", "/", {}, b""))
    await asyncio.sleep(0.1)
    assert not second.done() and pool.num_open == 1  # waiting: the one connection is busy
    assert await first.aread() == b"one"
    await first.aclose()  # back to the pool: the waiting request takes it
    response = await asyncio.wait_for(second, 2.0)
    assert await response.aread() == b"two"
    await response.aclose()
    with pytest.raises(TimeoutError):  # a caller's deadline bounds the wait
        held = await pool.send("GET", "/", {}, b"")
        async with asyncio.timeout(0.2):
            await pool.send("GET", "/", {}, b"")
    await held.aclose()
    assert server.num_connections == 1
    await pool.aclose()
    await asyncio.sleep(0.05)  # the closed connection's loss is reported by the event loop
    assert pool.num_open == 0


async def test_failed_connects_do_not_use_up_the_connection_budget() -> None:
    pool = Http1Pool("http://127.0.0.1:9", 1.0, max_connections=1)  # nothing listens
    for _ in range(3):
        with pytest.raises(ConnectFailed):
            await pool.send("GET", "/", {}, b"")
    assert pool.num_open == 0
    await pool.aclose()


async def test_bytes_after_the_answer_are_ignored_and_the_connection_not_reused(serve: Start) -> None:
    extra = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-evil: 1\r\n\r\nevil!"
    server, pool = await serve(ok(b"mine") + extra, ok(b"next"))
    first = await pool.send("GET", "/", {}, b"")
    assert await first.aread() == b"mine" and first.header("x-evil") is None
    await first.aclose()
    second = await pool.send("GET", "/", {}, b"")
    assert await second.aread() == b"next"
    await second.aclose()
    assert server.num_connections == 2  # the first connection was not trusted again
    await pool.aclose()
