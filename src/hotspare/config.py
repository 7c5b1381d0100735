"""hotspare's settings: the `--config` TOML file, validated, with command-line flags on top.

    [server]
    host = "127.0.0.1"          # the address to listen on (loopback only by default)
    port = 8765                 # hotspare's documented default port
    heartbeat_s = 10.0          # longest silence on an open stream before a ping / keep-alive

    [local]
    model = "smollm2-135m-instruct"   # a name from the model catalogue (`hotspare models list`);
                                      # unset = the best installed model that fits (`hotspare doctor`)
    check_fit = true                  # refuse a model that would not fit this machine's memory
    context_tokens = 0                # 0 = the catalogue's context length for the model
    num_threads = 0                   # CPU threads for llama.cpp (at most); 0 = all physical cores
    adapt_threads = true              # use fewer while other processes keep the cores busy
    host_cache_mib = 2048             # host RAM for conversations evicted from the KV cache (0 = off)
    flash_attention = "auto"          # "on" | "off" | "auto": timed both ways at the first start here

    hedge = true                      # start the next backend beside an upstream slow to answer

    [api]
    allowed_models = ["gpt-4o", "claude-sonnet-4-5"]   # optional; unset = any model name is served

    mode = "auto"                     # "auto" | "local-only" | "upstream-only" (top level; default:
                                      # auto when [[upstreams]] are configured, else local-only)
    [[upstreams]]                     # the failover chain, in order; see hotspare/upstream/config.py
    name = "anthropic"
    kind = "anthropic"                # or "openai" (any OpenAI-compatible provider)
    base_url = "https://api.anthropic.com"
    api_key = "forward"               # or "env:ANTHROPIC_API_KEY"
    models = ["claude-*"]
    [upstreams.timeouts]
    connect_s = 2
    first_token_s = 10
    idle_s = 15
    total_s = 600

    [access] [alerts] [early_warning] [log]   # operations: see hotspare/ops/config.py

Every section and key is optional. Unknown keys are refused with the file, the key and the value.
Every section takes values as TOML typed them (core/config.py): "80" is not a port, 2.0 is not a count.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, model_validator

from hotspare.agents.fit import ContextPolicy
from hotspare.api.config import ApiSettings, ResponsesSettings, Serving
from hotspare.core.config import Section
from hotspare.core.errors import ConfigError
from hotspare.engine.attention import FlashAttention
from hotspare.engine.repetition import NOISE_NATS
from hotspare.models.catalog import DEFAULT_MODEL
from hotspare.ops.config import AccessSettings, AlertSettings, EarlyWarningSettings, LogSettings
from hotspare.router.config import LocalConfig, Mode, RouterConfig, check_chain
from hotspare.upstream.config import UpstreamConfig

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


class ServerSettings(Section):
    """Where hotspare listens and how it keeps streams alive."""

    host: str = Field(default=DEFAULT_HOST, min_length=1, description="address to bind")
    port: int = Field(default=DEFAULT_PORT, ge=1, le=65535, description="TCP port to bind")
    heartbeat_s: float = Field(
        default=10.0, gt=0, description="longest silence on an open stream before a ping / keep-alive"
    )


class LocalSettings(Section):
    """The local model hotspare keeps warm."""

    model: str = Field(
        default=DEFAULT_MODEL,
        min_length=1,
        description="a catalogue name; unset (and no --model) = the best installed model that fits",
    )
    check_fit: bool = Field(
        default=True, description="refuse a model that would not fit this machine; false = load it anyway"
    )
    context_tokens: int = Field(default=0, ge=0, description="0 = the catalogue's context length")
    num_threads: int = Field(default=0, ge=0, description="llama.cpp CPU threads; 0 = all physical cores")
    adapt_threads: bool = Field(
        default=True, description="use fewer llama.cpp threads while other processes keep the cores busy"
    )
    host_cache_mib: int = Field(
        default=2048,
        ge=0,
        description="host RAM for the KV state of conversations evicted from the KV cache; 0 = off",
    )
    hedge: bool = Field(default=True, description="start the next backend beside an upstream slow to answer")
    max_answer_tokens: int = Field(
        default=512,
        ge=16,
        description="the most tokens one local answer (or a takeover's continuation) generates, whatever "
        "the client's max_tokens; an answer it ends reports length / max_tokens",
    )
    default_min_p: float = Field(
        default=0.05,
        ge=0,
        lt=1,
        description="the local model's min_p for a request that asks for no truncation (no top_p < 1, "
        "top_k or min_p; not greedy): small models sampled from their whole distribution turn to noise "
        "(docs/engine.md); 0 = sample what the request asks",
    )
    noise_stop_nats: float = Field(
        default=NOISE_NATS,
        ge=0,
        description="cut a local answer (reported as length) once the model's next-token entropy averages "
        "more than this many nats over 64 tokens: runaway noise (engine/repetition.py); 0 = never",
    )
    context_policy: ContextPolicy = Field(
        default=ContextPolicy.REJECT,
        strict=False,  # TOML gives a string
        description="a conversation longer than the context: 'reject' it, or 'fit' it (docs/agents.md)",
    )
    max_running: int = Field(default=16, ge=1, le=64, description="sequences decoded together in one step")
    max_queued: int = Field(
        default=64, ge=0, description="requests waiting for the local model before new ones get 'overloaded'"
    )
    kv_cache_tokens: int = Field(
        default=0, ge=0, description="KV cells for all sequences and the prefix cache; 0 = 2x the context"
    )
    step_tokens: int = Field(
        default=512, ge=16, le=8192, description="tokens in one decode step (running streams + prompt chunks)"
    )
    warm_conversations: bool = Field(
        default=True,
        description="prefill conversations passing through to upstreams into the local KV cache when idle",
    )
    persist_prefixes: bool = Field(
        default=True, description="save the hottest cached prefixes to disk so a restart is warm"
    )
    fast_weights: bool = Field(
        default=True,
        description="re-encode weights that llama.cpp multiplies slowly on a CPU (Q4_1) as Q8_0, once, "
        "kept in $HOTSPARE_HOME/weights: 2.2x faster prefill, 1.3x faster batched decoding, 1.5x the "
        "file, quality within llama.cpp's own noise (docs/engine.md)",
    )
    persist_max_mib: int = Field(
        default=512, ge=1, description="disk for the saved prefixes together; the hottest are kept within it"
    )
    flash_attention: FlashAttention = Field(
        default=FlashAttention.AUTO,
        strict=False,  # TOML gives a string
        description="llama.cpp's flash-attention kernels: 'on', 'off', or 'auto' = time both on this host "
        "at the first start (a few seconds, kept in $HOTSPARE_HOME/calibration) and take the faster "
        "(docs/engine.md)",
    )
    # Idle cells cost every decode step: attention spans the cache up to its highest used cell. Measured
    # (scripts/bench_idle.py, 4 streams, 1 thread): 7.5k idle cells +23 % per step; 2.5k kept and packed
    # at the bottom +8 %; none 0 %. A demoted conversation comes back from host RAM in ~14 ms per 2.5k
    # tokens. 4096 sends older conversations to host RAM; the most recently used one always stays in
    # the KV cache whatever its size (its next turn, or a failover, shares its cells at no cost); a
    # fixed count, since what a step pays grows with the cells, not with the context length.
    max_idle_kv_tokens: int = Field(
        default=4096,
        ge=0,
        description="idle (cached, not running) KV cells beyond which the least recently used "
        "conversations go to host RAM between steps (dropped if host_cache_mib = 0), the rest packed at "
        "the bottom of the cache when idle; 0 = no cap",
    )


class Settings(Section):
    """Everything `hotspare serve` runs with."""

    server: ServerSettings = ServerSettings()
    local: LocalSettings = LocalSettings()
    api: ApiSettings = ApiSettings()
    responses: ResponsesSettings = ResponsesSettings()
    mode: Mode | None = Field(
        default=None,
        strict=False,
        description="auto | local-only | upstream-only",  # TOML gives a string
    )
    upstreams: tuple[UpstreamConfig, ...] = Field(
        default=(),
        strict=False,
        description="the failover chain, in order",  # TOML gives a list
    )
    access: AccessSettings = AccessSettings()  # client keys and request limits (hotspare/ops/config.py)
    alerts: AlertSettings = AlertSettings()
    early_warning: EarlyWarningSettings = EarlyWarningSettings()
    log: LogSettings = LogSettings()

    @model_validator(mode="after")
    def _check_router(self) -> Settings:
        check_chain(self.mode, self.upstreams)  # duplicate names, upstream-only without upstreams
        return self

    def serving(self) -> Serving:
        """What the API's routes read (api/config.py)."""
        return Serving(
            api=self.api,
            responses=self.responses,
            heartbeat_s=self.server.heartbeat_s,
            local_model=self.local.model,
            max_running=self.local.max_running,
            warm_conversations=self.local.warm_conversations,
        )

    def forwarding_upstreams(self) -> tuple[str, ...]:
        """Names of the upstreams that forward the client's own key (`api_key = "forward"`)."""
        return tuple(u.name for u in self.upstreams if u.api_key == "forward")

    def router_config(self) -> RouterConfig:
        """The router's part of these settings."""
        local = LocalConfig(hedge=self.local.hedge, warm_conversations=self.local.warm_conversations)
        return RouterConfig(mode=self.mode, upstreams=self.upstreams, local=local)


def load_settings(path: Path | None) -> Settings:
    """Settings from the TOML file at `path` (defaults when None). Raises ConfigError naming the file,
    the key and the bad value."""
    if path is None:
        return Settings()
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_describe(error) for error in exc.errors(include_url=False))
        raise ConfigError(f"invalid config file {path}: {problems}") from exc


def _describe(error: Any) -> str:
    """One pydantic error as `[section] key: message (got value)`."""
    loc = [str(part) for part in error["loc"]]
    where = f"[{loc[0]}] {'.'.join(loc[1:])}" if len(loc) > 1 else loc[0] if loc else "top level"
    if error["type"] == "extra_forbidden":
        return f"{where}: unknown key"
    if error["type"] == "missing":
        return f"{where}: required"
    return f"{where}: {error['msg']} (got {error['input']!r})"
