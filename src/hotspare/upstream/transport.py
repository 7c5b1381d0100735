"""How an upstream's HTTP requests travel: the lean HTTP/1.1 pool (http1.py) on the hot path, httpx
where that pool does not go (a proxy configured in the environment, an injected httpx transport in
tests), both behind one small interface with one set of errors.

    TransportError
      ConnectFailed      refused, reset, DNS or TLS failure before a response
      ConnectTimedOut    no connection within the connect timeout
      ReadFailed         the connection broke before the response ended (`before_response` if no
                         status line came at all)
      ProtocolFailed     a malformed response, or a request that cannot be encoded

upstream/base.py and stream.py translate these into `UpstreamError`s; nothing else sees them.

Bounds on what an upstream can make us hold: a gzip/deflate body is decoded at most
`MAX_DECODED_PIECE_BYTES` at a time (`ContentDecoder`; a 1 MB gzip bomb would otherwise inflate to
1 GB in one call), and `aread` refuses a whole body over `MAX_BODY_BYTES` (ProtocolFailed).
"""

from __future__ import annotations

import os
import ssl
import urllib.request
import zlib
from typing import Protocol
from urllib.parse import urlsplit

import httpx


class TransportError(Exception):
    pass


class ConnectFailed(TransportError):
    pass


class ConnectTimedOut(TransportError):
    pass


class ReadFailed(TransportError):
    def __init__(self, message: str, before_response: bool = False) -> None:
        super().__init__(message)
        self.before_response = before_response


class ProtocolFailed(TransportError):
    pass


MAX_BODY_BYTES = 32 << 20  # a whole (non-streamed) body; a 64k-token answer is well under 1 MB
MAX_DECODED_PIECE_BYTES = 1 << 20


class ContentDecoder:
    """gzip / deflate decoding with a bound on each piece it returns: what a piece of input inflates
    to beyond `MAX_DECODED_PIECE_BYTES` waits (`has_more`) for the next call."""

    def __init__(self) -> None:
        self._zlib = zlib.decompressobj(wbits=47)  # 32 + 15: gzip or zlib header, detected
        self._tail = b""

    @property
    def has_more(self) -> bool:
        return bool(self._tail)

    def decode(self, data: bytes) -> bytes:
        """Raises zlib.error on corrupt data."""
        out = self._zlib.decompress(self._tail + data, MAX_DECODED_PIECE_BYTES)
        self._tail = self._zlib.unconsumed_tail
        return out

    def flush(self) -> bytes:
        return b"" if self._tail else self._zlib.flush()


class BodyReader:
    """`aread` for a response with `read_chunk`: the one way both clients read a whole body."""

    async def read_chunk(self) -> bytes | None:
        raise NotImplementedError

    async def aread(self, max_bytes: int = MAX_BODY_BYTES) -> bytes:
        parts = []
        size = 0
        while (chunk := await self.read_chunk()) is not None:
            size += len(chunk)
            if size > max_bytes:
                raise ProtocolFailed(f"response body over {max_bytes} bytes")
            parts.append(chunk)
        return b"".join(parts)


class Response(Protocol):
    """A response whose headers arrived; the caller must `aclose()` it."""

    status: int
    headers: tuple[tuple[str, str], ...]  # lower-case names, in order

    def header(self, name: str) -> str | None: ...

    async def read_chunk(self) -> bytes | None:
        """The next piece of the (decoded) body, or None at its end."""

    async def aread(self, max_bytes: int = MAX_BODY_BYTES) -> bytes: ...

    async def aclose(self) -> None: ...


class Session(Protocol):
    async def send(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Response: ...

    async def aclose(self) -> None: ...


def open_session(
    base_url: str,
    connect_timeout_s: float,
    write_timeout_s: float,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Session:
    """The lean pool unless a test transport is given or the environment routes `base_url` through
    a proxy (HTTP(S)_PROXY / ALL_PROXY without a matching NO_PROXY), which httpx knows how to use."""
    if transport is None and not _uses_proxy(base_url):
        from hotspare.upstream.http1 import Http1Pool  # imports this module's errors

        return Http1Pool(base_url, connect_timeout_s, _ssl_context())
    return HttpxSession(base_url, connect_timeout_s, write_timeout_s, transport)


def _uses_proxy(base_url: str) -> bool:
    url = urlsplit(base_url)
    proxies = urllib.request.getproxies()
    if not (proxies.get(url.scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(url.hostname or "")


def _ssl_context() -> ssl.SSLContext:
    """Verified TLS with the CA bundle httpx would use (SSL_CERT_FILE / SSL_CERT_DIR win, as in httpx)."""
    cafile, capath = os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")
    if cafile is None and capath is None:
        import certifi  # httpx's own dependency

        cafile = certifi.where()
    return ssl.create_default_context(cafile=cafile, capath=capath)


class HttpxResponse(BodyReader):
    def __init__(self, response: httpx.Response) -> None:
        self.status = response.status_code
        self.headers = tuple((k.lower(), v) for k, v in response.headers.multi_items())
        self._response = response
        # Raw bytes, decoded here with a bound (httpx's own decoders inflate without one).
        self._chunks = response.aiter_raw()
        coding = (response.headers.get("content-encoding") or "identity").lower()
        self._decoder = ContentDecoder() if coding in ("gzip", "deflate") else None
        self._ended = False

    def header(self, name: str) -> str | None:
        value: str | None = self._response.headers.get(name)
        return value

    async def read_chunk(self) -> bytes | None:
        if self._decoder is not None and self._decoder.has_more:
            return self._decoder.decode(b"")
        if self._ended:
            return None
        try:
            chunk = await anext(self._chunks)
        except StopAsyncIteration:
            self._ended = True
            rest = self._decoder.flush() if self._decoder is not None else b""
            return rest or None
        except httpx.HTTPError as exc:
            raise ReadFailed(f"response broke ({type(exc).__name__})") from exc
        return self._decoder.decode(chunk) if self._decoder is not None else chunk

    async def aclose(self) -> None:
        await self._response.aclose()


class HttpxSession:
    def __init__(
        self,
        base_url: str,
        connect_timeout_s: float,
        write_timeout_s: float,
        transport: httpx.AsyncBaseTransport | None,
    ) -> None:
        self._client = httpx.AsyncClient(
            base_url=base_url,
            timeout=httpx.Timeout(
                connect=connect_timeout_s, read=None, write=write_timeout_s, pool=connect_timeout_s
            ),
            limits=httpx.Limits(max_connections=1024, max_keepalive_connections=256),
            transport=transport,
        )

    async def send(self, method: str, path: str, headers: dict[str, str], body: bytes) -> HttpxResponse:
        request = self._client.build_request(method, path, content=body or None, headers=headers)
        try:
            return HttpxResponse(await self._client.send(request, stream=True))
        except (httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise ConnectTimedOut("connect timed out") from exc
        except httpx.RemoteProtocolError as exc:
            raise ReadFailed(f"no response ({type(exc).__name__})", before_response=True) from exc
        except httpx.HTTPError as exc:
            raise ConnectFailed(f"connection failed ({type(exc).__name__})") from exc

    async def aclose(self) -> None:
        await self._client.aclose()
