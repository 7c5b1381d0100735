"""What a user writes to configure operations: access control, request limits, alerts, early warning
and the request log. TOML shape (sections of the `--config` file, every key optional)::

    [access]
    api_keys = []                     # client keys for hotspare itself; HOTSPARE_API_KEYS adds more.
                                      # None configured: no key is checked (loopback only)
    max_requests_per_minute = 0       # per key; 0 = unlimited
    max_body_bytes = 8000000          # larger request bodies get 413
    max_messages = 2000               # more messages (or input items) get 400
    public_ops = false                # true: /, /status, /status.json and /metrics need no key
    allowed_hosts = []                # without keys: Host names accepted besides loopback names and
                                      # [server] host (e.g. an /etc/hosts alias of 127.0.0.1)

    [alerts]
    webhook_url = "http://127.0.0.1:9000/hook"   # POSTed JSON on breaker open/close, failover, failback
    max_attempts = 5
    backoff_s = 0.5                   # doubled after each failed delivery
    timeout_s = 5
    failover_cooldown_s = 60          # at most one failover alert per upstream and cause in this time

    [early_warning]
    enabled = true
    window_s = 60
    min_requests = 5
    max_error_rate = 0.2              # degrade at this error rate (the breaker opens at a higher one)
    ttft_factor = 2.0                 # ... or when recent TTFT reaches this many times the baseline
    min_ttft_s = 0.25                 # ... and at least this long
    shed_share = 0.5                  # a degraded upstream's share of requests sent to the next backend
    hedge_scale = 0.5                 # its hedge delay is multiplied by this

    [log]
    requests = true                   # one JSON line per request on the "hotspare.requests" logger
    include_prompts = false           # add the request body to that line (off: prompts stay private)
"""

from __future__ import annotations

import os

from pydantic import Field, field_validator, model_validator

from hotspare.core.config import Section

KEYS_ENV = "HOTSPARE_API_KEYS"
MIN_KEY_CHARS = 16  # a short key is guessable; 16 random characters are not


class AccessSettings(Section):
    """Who may use hotspare, and how much one request may carry."""

    api_keys: tuple[str, ...] = Field(
        default=(), strict=False, description="client keys; HOTSPARE_API_KEYS (comma-separated) adds more"
    )
    max_requests_per_minute: int = Field(default=0, ge=0, description="per key; 0 = unlimited")
    max_body_bytes: int = Field(default=8_000_000, ge=1024, description="request bodies above get 413")
    max_messages: int = Field(default=2000, ge=1, description="more messages or input items get 400")
    public_ops: bool = Field(default=False, description="/, /status, /status.json, /metrics without a key")
    allowed_hosts: tuple[str, ...] = Field(
        default=(),
        strict=False,
        description="without keys: Host names accepted besides loopback names and [server] host",
    )

    @model_validator(mode="before")
    @classmethod
    def _check_keys(cls, data: object) -> object:
        # pydantic quotes a failing input: blank the keys before complaining, never echo them.
        if isinstance(data, dict) and "api_keys" in data:
            keys = data["api_keys"]
            if not isinstance(keys, list | tuple) or not all(_is_key(k) for k in keys):
                data["api_keys"] = "<hidden>"
                raise ValueError(
                    f"api_keys must be a list of strings of at least {MIN_KEY_CHARS} characters, "
                    "without spaces or commas"
                )
        return data

    def keys(self, environ: dict[str, str] | None = None) -> tuple[str, ...]:
        """The configured keys plus those in HOTSPARE_API_KEYS. Raises ValueError (never quoting a
        key) if the variable holds an unusable one."""
        env = os.environ if environ is None else environ
        extra = tuple(k.strip() for k in env.get(KEYS_ENV, "").split(",") if k.strip())
        if not all(_is_key(k) for k in extra):
            raise ValueError(f"{KEYS_ENV}: every key must be at least {MIN_KEY_CHARS} characters")
        return tuple(dict.fromkeys((*self.api_keys, *extra)))


def _is_key(value: object) -> bool:
    return (
        isinstance(value, str)
        and len(value) >= MIN_KEY_CHARS
        and not any(c.isspace() or c == "," for c in value)
    )


class AlertSettings(Section):
    """Webhook alerts on breaker open/close, failover and failback."""

    webhook_url: str | None = Field(default=None, description="POST target; unset = no alerts")
    max_attempts: int = Field(default=5, ge=1, le=20, description="deliveries tried per alert")
    backoff_s: float = Field(default=0.5, gt=0, le=60, description="first retry delay, doubled each time")
    max_backoff_s: float = Field(
        default=30.0, gt=0, le=600, description="the doubling stops here: no retry waits longer"
    )
    timeout_s: float = Field(default=5.0, gt=0, description="one delivery's timeout")
    failover_cooldown_s: float = Field(
        default=60.0, ge=0, description="at most one failover alert per upstream and cause in this long"
    )

    @field_validator("webhook_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"webhook_url must start with http:// or https://, got {value!r}")
        return value


class EarlyWarningSettings(Section):
    """When an upstream is degraded before its breaker trips."""

    enabled: bool = True
    window_s: float = Field(default=60.0, gt=0, description="sliding window of attempts and TTFTs")
    min_requests: int = Field(default=5, ge=1, description="attempts in the window before rates count")
    max_error_rate: float = Field(default=0.2, gt=0, le=1, description="degrade at this error rate")
    ttft_factor: float = Field(default=2.0, gt=1, description="degrade at this x the baseline TTFT")
    min_ttft_s: float = Field(default=0.25, ge=0, description="a TTFT below this never degrades")
    shed_share: float = Field(default=0.5, ge=0, le=1, description="share sent to the next backend")
    hedge_scale: float = Field(default=0.5, gt=0, le=1, description="factor on a degraded hedge delay")


class LogSettings(Section):
    """The per-request JSON log."""

    requests: bool = Field(default=True, description="one JSON line per request")
    include_prompts: bool = Field(default=False, description="add the request body to that line")
