"""hotspare's one exception tree.

    HotspareError
    ├── InvalidRequest            the client's fault: bad JSON, wrong fields, bad values   (400)
    │   ├── ContextOverflow       the prompt (plus what must be generated) does not fit    (400)
    │   └── RequestTooLarge       the request body is over the configured size limit       (413)
    ├── AuthenticationFailed      a missing or wrong hotspare key                          (401)
    ├── PermissionDenied          a foreign Host or Origin on a keyless server             (403)
    ├── NotFound                  unknown model or route                                   (404)
    ├── Overloaded                queue or sequence limit reached; carries retry_after_s   (429/529)
    │   └── RateLimited           a client key used up its request limit                   (429)
    ├── BackendUnavailable        the local engine is not loaded, crashed or restarting    (503)
    │   └── EngineDied            the engine process died with the request in flight       (503)
    ├── ModelError                a model's weights are missing, corrupt or do not fit      (startup)
    ├── ConfigError               a config file is unreadable or invalid                    (startup)
    └── UpstreamError             an upstream provider failed; carries its FailureClass    (502/503)
                                  (a client-fault 4xx also carries the upstream's own body, which
                                  goes back to the client unchanged)

Each API module turns these into its own wire shape (OpenAI `{"error": {...}}`, Anthropic
`{"type": "error", "error": {...}}`) in exactly one place. Code decides by type, never by text.
"""

from __future__ import annotations

from enum import StrEnum


class HotspareError(Exception):
    """Base of every error hotspare raises on purpose. `message` is safe to show a client."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(HotspareError):
    """The request is malformed or asks for something impossible. `param` names the field, if one."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ContextOverflow(InvalidRequest):
    """The prompt needs `num_prompt_tokens` but the model's context holds `max_context_tokens`."""

    def __init__(self, num_prompt_tokens: int, max_context_tokens: int) -> None:
        super().__init__(
            f"prompt is {num_prompt_tokens} tokens, but the local model's context holds at most "
            f"{max_context_tokens} tokens (including at least one token of answer)",
            param="messages",
        )
        self.num_prompt_tokens = num_prompt_tokens
        self.max_context_tokens = max_context_tokens


class RequestTooLarge(InvalidRequest):
    """The request body is larger than hotspare accepts."""


class AuthenticationFailed(HotspareError):
    pass


class PermissionDenied(HotspareError):
    """The request may not be served from where it came (a web page's Origin, a foreign Host name)."""


class NotFound(HotspareError):
    pass


class Overloaded(HotspareError):
    """Admission refused; the client should retry after `retry_after_s` seconds."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RateLimited(Overloaded):
    """A client key has used up its request limit; retry after `retry_after_s`."""


class BackendUnavailable(HotspareError):
    pass


class EngineDied(BackendUnavailable):
    """The local engine process died (or was killed as hung) while the request was in flight;
    `cause` says how, in words (engine/supervision.py)."""

    def __init__(self, message: str, cause: str = "") -> None:
        super().__init__(message)
        self.cause = cause or message


class PoisonRequest(InvalidRequest):
    """This request crashed the local engine while it ran alone: the local model refuses it, so that
    one request cannot take the local model away from everyone (engine/supervision.py)."""


class ModelError(HotspareError):
    pass


class ConfigError(HotspareError):
    """A config file cannot be read, or a value in it is invalid; `message` names the file and field."""


class FailureClass(StrEnum):
    """Why an upstream attempt failed. The upstream clients assign exactly one; the router acts on it."""

    CONNECT_ERROR = "connect_error"  # refused, reset or DNS failure before a response
    CONNECT_TIMEOUT = "connect_timeout"
    HEADERS_TIMEOUT = "headers_timeout"  # connected, but no response headers in time
    FIRST_TOKEN_TIMEOUT = "first_token_timeout"  # headers came, the first text did not
    IDLE_TIMEOUT = "idle_timeout"  # the stream stalled between events
    TOTAL_TIMEOUT = "total_timeout"
    STREAM_CUT = "stream_cut"  # the connection broke, or the stream ended without its terminator
    SERVER_ERROR = "server_error"  # HTTP 5xx
    OVERLOADED = "overloaded"  # Anthropic 529 overloaded_error
    RATE_LIMITED = "rate_limited"  # HTTP 429, maybe with Retry-After
    MALFORMED = "malformed"  # a body or SSE event that is not the vendor's format
    STREAM_ERROR = "stream_error"  # an in-band SSE error event
    AUTH_OUTAGE = "auth_outage"  # 401/403 with a key that worked moments ago
    CONTEXT_LENGTH = "context_length"  # the upstream rejected the prompt as too long
    CLIENT_FAULT = "client_fault"  # any other 4xx: the request itself is wrong


_RETRYABLE = frozenset({FailureClass.CONNECT_ERROR, FailureClass.SERVER_ERROR, FailureClass.OVERLOADED})
_CLIENT_FAULTS = frozenset({FailureClass.CLIENT_FAULT, FailureClass.CONTEXT_LENGTH})


class UpstreamError(HotspareError):
    """An upstream provider failed one attempt.

    `failure` decides what happens next (see the properties); `status` is the upstream's HTTP status
    if it sent one; `retry_after_s` its Retry-After in seconds, if any. For client faults, `body`,
    `content_type` keep the upstream's original error response so it can go back unchanged.
    `message` never contains credentials.
    """

    def __init__(
        self,
        failure: FailureClass,
        message: str,
        *,
        upstream: str,
        status: int | None = None,
        retry_after_s: float | None = None,
        body: bytes = b"",
        content_type: str = "application/json",
    ) -> None:
        super().__init__(f"upstream {upstream!r}: {message}")
        self.failure = failure
        self.upstream = upstream
        self.status = status
        self.retry_after_s = retry_after_s
        self.body = body
        self.content_type = content_type

    @property
    def is_client_fault(self) -> bool:
        """The request itself was rejected: it goes back to the client and counts against no one."""
        return self.failure in _CLIENT_FAULTS

    @property
    def retryable(self) -> bool:
        """One more attempt on the same upstream is cheap and likely to help (a 429 only with a hint)."""
        if self.failure is FailureClass.RATE_LIMITED:
            return self.retry_after_s is not None
        return self.failure in _RETRYABLE

    @property
    def should_fail_over(self) -> bool:
        """The next backend in the chain should get the request (context-length: only a larger one)."""
        return not self.is_client_fault
