"""A CI-sized soak: a few hundred mixed requests under random faults, zero hung, lost or truncated,
memory stable. scripts/soak.py runs the same with thousands."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from tests.fakes.upstreams import FakeUpstream
from tests.serving import start_server, stop_server

from .soak import SOAK_CONFIG, SoakPlan, run_soak

pytestmark = pytest.mark.real  # `hotspare serve` as a subprocess (see tests/conftest.py)

MAX_RSS_GROWTH_BYTES = 64 * 2**20


def test_soak_under_random_faults(
    anthropic_server: FakeUpstream, openai_server: FakeUpstream, tmp_path: Path
) -> None:
    config = tmp_path / "soak.toml"
    config.write_text(SOAK_CONFIG.format(anthropic=anthropic_server.url, openai=openai_server.url))
    os.environ["HS_SOAK_UPSTREAM_KEY"] = "sk-soak-upstream"
    try:
        server = start_server(tmp_path, "--config", str(config))
    finally:
        del os.environ["HS_SOAK_UPSTREAM_KEY"]
    try:
        plan = SoakPlan(num_requests=300, concurrency=8, max_tokens=8, deadline_s=150)
        fakes = [anthropic_server, openai_server]
        report = asyncio.run(run_soak(server.base_url, server.process.pid, fakes, plan))
    finally:
        stop_server(server)
    summary = report.summary()
    print(summary)
    assert report.num_sent == plan.num_requests, summary
    assert (report.outcomes["hung"], report.outcomes["lost"], report.outcomes["truncated"]) == (0, 0, 0), (
        summary
    )
    assert report.outcomes["complete"] >= plan.num_requests // 2, summary
    assert {"anth", "oai", "local"} <= set(report.backends), summary
    assert report.rss_growth_bytes < MAX_RSS_GROWTH_BYTES, summary
    if report.duration_s > 150:
        pytest.fail(f"the CI soak took {report.duration_s:.0f} s: {summary}")
