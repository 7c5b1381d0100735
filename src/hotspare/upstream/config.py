"""What a user writes to configure one upstream: where it is, whose key it gets, which models it
serves, its timeouts and its circuit breaker.

TOML shape (one `[[upstreams]]` entry of the `--config` file; the chain is their order)::

    [[upstreams]]
    name = "anthropic"
    kind = "anthropic"                 # or "openai" (any OpenAI-compatible provider)
    base_url = "https://api.anthropic.com"
    api_key = "forward"                # forward the client's own key, or "env:ANTHROPIC_API_KEY"
    models = ["claude-*"]              # globs of client model names it serves
    rename = { "claude-fast" = "claude-haiku-4-5" }   # optional: client name -> upstream name
    hedge_delay_s = 1.5                # optional; default derived from recent time-to-first-token
    continuation = "restart"           # how it takes over a broken answer: "prefill" | "restart" |
                                       # "none"; default "prefill" for anthropic, "restart" for openai
    max_continuation_tokens = 4096     # the most a takeover continuation may add
    [upstreams.timeouts]
    connect_s = 2
    first_token_s = 10
    idle_s = 15
    total_s = 600
    [upstreams.breaker]                # optional, these are the defaults
    consecutive_failures = 5
    window_s = 60
    min_requests = 10
    max_error_rate = 0.5
    open_s = 5
    half_open_requests = 1

Values are strict as in every section (core/config.py). How the chain is checked as a whole
(unique names, one host per forwarded vendor key) is router/config.py's.
"""

from __future__ import annotations

import fnmatch
import os
import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from hotspare.core.config import Section
from hotspare.core.errors import ConfigError

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_ENV_REF = re.compile(r"env:[A-Za-z_][A-Za-z0-9_]*")


class TimeoutsConfig(Section):
    """Deadlines of one upstream attempt, in seconds."""

    connect_s: float = Field(default=2.0, gt=0, description="TCP + TLS connect")
    first_token_s: float = Field(default=10.0, gt=0, description="request sent -> first answer content")
    idle_s: float = Field(default=15.0, gt=0, description="longest silence between stream events")
    total_s: float = Field(default=600.0, gt=0, description="the whole attempt, headers to last byte")


class BreakerConfig(Section):
    """When an upstream's circuit opens, and how it closes again."""

    consecutive_failures: int = Field(default=5, ge=1, description="open after this many failures in a row")
    window_s: float = Field(default=60.0, gt=0, description="sliding window for the error rate")
    min_requests: int = Field(default=10, ge=1, description="attempts in the window before the rate counts")
    max_error_rate: float = Field(
        default=0.5, gt=0, le=1, description="open when failures/attempts reach this"
    )
    open_s: float = Field(default=5.0, gt=0, description="wait after opening before the first recovery probe")
    probe_interval_s: float = Field(default=2.0, gt=0, description="between recovery probes while open")
    half_open_requests: int = Field(
        default=1, ge=1, description="real requests let through at once to test it"
    )
    close_after_successes: int = Field(default=2, ge=1, description="half-open successes that close it")


class UpstreamConfig(Section):
    name: str
    kind: Literal["anthropic", "openai"]
    base_url: str
    api_key: str = Field(default="forward", description='"forward" or "env:VAR"')
    models: tuple[str, ...] = Field(
        default=("*",), min_length=1, strict=False, description="globs of client model names"
    )
    rename: dict[str, str] = Field(default_factory=dict, description="client model -> upstream model")
    max_context_tokens: int | None = Field(default=None, gt=0, description="used to route context overflows")
    hedge_delay_s: float | None = Field(default=None, gt=0)
    max_retry_after_s: float = Field(default=2.0, ge=0, description="honour a 429's Retry-After up to this")
    continuation: Literal["prefill", "restart", "none"] | None = Field(
        default=None,
        description="how it takes over a broken answer (router/takeover.py); None: prefill for anthropic, "
        "restart for openai (an OpenAI-compatible server is never assumed to continue a prefill)",
    )
    max_continuation_tokens: int = Field(default=4096, ge=1, description="the most a takeover may add")
    timeouts: TimeoutsConfig = TimeoutsConfig()
    breaker: BreakerConfig = BreakerConfig()

    @field_validator("name", mode="before")
    @classmethod
    def _check_name(cls, value: object) -> object:
        if not isinstance(value, str) or not _NAME.fullmatch(value):
            raise ValueError(f"name must be 1-64 letters, digits, '.', '_' or '-', got {value!r}")
        return value

    @field_validator("kind", mode="before")
    @classmethod
    def _check_kind(cls, value: object) -> object:
        if value not in ("anthropic", "openai"):
            raise ValueError(f'kind must be "anthropic" or "openai", got {value!r}')
        return value

    @field_validator("base_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {value!r}")
        return value.rstrip("/")

    @model_validator(mode="before")
    @classmethod
    def _check_key(cls, data: object) -> object:
        # A wrong api_key may be a pasted key. pydantic quotes the input of a failing validator, so
        # the value is blanked in place before raising: the error names the field, never the key.
        if isinstance(data, dict) and "api_key" in data:
            value = data["api_key"]
            is_ref = isinstance(value, str) and (value == "forward" or bool(_ENV_REF.fullmatch(value)))
            if not is_ref:
                data["api_key"] = "<hidden>"
                raise ValueError(
                    'api_key must be "forward" or "env:VARIABLE_NAME" (a literal key is not accepted)'
                )
        return data

    @property
    def continuation_mode(self) -> str:
        if self.continuation is not None:
            return self.continuation
        return "prefill" if self.kind == "anthropic" else "restart"

    def breaker_models(self) -> tuple[tuple[str, ...], bool]:
        """The upstream model names that get a circuit breaker of their own -- the literal entries of
        `models` (renamed) and the targets of `rename`: a bounded set, named by the config, never by
        what a client sends -- and whether a glob in `models` needs a shared one for the rest."""
        literal = [self.upstream_model(m) for m in self.models if not _is_glob(m)]
        named = tuple(dict.fromkeys([*literal, *self.rename.values()]))
        return named, any(_is_glob(m) for m in self.models)

    def serves(self, model: str) -> bool:
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)

    def upstream_model(self, model: str) -> str:
        return self.rename.get(model, model)

    def resolve_env_key(self) -> str | None:
        """The key from the environment, or None for "forward"; raises ConfigError naming a missing var."""
        if self.api_key == "forward":
            return None
        var = self.api_key[4:]
        value = os.environ.get(var)
        if not value:
            raise ConfigError(f"upstream {self.name!r}: environment variable {var} (its api_key) is not set")
        return value


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")
