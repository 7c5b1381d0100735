"""Which HTTP headers cross the proxy: those of one hop never do, in either direction; credentials
(AUTH_HEADERS) are replaced where a key is configured (upstream/base.py); and an upstream's answer
also loses the headers a server sets for itself."""

from __future__ import annotations

from collections.abc import Iterable

# Headers that describe one hop, or that the HTTP client or uvicorn set themselves, never the message.
HOP_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
        "accept-encoding",
        "content-encoding",
    }
)
RESPONSE_DROP = HOP_HEADERS | {"date", "server", "x-hotspare-backend"}
AUTH_HEADERS = frozenset({"authorization", "x-api-key", "api-key"})


def header_value(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    """The first value of header `name` in `headers` (names lower-case on both sides), or None."""
    return next((value for key, value in headers if key == name), None)


def forwardable_headers(headers: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple((k, v) for k, v in headers if k.lower() not in RESPONSE_DROP)
