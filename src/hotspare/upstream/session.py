"""Which HTTP client carries an upstream's requests (`open_session`): the lean HTTP/1.1 pool
(http1.py) on the hot path, httpx where that pool does not go -- a proxy configured in the
environment, an injected httpx transport in tests. Both speak transport.py's interface and raise its
errors; the httpx adapter here translates httpx's exceptions into them once.
"""

from __future__ import annotations

import os
import ssl
import urllib.request
from urllib.parse import urlsplit

import httpx

from hotspare.upstream.http1 import Http1Pool
from hotspare.upstream.transport import (
    BodyReader,
    ConnectFailed,
    ConnectTimedOut,
    ContentDecoder,
    ReadFailed,
    Session,
)


def open_session(
    base_url: str,
    connect_timeout_s: float,
    write_timeout_s: float,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Session:
    """The lean pool unless a test transport is given or the environment routes `base_url` through
    a proxy (HTTP(S)_PROXY / ALL_PROXY without a matching NO_PROXY), which httpx knows how to use."""
    if transport is None and not _uses_proxy(base_url):
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
