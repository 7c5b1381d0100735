"""The full soak: thousands of mixed requests (both APIs, streaming and not, concurrent) against a real
`hotspare serve` in front of fault-injecting fake providers that switch modes at random, with the
local engine taking the overflow. Loopback only, bounded in count and time; exits 1 if any request
hung, was lost or was truncated, or the server's memory grew past the limit.

    python -m scripts.soak [--requests 3000] [--concurrency 16] [--max-tokens 8] [--deadline-s 540] [--seed 7]

The CI-sized run of the same driver is tests/ops/test_soak.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path

from tests.fakes.upstreams import FakeUpstream
from tests.ops.soak import SOAK_CONFIG, SoakPlan, run_soak
from tests.serving import start_server, stop_server

MAX_RSS_GROWTH_BYTES = 64 * 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--deadline-s", type=float, default=540.0)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    plan = SoakPlan(args.requests, args.concurrency, args.max_tokens, args.seed, deadline_s=args.deadline_s)
    with (
        tempfile.TemporaryDirectory(prefix="hotspare-soak-") as tmp,
        FakeUpstream("anthropic") as anthropic,
        FakeUpstream("openai") as openai,
    ):
        workdir = Path(tmp)
        config = workdir / "soak.toml"
        config.write_text(SOAK_CONFIG.format(anthropic=anthropic.url, openai=openai.url))
        os.environ["HS_SOAK_UPSTREAM_KEY"] = "sk-soak-upstream"
        server = start_server(workdir, "--config", str(config))
        try:
            report = asyncio.run(run_soak(server.base_url, server.process.pid, [anthropic, openai], plan))
        finally:
            stop_server(server)
    summary = report.summary()
    print(json.dumps(summary, indent=2))
    bad = report.outcomes["hung"] + report.outcomes["lost"] + report.outcomes["truncated"]
    ok = bad == 0 and report.num_sent == plan.num_requests and report.rss_growth_bytes < MAX_RSS_GROWTH_BYTES
    print("soak passed" if ok else "soak FAILED", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
