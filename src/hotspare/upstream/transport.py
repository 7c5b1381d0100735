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
"""

from __future__ import annotations

import os
import ssl
import urllib.request
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


class BodyReader:
    """`aread` for a response with `read_chunk`: the one way both clients read a whole body."""

    async def read_chunk(self) -> bytes | None:
        raise NotImplementedError

    async def aread(self) -> bytes:
        parts = []
        while (chunk := await self.read_chunk()) is not None:
            parts.append(chunk)
        return b"".join(parts)


class Response(Protocol):
    """A response whose headers arrived; the caller must `aclose()` it."""

    status: int
    headers: tuple[tuple[str, str], ...]  # lower-case names, in order

    def header(self, name: str) -> str | None: ...

    async def read_chunk(self) -> bytes | None:
        """The next piece of the (decoded) body, or None at its end."""

    async def aread(self) -> bytes: ...

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
        self._chunks = response.aiter_bytes()

    def header(self, name: str) -> str | None:
        value: str | None = self._response.headers.get(name)
        return value

    async def read_chunk(self) -> bytes | None:
        try:
            return await anext(self._chunks)
        except StopAsyncIteration:
            return None
        except httpx.HTTPError as exc:
            raise ReadFailed(f"response broke ({type(exc).__name__})") from exc

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
