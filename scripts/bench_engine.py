#!/usr/bin/env python
"""Benchmark hotspare's local engine against llama.cpp's `llama-server` and llama-cpp-python's server.

One run, same model (SmolLM2-135M-Instruct: by default every server loads the Q8_0 copy hotspare
makes of the shipped Q4_1 file, `--weights shipped` gives them all the Q4_1 file), same thread count
(2), greedy, OpenAI streaming API, distinct prompts. Workloads:

- streams: 1, 4, 8, 16 concurrent 64-token stories; aggregate tokens/s (completion tokens over the
  wall time of the batch), TTFT p50/p95, inter-token p95 (waits between streamed chunks);
- shared: a ~2.2k-token system prompt, TTFT cold, then warm (median of 3 new questions);
- agent: interleaved multi-turn conversations (bench_agent.py), TTFT per turn p50/p95 over all but
  the first request, then one more stream to see decoding speed with a full prefix cache;
- failover (hotspare only): TTFT of the next turn of a warmed 4,000+-token conversation.

Each (workload, server) pair is one unit: wait until other processes leave the CPU alone, start a
fresh server, run the workload, stop the server. Servers never run together (two cores). A unit that
other processes disturbed (they took more than --max-disturbed-share of the CPU meanwhile) is run
again, up to --attempts times, and the least disturbed attempt is reported with its share.

    scripts/build-llama-server                  # once, ~15 min on two cores
    python -m scripts.bench_engine --json /tmp/bench.json     # prints Markdown tables with ratios
    python -m scripts.bench_engine --servers hotspare --workloads streams failover
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks import servers
from benchmarks.report import Measured, percentile, report
from scripts.bench_agent import agent_system_prompt, run_agent, run_failover, run_shared_prefix

SERVERS = ("hotspare", "llama-server", "llama-cpp-python", "llama-server-pinned")
"""llama-server-pinned runs the agent workload only: llama-server told which slot each conversation
uses (`id_slot`), which its own slot choice does not do for conversations sharing a system prompt."""
WORKLOADS = ("streams", "shared", "agent", "failover", "context", "idle8")
LEVELS = (1, 4, 8, 16)
MAX_TOKENS = 64
CONTEXT_TOKENS = 8192
SYSTEM = "You are a storyteller. You always write long, detailed stories of at least 600 words."
_ADJECTIVES = ("brave", "tiny", "clumsy", "ancient", "curious", "sleepy", "clever", "lonely", "proud")
_ANIMALS = ("otter", "falcon", "tortoise", "lynx", "beaver", "heron", "badger", "walrus", "gecko")
_PLACES = ("lighthouse", "desert", "library", "volcano", "harbor", "glacier", "bakery", "jungle")


def story_prompts(nonce: str, level: int) -> list[str]:
    """`level` distinct prompts; the nonce keeps them distinct across levels and runs."""
    return [
        f"Story {nonce}-{level}-{i}: write a long story about a {_ADJECTIVES[(i + level) % 9]} "
        f"{_ANIMALS[(i * 5 + level) % 9]} who lives in a {_PLACES[(i * 7 + level) % 8]}."
        for i in range(level)
    ]


@dataclass(frozen=True, slots=True)
class LevelResult:
    num_streams: int
    tokens_per_s: float
    ttft_p50_s: float
    ttft_p95_s: float
    itl_p95_s: float
    min_completion_tokens: int
    max_completion_tokens: int
    is_counted: bool
    wall_s: float
    foreign_share: float = 0.0
    rounds_tokens_per_s: tuple[float, ...] = ()  # every round's throughput; this result is the median


async def run_level(target: servers.Target, prompts: list[str]) -> LevelResult:
    started = time.perf_counter()
    results = await asyncio.gather(
        *(
            target.chat([{"role": "system", "content": SYSTEM}, {"role": "user", "content": p}], MAX_TOKENS)
            for p in prompts
        )
    )
    wall_s = time.perf_counter() - started
    tokens = [r.completion_tokens for r in results]
    return LevelResult(
        num_streams=len(prompts),
        tokens_per_s=sum(tokens) / wall_s,
        ttft_p50_s=percentile([r.ttft_s for r in results], 50),
        ttft_p95_s=percentile([r.ttft_s for r in results], 95),
        itl_p95_s=percentile([g for r in results for g in r.gaps_s], 95),
        min_completion_tokens=min(tokens),
        max_completion_tokens=max(tokens),
        is_counted=all(r.is_counted for r in results),
        wall_s=wall_s,
    )


# ----- workloads: (target, args, nonce, engine or None) -> result -----


async def streams(target: servers.Target, args: argparse.Namespace, nonce: str, _: Any) -> Any:
    """Each level is short (a few seconds), and on two shared cores one burst varies by +-20 %: each
    level runs `--rounds` times and the round with the median throughput is reported (all rounds'
    throughputs beside it). A disturbed round is run again (new prompts) and the least disturbed kept."""
    results: dict[int, LevelResult] = {}
    for level in args.levels:
        # The first burst on a fresh server is ~15 % slower for both servers (first touch of KV and
        # batch memory): run one unmeasured, so that what is compared is the warm server.
        await run_level(target, story_prompts(f"{nonce}-warm", level))
        rounds: list[LevelResult] = []
        for r in range(args.rounds):
            best: LevelResult | None = None
            for attempt in range(args.attempts):
                meter = servers.CpuMeter()
                got = await run_level(target, story_prompts(f"{nonce}-{r}-{attempt}", level))
                got = dataclasses.replace(got, foreign_share=meter.foreign_share())
                if best is None or got.foreign_share < best.foreign_share:
                    best = got
                if got.foreign_share <= args.max_disturbed_share:
                    break
            assert best is not None
            rounds.append(best)
        rounds.sort(key=lambda x: x.tokens_per_s)
        all_tps = tuple(x.tokens_per_s for x in rounds)
        results[level] = dataclasses.replace(rounds[len(rounds) // 2], rounds_tokens_per_s=all_tps)
    return results


async def shared(target: servers.Target, args: argparse.Namespace, nonce: str, _: Any) -> Any:
    return await run_shared_prefix(target, nonce)


async def agent(target: servers.Target, args: argparse.Namespace, nonce: str, _: Any) -> Any:
    result = await run_agent(target, nonce, args.conversations, args.turns)
    # Decoding speed once the KV cache holds many cached prefixes (attention may span them).
    after = await run_level(target, story_prompts(f"{nonce}-after", 1))
    return {"agent": result, "after": after}


async def failover(target: servers.Target, args: argparse.Namespace, nonce: str, engine: Any) -> Any:
    return await run_failover(engine, target, nonce, args.failover_conversations)


CONTEXTS = (2000, 4000, 6000)
DECODE_TOKENS = 128


@dataclass(frozen=True, slots=True)
class ContextResult:
    """One stream after a prompt of `prompt_tokens`: its TTFT and its decoding speed (completion
    tokens after the first over the time from the first to the last)."""

    prompt_tokens: int | None
    ttft_s: float
    decode_tokens_per_s: float
    completion_tokens: int


async def long_chat(target: servers.Target, nonce: str, tokens: int, max_tokens: int) -> servers.StreamResult:
    """A distinct prompt of about `tokens` tokens (an agent's rules and tool list), then a story."""
    system = agent_system_prompt(nonce, min_tokens=tokens)
    question = "Now forget the tools and write a long story about a curious otter, at least 600 words."
    messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    return await target.chat(messages, max_tokens)


async def context(target: servers.Target, args: argparse.Namespace, nonce: str, _: Any) -> Any:
    """1-stream decoding at 2k, 4k and 6k tokens of context (issue 15's target: 40 tokens/s at 6k).
    Each length `--rounds` times with new prompts; the round with the median decode speed is kept."""
    results: dict[int, ContextResult] = {}
    for tokens in CONTEXTS:
        rounds = []
        for r in range(args.rounds):
            got = await long_chat(target, f"{nonce}-ctx{tokens}-{r}", tokens, DECODE_TOKENS)
            decode_s = max(got.total_s - got.ttft_s, 1e-9)
            speed = max(got.completion_tokens - 1, 0) / decode_s
            rounds.append(ContextResult(got.prompt_tokens, got.ttft_s, speed, got.completion_tokens))
        rounds.sort(key=lambda x: x.decode_tokens_per_s)
        results[tokens] = rounds[len(rounds) // 2]
    return results


async def idle8(target: servers.Target, args: argparse.Namespace, nonce: str, _: Any) -> Any:
    """8 streams right after a 6k-token conversation (its cells stay cached, idle): issue 15's
    target is at least llama-server's throughput. `--rounds` bursts, the median kept."""
    await long_chat(target, f"{nonce}-idle", 6000, 16)
    await run_level(target, story_prompts(f"{nonce}-idle-warm", 8))
    rounds = [await run_level(target, story_prompts(f"{nonce}-idle-{r}", 8)) for r in range(args.rounds)]
    rounds.sort(key=lambda x: x.tokens_per_s)
    median = rounds[len(rounds) // 2]
    return dataclasses.replace(median, rounds_tokens_per_s=tuple(x.tokens_per_s for x in rounds))


Workload = Callable[[servers.Target, argparse.Namespace, str, Any], Awaitable[Any]]
_WORKLOADS: dict[str, Workload] = {
    "streams": streams,
    "shared": shared,
    "agent": agent,
    "failover": failover,
    "context": context,
    "idle8": idle8,
}


# ----- units -----


@contextlib.asynccontextmanager
async def start(
    name: str, workload: str, args: argparse.Namespace, log_dir: Path
) -> AsyncIterator[tuple[servers.Target, Any]]:
    """A fresh server; for hotspare in-process (and always for failover, which needs
    `LocalEngine.warm`) also the engine."""
    if name.startswith("llama-server"):
        pin_slots = name == "llama-server-pinned"
        context_tokens = 2 * CONTEXT_TOKENS
        async with servers.llama_server(
            log_dir, num_slots=16, context_tokens=context_tokens, pin_slots=pin_slots
        ) as t:
            yield t, None
    elif name == "llama-cpp-python":
        async with servers.llama_cpp_python_server(log_dir, context_tokens=CONTEXT_TOKENS) as t:
            yield t, None
    elif args.hotspare == "http" and workload != "failover":
        async with servers.hotspare_server(log_dir) as t:
            yield t, None
    else:
        async with servers.hotspare_in_process() as engine:
            yield servers.InProcessTarget(engine), engine


async def measure_unit(
    workload: str, name: str, args: argparse.Namespace, log_dir: Path, nonce: str
) -> Measured:
    """Run one workload on a fresh server. Errors are recorded, not raised."""
    await servers.wait_until_quiet(args.max_foreign_share, args.quiet_wait_s, log)
    load = servers.load_average()
    meter = None
    try:
        async with asyncio.timeout(args.unit_timeout_s), start(name, workload, args, log_dir) as (t, e):
            await t.chat([{"role": "user", "content": "Say hello."}], 8)  # first-request allocations
            meter = servers.CpuMeter()
            value = await _WORKLOADS[workload](t, args, nonce, e)
            share = meter.foreign_share()
    except Exception as exc:  # one unit's failure is reported; the others still run
        share = meter.foreign_share() if meter else 0.0
        log(f"{workload} on {name}: FAILED: {type(exc).__name__}: {exc}")
        return Measured(None, share, load, f"{type(exc).__name__}: {exc}")
    log(f"{workload} on {name}: {value}")
    log(f"{workload} on {name}: other processes used {share:.0%} of the CPU meanwhile")
    return Measured(value, share, load)


async def run(args: argparse.Namespace) -> dict[str, dict[str, Measured]]:
    """Workload by workload, server by server (so the units compared run close in time)."""
    run_id = f"{time.time():.0f}"
    log_dir = servers.scratch_dir()
    log(f"logs in {log_dir}; hotspare via {args.hotspare}; load {servers.load_average()}")
    log(f"every server loads {servers.weights_path()}")
    results: dict[str, dict[str, Measured]] = {}
    for workload in args.workloads:
        if workload == "streams" and args.rounds > 1:
            names = [n for n in args.servers if _runs(workload, n)]
            results[workload] = await _interleaved_streams(names, args, log_dir, run_id)
            continue
        for name in (n for n in args.servers if _runs(workload, n)):
            for attempt in range(args.attempts):
                got = await measure_unit(workload, name, args, log_dir, f"{run_id}-{attempt}")
                best = results.setdefault(workload, {}).get(name)
                if best is None or best.error or (not got.error and got.foreign_share < best.foreign_share):
                    results[workload][name] = got
                if got.foreign_share <= args.max_disturbed_share or attempt + 1 == args.attempts:
                    break
                log(f"{workload} on {name}: disturbed by other processes; measuring again")
    return results


async def _interleaved_streams(
    names: list[str], args: argparse.Namespace, log_dir: Path, run_id: str
) -> dict[str, Measured]:
    """The streams workload round by round, the servers taking turns within each round (a fresh
    server per round): the machine's drift over a run (measured: both servers' throughput rose
    ~20 % from their first round to their last) then hits every server alike instead of favouring
    whichever ran later. Per level, the round with the median throughput is reported."""
    one_round = argparse.Namespace(**{**vars(args), "rounds": 1})
    got: dict[str, list[Measured]] = {name: [] for name in names}
    for number in range(args.rounds):
        for name in names:
            got[name].append(await measure_unit("streams", name, one_round, log_dir, f"{run_id}-{number}"))
    return {name: _median_rounds(rounds) for name, rounds in got.items()}


def _median_rounds(rounds: list[Measured]) -> Measured:
    ok = [m for m in rounds if m.error is None]
    if not ok:
        return rounds[0]
    merged: dict[int, LevelResult] = {}
    for level in ok[0].value:
        results = sorted((m.value[level] for m in ok), key=lambda x: x.tokens_per_s)
        all_tps = tuple(x.tokens_per_s for x in results)
        merged[level] = dataclasses.replace(results[len(results) // 2], rounds_tokens_per_s=all_tps)
    return Measured(merged, max(m.foreign_share for m in ok), ok[0].load)


def _runs(workload: str, name: str) -> bool:
    if workload == "failover":
        return name == "hotspare"
    return name != "llama-server-pinned" or workload == "agent"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--servers", nargs="+", choices=SERVERS, default=list(SERVERS))
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument("--levels", nargs="+", type=int, default=list(LEVELS), help="concurrent streams")
    parser.add_argument("--rounds", type=int, default=3, help="runs per streams level (median reported)")
    parser.add_argument(
        "--hotspare",
        choices=("auto", "http", "in-process"),
        default="auto",
        help="how to reach hotspare (auto: `hotspare serve` if it exists)",
    )
    parser.add_argument("--conversations", type=int, default=4, help="agent workload conversations")
    parser.add_argument("--turns", type=int, default=5, help="agent workload turns per conversation")
    parser.add_argument("--failover-conversations", type=int, default=2)
    parser.add_argument(
        "--max-foreign-share",
        type=float,
        default=0.05,
        help="before each unit, wait until other processes use less than this share of the CPU",
    )
    parser.add_argument("--quiet-wait-s", type=float, default=900.0, help="longest such wait")
    parser.add_argument(
        "--max-disturbed-share",
        type=float,
        default=0.05,
        help="run a unit again if other processes used more than this share of the CPU meanwhile",
    )
    parser.add_argument("--attempts", type=int, default=3, help="runs of one unit at most")
    parser.add_argument("--unit-timeout-s", type=float, default=900.0)
    parser.add_argument(
        "--weights",
        choices=("fast", "shipped"),
        default="fast",
        help="what every server loads: the Q8_0 copy hotspare makes by default (fast_weights), or the\n"
        "Q4_1 file as shipped",
    )
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args()
    servers.FAST_WEIGHTS = args.weights == "fast"
    if args.hotspare == "auto":
        args.hotspare = "http" if servers.has_hotspare_serve() else "in-process"
    return args


async def main_async(args: argparse.Namespace) -> dict[str, dict[str, Measured]]:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await run(args)


def main() -> int:
    args = parse_args()
    try:
        results = asyncio.run(main_async(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        log("interrupted; every server started was stopped")
        return 130
    print(report(results, args.servers, args.levels, args.hotspare))
    if args.json:
        raw = {
            "args": {k: str(v) for k, v in vars(args).items()},
            "results": {w: {n: asdict(m) for n, m in by.items()} for w, by in results.items()},
        }
        args.json.write_text(json.dumps(raw, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
