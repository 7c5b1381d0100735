"""What keeps web pages from driving a keyless hotspare (the class of Ollama's CVE-2024-28224).

A server without client keys listens on loopback only (ops/access.py `check_exposure`), but a browser
on the same machine can still reach it: a page can POST `text/plain` to it without a CORS preflight,
and a DNS-rebinding name can make the page's own origin resolve to 127.0.0.1. So, without keys:

* Host: only a loopback name (`localhost`, `*.localhost`, a loopback address), the configured
  `[server] host`, or one of `[access] allowed_hosts` is served. A rebinding name is not one of them.
* Origin: a request that carries one (a browser sends it on every cross-origin POST) is served only
  when it names a loopback host or an allowed one; `Origin: null` (sandboxed frames, files) is refused.
* Content-Type: a POST with a body must say JSON (`application/json` or `application/*+json`), as the
  providers' APIs expect; a browser cannot send that cross-origin without a preflight hotspare never
  answers.

Each check raises PermissionDenied (403) or InvalidRequest (400), answered in the caller's API shape.
With keys configured these checks are off: a page cannot know a key.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.types import Scope

from hotspare.core.errors import InvalidRequest, PermissionDenied


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class NotJson(InvalidRequest):
    """A request body that does not say it is JSON."""


class BrowserGuard:
    def __init__(self, server_host: str, allowed_hosts: Iterable[str]) -> None:
        self._allowed = {name.lower() for name in (server_host, *allowed_hosts)}

    def check_headers(self, scope: Scope) -> None:
        """Refuse a foreign Host or Origin. Raises PermissionDenied."""
        headers = _headers(scope)
        host = headers.get("host")
        if host is not None and not self.is_local(_host_name(host)):
            raise PermissionDenied(
                f"Host {_shown(host)} is not served: this server has no client keys, so it answers only "
                "loopback names, [server] host and [access] allowed_hosts"
            )
        origin = headers.get("origin")
        if origin is not None and not self.is_local(_origin_host(origin)):
            raise PermissionDenied(
                f"requests from web pages at Origin {_shown(origin)} are refused: this server has no "
                "client keys"
            )

    def check_body_type(self, scope: Scope, body: bytes) -> None:
        """Refuse a non-empty body that does not say it is JSON. Raises InvalidRequest."""
        if not body:
            return
        media = _headers(scope).get("content-type", "").split(";", 1)[0].strip().lower()
        if media == "application/json" or (media.startswith("application/") and media.endswith("+json")):
            return
        shown = f"Content-Type {_shown(media)}" if media else "no Content-Type"
        raise NotJson(f"the request body must be sent as Content-Type: application/json, not {shown}")

    def is_local(self, name: str) -> bool:
        name = name.lower().rstrip(".")
        return bool(name) and (
            is_loopback(name) or name == "localhost" or name.endswith(".localhost") or name in self._allowed
        )


def _headers(scope: Scope) -> dict[str, str]:
    return {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}


def _host_name(host: str) -> str:
    """The name in a Host header (`[::1]:8000` -> `::1`, `localhost:8000` -> `localhost`)."""
    return urlsplit("//" + host.strip()).hostname or "" if _is_parsable(host) else ""


def _origin_host(origin: str) -> str:
    """The host of an Origin header; "" for `null` or anything unreadable."""
    if not _is_parsable(origin):
        return ""
    parts = urlsplit(origin.strip())
    return parts.hostname or "" if parts.scheme in ("http", "https") else ""


def _is_parsable(value: str) -> bool:
    try:
        urlsplit("//" + value.strip()).port  # noqa: B018 -- raises ValueError on a bad port
    except ValueError:
        return False
    return value.isascii()


def _shown(value: str) -> str:
    return repr(value[:80])
