"""Which HTTP headers cross the proxy: those of one hop never do, in either direction (the fixed
list, and any header the message's own `Connection` header names, RFC 9110 7.6.1); credentials
(AUTH_HEADERS) are replaced where a key is configured (upstream/base.py); and an upstream's answer
also loses the headers a server sets for itself and those naming the operator's provider account.

`Expect` is dropped: this proxy sends the whole body at once, and an upstream that answers
`100 Continue` (uvicorn always does) must not see a request for one."""

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
        "expect",
    }
)
# The operator's account at the provider: never shown to the operator's own clients.
ACCOUNT_HEADERS = frozenset({"openai-organization", "openai-project", "anthropic-organization-id"})
RESPONSE_DROP = HOP_HEADERS | ACCOUNT_HEADERS | {"date", "server", "x-hotspare-backend"}
AUTH_HEADERS = frozenset({"authorization", "x-api-key", "api-key"})


def header_value(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    """The first value of header `name` in `headers` (names lower-case on both sides), or None."""
    return next((value for key, value in headers if key == name), None)


def connection_named(headers: Iterable[tuple[str, str]]) -> frozenset[str]:
    """The header names listed in `Connection` (lower-case): hop-by-hop for this message only."""
    return frozenset(
        name.strip().lower()
        for key, value in headers
        if key.lower() == "connection"
        for name in value.split(",")
        if name.strip()
    )


def request_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """A client's headers (lower-case names) without those of its hop."""
    items = list(headers)
    drop = HOP_HEADERS | connection_named(items)
    return {k: v for k, v in items if k not in drop}


def forwardable_headers(headers: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    items = list(headers)
    drop = RESPONSE_DROP | connection_named(items)
    return tuple((k, v) for k, v in items if k.lower() not in drop)
