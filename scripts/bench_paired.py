"""8 streams beside an idle 6k-token conversation (bench_engine.py's idle8) on `hotspare serve` and
llama-server, both loaded at once, their bursts taking turns.

Why: on the shared 2-core VM the machine's speed drifts by 10-20 % over minutes. bench_engine.py runs
one server after the other, so a drift between the two units reads as a difference between servers:
two back-to-back runs of its idle8 (7 rounds each) read hotspare / llama-server 1.02 and then 0.82,
each server's rounds within +-5 % of their median. Here every round runs one burst on each server,
the order alternating, with a pause before each burst in which the other server finishes whatever it
does when idle (hotspare demotes and persists idle conversations after a quiet second). The paired
ratios are printed beside the medians.

    scripts/build-llama-server                       # once
    python -m scripts.bench_paired --rounds 9
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks import servers
from scripts.bench_engine import CONTEXT_TOKENS, long_chat, run_level, story_prompts


async def _prepare(target: servers.HttpTarget, nonce: str) -> None:
    """The first request's allocations, the idle 6k conversation, one unmeasured burst."""
    await target.chat([{"role": "user", "content": "Say hello."}], 8)
    await long_chat(target, f"{nonce}-idle", 6000, 16)
    await run_level(target, story_prompts(f"{nonce}-warm", 8))


async def run(args: argparse.Namespace) -> None:
    nonce = f"paired-{time.time_ns()}"
    log_dir = Path(tempfile.mkdtemp(prefix="hotspare-paired-"))
    print(f"logs in {log_dir}", flush=True)
    async with contextlib.AsyncExitStack() as stack:
        hotspare = await stack.enter_async_context(servers.hotspare_server(log_dir))
        llama = await stack.enter_async_context(
            servers.llama_server(log_dir, num_slots=16, context_tokens=2 * CONTEXT_TOKENS)
        )
        targets = {"hotspare": hotspare, "llama-server": llama}
        for name, target in targets.items():
            await _prepare(target, f"{nonce}-{name}")
        speeds: dict[str, list[float]] = {name: [] for name in targets}
        for r in range(args.rounds):
            order = list(targets) if r % 2 == 0 else list(reversed(targets))
            for name in order:
                await asyncio.sleep(args.pause_s)
                got = await run_level(targets[name], story_prompts(f"{nonce}-{name}-{r}", 8))
                speeds[name].append(got.tokens_per_s)
            print(f"round {r + 1}: " + ", ".join(f"{n} {speeds[n][-1]:.1f}" for n in targets), flush=True)
    report(speeds)


def report(speeds: dict[str, list[float]]) -> None:
    ours, theirs = speeds["hotspare"], speeds["llama-server"]
    paired = [a / b for a, b in zip(ours, theirs, strict=True)]
    print("| 8 streams after a 6k conversation, tok/s | hotspare | llama-server | hotspare / llama-server |")
    print("| --- | --- | --- | --- |")
    print(
        f"| median of {len(ours)} rounds | {statistics.median(ours):.1f} | {statistics.median(theirs):.1f} "
        f"| {statistics.median(ours) / statistics.median(theirs):.2f} |"
    )
    print(f"| median of the rounds' ratios | | | {statistics.median(paired):.2f} |")
    print(f"| range | {min(ours):.1f}-{max(ours):.1f} | {min(theirs):.1f}-{max(theirs):.1f} "
          f"| {min(paired):.2f}-{max(paired):.2f} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--pause-s", type=float, default=4.0, help="quiet time before each burst")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
