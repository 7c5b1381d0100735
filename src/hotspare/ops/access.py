"""Access control, an ASGI middleware in front of every route: client keys, per-key request limits,
and request size limits, each refused in the caller's API shape before anything is routed.

* Keys: with keys configured (`[access] api_keys` or HOTSPARE_API_KEYS) every path but /health and
  /ready (and the ops pages -- /, /status, /status.json, /metrics -- when `public_ops`) needs one,
  as `x-api-key` or `Authorization: Bearer`.
  Keys are compared as sha256 digests with `hmac.compare_digest`, against every configured key, so
  neither the time taken nor an early exit tells how much of a guess was right. A key is identified
  in logs only by its position (`key-1`, ...), never by its value or a hash of it.
  Keys must be at least 16 characters. An address that sends 10 bad keys within a minute is refused
  (429) for a while, doubling each time (ops/auth_throttle.py).
* Limits: a token bucket of `max_requests_per_minute` per key; a body over `max_body_bytes` gets 413;
  a body with more than `max_messages` messages (or Responses-API input items) gets 400; a body that
  is not a JSON object hotspare can read (too deep, unreadable numbers) gets 400.
* Request paths: printable ASCII without spaces once decoded, else 400 (`check_target`).
* Without keys: only loopback Host names, a local Origin and JSON bodies (ops/browser_guard.py).

Binding beyond loopback without keys is refused at startup (`check_exposure`).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hotspare.api.errors import api_format_for_path, error_response, new_request_id, request_id_header
from hotspare.api.wire import PARSED_BODY_SCOPE, parse_object
from hotspare.core.errors import (
    AuthenticationFailed,
    ConfigError,
    HotspareError,
    InvalidRequest,
    PermissionDenied,
    RateLimited,
    RequestTooLarge,
)
from hotspare.ops.auth_throttle import AuthThrottle
from hotspare.ops.browser_guard import BrowserGuard, NotJson, is_loopback
from hotspare.ops.config import KEYS_ENV, AccessSettings

OPEN_PATHS = frozenset({"/health", "/ready"})
OPS_PATHS = frozenset({"/", "/status", "/status.json", "/metrics"})
KEY_SCOPE = "hotspare.key_id"  # where the middleware leaves the caller's key id in the ASGI scope

Denied = Callable[[str], None]  # told the reason of every refusal (for metrics)


def startup_keys(access: AccessSettings, host: str, forwarding: Sequence[str] = ()) -> tuple[str, ...]:
    """The client keys to check (config file and environment), for a server listening on `host`
    whose upstreams named in `forwarding` forward the client's key. Raises ConfigError -- never
    quoting a key -- if the environment's are unusable, if hotspare would listen beyond loopback
    without keys, or if keys are set while an upstream forwards the client's key (it would get
    hotspare's key)."""
    try:
        keys = access.keys()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    check_exposure(host, keys)
    if keys and forwarding:
        raise ConfigError(
            f"upstream {forwarding[0]!r} forwards the client's key, but clients send hotspare's own key "
            'when [access] api_keys are set: give it api_key = "env:VARIABLE_NAME"'
        )
    return keys


def check_exposure(host: str, keys: tuple[str, ...]) -> None:
    """Refuse to serve beyond loopback without client keys. Raises ConfigError."""
    if not keys and not is_loopback(host):
        raise ConfigError(
            f"refusing to listen on {host} without client keys: anyone who can reach it could use it. "
            f"Set [access] api_keys in the config file or {KEYS_ENV} (comma-separated), "
            "or listen on 127.0.0.1"
        )


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """A token bucket per key id: `capacity` requests, refilled at capacity per minute."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def try_take(self, key_id: str) -> float | None:
        """None if a request may go now, else the seconds until one may."""
        now = self._clock()
        bucket = self._buckets.setdefault(key_id, _Bucket(self.capacity, now))
        bucket.tokens = min(self.capacity, bucket.tokens + (now - bucket.updated) * self.capacity / 60.0)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        return (1.0 - bucket.tokens) * 60.0 / self.capacity


class KeyRing:
    """The configured keys, as digests."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self._digests = [hashlib.sha256(k.encode()).digest() for k in keys]

    def __bool__(self) -> bool:
        return bool(self._digests)

    def identify(self, presented: str) -> str | None:
        """`key-N` for the N-th configured key, or None. Compares against every key."""
        digest = hashlib.sha256(presented.encode()).digest()
        found: str | None = None
        for number, known in enumerate(self._digests, 1):
            if hmac.compare_digest(digest, known) and found is None:
                found = f"key-{number}"
        return found


