"""The failover chain as the router runs it, built from the settings (`Settings.router_config()` in
hotspare/config.py): the mode, the upstreams in order, and how the local model joins the chain.

TOML shape (top level of the `--config` file; each `[[upstreams]]` entry is upstream/config.py's)::

    mode = "auto"                      # "auto" | "local-only" | "upstream-only"; default: auto
                                       # when upstreams are configured, local-only when none are
    [[upstreams]]
    ...
    [local]
    hedge = true                       # start the next backend beside an upstream slow to answer
    warm_conversations = true          # prefill conversations answered upstream into the local KV cache

`check_chain` is what the settings validate about the chain as a whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

from hotspare.upstream.config import UpstreamConfig


class Mode(StrEnum):
    AUTO = "auto"
    LOCAL_ONLY = "local-only"
    UPSTREAM_ONLY = "upstream-only"


@dataclass(frozen=True, slots=True)
class LocalConfig:
    """How the local model joins the chain (from `[local]`)."""

    hedge: bool = True  # start the next backend beside an upstream slow to its first token
    warm_conversations: bool = True  # prefill conversations answered upstream into the local KV cache


@dataclass(frozen=True, slots=True)
class RouterConfig:
    mode: Mode | None = None
    upstreams: tuple[UpstreamConfig, ...] = ()
    local: LocalConfig = LocalConfig()

    @property
    def effective_mode(self) -> Mode:
        if self.mode is not None:
            return self.mode
        return Mode.AUTO if self.upstreams else Mode.LOCAL_ONLY


def check_chain(mode: Mode | None, upstreams: tuple[UpstreamConfig, ...]) -> None:
    """Raises ValueError for a chain that cannot run: duplicate names, upstream-only without
    upstreams, a forwarded key that two hosts would be sent."""
    names = [u.name for u in upstreams]
    for name in names:
        if names.count(name) > 1:
            raise ValueError(f"upstream names must be unique, {name!r} appears {names.count(name)} times")
    if mode is Mode.UPSTREAM_ONLY and not upstreams:
        raise ValueError('mode = "upstream-only" needs at least one [[upstreams]] entry')
    _check_forwarding(upstreams)


def _check_forwarding(upstreams: tuple[UpstreamConfig, ...]) -> None:
    """A forwarded key is the client's key for one vendor. Two forward-mode upstreams of one kind on
    different hosts would each be sent it, and one of them is not the vendor it belongs to."""
    first: dict[str, UpstreamConfig] = {}
    for u in upstreams:
        if u.api_key != "forward":
            continue
        seen = first.setdefault(u.kind, u)
        if urlsplit(seen.base_url).hostname != urlsplit(u.base_url).hostname:
            raise ValueError(
                f"upstreams {seen.name!r} ({seen.base_url}) and {u.name!r} ({u.base_url}) both have "
                f'api_key = "forward" and kind = {u.kind!r}: a client\'s {u.kind} key would be sent to '
                "two different hosts, and it belongs to only one of them. Give all but one of them an "
                '"env:VARIABLE" key.'
            )
