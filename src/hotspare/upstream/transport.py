"""What every upstream HTTP client is: one small interface (`Session`, `Response`) and one set of
errors, shared by the lean HTTP/1.1 pool (http1.py) on the hot path and httpx where that pool does
not go (session.py picks one per upstream). This module imports neither client.

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

import zlib
from typing import Protocol


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
