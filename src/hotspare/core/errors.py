"""hotspare's one exception tree.

    HotspareError
    ├── InvalidRequest            the client's fault: bad JSON, wrong fields, bad values   (400)
    │   └── ContextOverflow       the prompt (plus what must be generated) does not fit    (400)
    ├── AuthenticationFailed      a missing or wrong hotspare key                          (401)
    ├── NotFound                  unknown model or route                                   (404)
    ├── Overloaded                queue or sequence limit reached; carries retry_after_s   (429/529)
    ├── BackendUnavailable        the local engine is not loaded, crashed or restarting    (503)
    ├── ModelError                a model's weights are missing, corrupt or do not fit      (startup)
    └── UpstreamError             an upstream provider failed; carries the failure class   (router)

Each API module turns these into its own wire shape (OpenAI `{"error": {...}}`, Anthropic
`{"type": "error", "error": {...}}`) in exactly one place. Code decides by type, never by text.
"""

from __future__ import annotations


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


class AuthenticationFailed(HotspareError):
    pass


class NotFound(HotspareError):
    pass


class Overloaded(HotspareError):
    """Admission refused; the client should retry after `retry_after_s` seconds."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class BackendUnavailable(HotspareError):
    pass


class ModelError(HotspareError):
    pass