class AccessGuard:
    def __init__(
        self,
        app: ASGIApp,
        settings: AccessSettings,
        keys: tuple[str, ...],
        denied: Denied,
        server_host: str = "127.0.0.1",
    ) -> None:
        self.app = app
        self.settings = settings
        self.keys = KeyRing(keys)
        self.throttle = AuthThrottle()
        # Without keys, what keeps web pages out (see browser_guard.py); with keys, a page has none.
        self.browsers = None if keys else BrowserGuard(server_host, settings.allowed_hosts)
        self.limiter = (
            RateLimiter(settings.max_requests_per_minute) if settings.max_requests_per_minute else None
        )
        self._denied = denied

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            check_target(scope["path"])
            if scope["path"] not in OPEN_PATHS:
                receive = await self._admit(scope, receive)
        except HotspareError as exc:
            await self._refuse(scope, receive, send, exc)
            return
        await self.app(scope, receive, send)

    async def _admit(self, scope: Scope, receive: Receive) -> Receive:
        """Check the caller, its key's rate and its body; return the `receive` to hand on. Raises."""
        if self.browsers is not None:
            self.browsers.check_headers(scope)
        key_id = self._authorize(scope)
        if self.limiter is not None and key_id is not None and scope["path"] not in OPS_PATHS:
            wait_s = self.limiter.try_take(key_id)
            if wait_s is not None:
                raise RateLimited(
                    f"this key's limit of {self.settings.max_requests_per_minute} "
                    "requests per minute is used up",
                    retry_after_s=wait_s,
                )
        if scope["method"] in ("POST", "PUT", "PATCH"):
            return await self._checked_body(scope, receive)
        return receive

    def _authorize(self, scope: Scope) -> str | None:
        """The caller's key id (None when no keys are configured or the path needs none)."""
        if not self.keys or (self.settings.public_ops and scope["path"] in OPS_PATHS):
            return None
        address = _client_address(scope)
        wait_s = self.throttle.wait_s(address)
        if wait_s is not None:
            raise AuthThrottled(
                "too many failed API keys from this address: retry later", retry_after_s=wait_s
            )
        presented = _presented_key(scope)
        key_id = self.keys.identify(presented) if presented is not None else None
        if key_id is None:
            self.throttle.failed(address)
            if presented is None:
                raise AuthenticationFailed(
                    "missing API key: send a hotspare key as x-api-key or Authorization: Bearer"
                )
            raise AuthenticationFailed("invalid API key")
        self.throttle.succeeded(address)
        scope[KEY_SCOPE] = key_id
        return key_id

    async def _checked_body(self, scope: Scope, receive: Receive) -> Receive:
        """Read the whole body (refusing it past the size limit), check its message count, and
        return a `receive` that replays it, then passes through (disconnect detection)."""
        limit = self.settings.max_body_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestTooLarge(f"request body is {int(declared)} bytes; at most {limit} are accepted")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return _replay(b"", receive, first=message)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise RequestTooLarge(f"request body is over {limit} bytes, the most accepted")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if self.browsers is not None:
            self.browsers.check_body_type(scope, body)
        self._check_messages(scope, body)
        return _replay(body, receive)

    def _check_messages(self, scope: Scope, body: bytes) -> None:
        if b'"messages"' not in body and b'"input"' not in body:
            return
        try:
            data = parse_object(body)  # bounded: a deep or unreadable body is refused here, not a 500
        except InvalidRequest as exc:
            raise MalformedBody(exc.message) from None
        scope[PARSED_BODY_SCOPE] = (body, data)  # read only here: the route uses it, unparsed again
        for field in ("messages", "input"):
            items = data.get(field)
            if isinstance(items, list) and len(items) > self.settings.max_messages:
                raise InvalidRequest(
                    f"{field}: {len(items)} items; at most {self.settings.max_messages} are accepted",
                    param=field,
                )

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, exc: HotspareError) -> None:
        self._denied(_reason(exc))
        api = api_format_for_path(scope["path"])
        request_id = new_request_id(api)
        response = error_response(exc, api, request_id)
        response.headers[request_id_header(api)] = request_id
        if isinstance(exc, AuthenticationFailed):
            response.headers["www-authenticate"] = "Bearer"
        await response(scope, receive, send)


def check_target(path: str) -> None:
    """Refuse (BadTarget) a decoded request path that is not printable ASCII without spaces. Every
    path hotspare serves is; a space, a control character, non-ASCII or a bad percent-escape (decoded
    as U+FFFD) is refused at the edge, before a route quotes it in an error or forwards it in an
    upstream request line."""
    if not (path.isascii() and path.isprintable() and " " not in path):
        shown = ascii(path[:80])
        raise BadTarget(f"the request path {shown} is not served: it must be printable ASCII without spaces")


class BadTarget(InvalidRequest):
    """A request path hotspare never serves."""


class AuthThrottled(RateLimited):
    """An address sent too many bad keys (ops/auth_throttle.py)."""


class MalformedBody(InvalidRequest):
    """The body is not a JSON object hotspare can read (counted apart from too many messages)."""


def _reason(exc: HotspareError) -> str:
    if isinstance(exc, MalformedBody):
        return "malformed"
    if isinstance(exc, BadTarget):
        return "bad_target"
    if isinstance(exc, AuthThrottled):
        return "auth_throttled"
    if isinstance(exc, PermissionDenied):
        return "foreign_origin"
    if isinstance(exc, NotJson):
        return "not_json"
    if isinstance(exc, AuthenticationFailed):
        return "unauthorized"
    if isinstance(exc, RateLimited):
        return "rate_limited"
    if isinstance(exc, RequestTooLarge):
        return "too_large"
    return "too_many_messages"


def _client_address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def _presented_key(scope: Scope) -> str | None:
    headers: dict[bytes, bytes] = dict(scope["headers"])
    key = headers.get(b"x-api-key")
    if key:
        return key.decode("latin-1")
    auth = headers.get(b"authorization", b"").decode("latin-1")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def _replay(body: bytes, receive: Receive, first: Message | None = None) -> Receive:
    pending: list[Message] = (
        [first] if first is not None else [{"type": "http.request", "body": body, "more_body": False}]
    )

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed
