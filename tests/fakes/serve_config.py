"""`hotspare serve --config` files that put a real server in front of the fake providers: their
`[[upstreams]]` tables, with quick timeouts and a quick breaker by default so that a test sees
failover, probes and failback in well under a second, and `serving`, which runs a server on one.
Values are written as TOML (strings quoted, lists as arrays); a `base_url` of "{anthropic}" stays a
`str.format` placeholder for the fake's address.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.serving import RunningServer, start_server, stop_server

QUICK_TIMEOUTS: dict[str, float] = {"connect_s": 1, "first_token_s": 1.5, "idle_s": 1, "total_s": 30}
QUICK_BREAKER: dict[str, float] = {
    "consecutive_failures": 4,
    "min_requests": 1000,
    "open_s": 0.3,
    "probe_interval_s": 0.1,
    "close_after_successes": 1,
}


def upstream_table(
    name: str,
    kind: str,
    base_url: str,
    models: list[str],
    *,
    api_key: str = "forward",
    timeouts: dict[str, float] | None = QUICK_TIMEOUTS,
    breaker: dict[str, float] | None = QUICK_BREAKER,
) -> str:
    """One `[[upstreams]]` table with its `timeouts` and `breaker` sub-tables (None leaves one out)."""
    fields = {"name": name, "kind": kind, "base_url": base_url, "api_key": api_key, "models": models}
    lines = ["[[upstreams]]", *_assignments(fields)]
    for table, values in (("timeouts", timeouts), ("breaker", breaker)):
        if values is not None:
            lines += [f"[upstreams.{table}]", *_assignments(values)]
    return "\n".join(lines) + "\n"


def _assignments(values: dict[str, object]) -> list[str]:
    return [f"{key} = {json.dumps(value)}" for key, value in values.items()]


@contextmanager
def serving(config: str, workdir: Path) -> Iterator[RunningServer]:
    """`hotspare serve --config` on `config` (the TOML text) in `workdir`, stopped on exit."""
    path = workdir / "hotspare.toml"
    path.write_text(config)
    running = start_server(workdir, "--config", str(path))
    try:
        yield running
    finally:
        stop_server(running)
