"""What the noise stop costs: batched decoding with `noise_stop_nats` on (the default) and off.

The stop reads the entropy of each sequence's next-token distribution every other token (numpy over
the logits, engine/repetition.py). This runs the same greedy workload -- N concurrent ~256-token
answers, distinct prompts -- through the real engine (LocalEngine, the embedded model) with the stop
on and off, the two taking turns (and turns going first: the second of a pair ran ~5 % faster either
way here), and prints tokens/s per round, the medians and their ratio.

    python -m scripts.bench_noise_stop --streams 8 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from hotspare.core.types import ChatRequest, Finish, Message, Role, SamplingParams
from hotspare.engine.config import EngineConfig
from hotspare.engine.local import LocalEngine
from hotspare.engine.repetition import NOISE_NATS
from hotspare.models.catalog import DEFAULT_MODEL, load_catalog, resolve_weights

TOPICS = ("a lighthouse", "a dragon", "a baker", "a river", "a robot", "a garden", "a train", "a violin")


async def one_answer(engine: LocalEngine, index: int, max_tokens: int) -> int:
    topic = TOPICS[index % len(TOPICS)]
    request = ChatRequest(
        DEFAULT_MODEL,
        (Message(Role.USER, f"Write a long story about {topic} (story {index})."),),
        SamplingParams(temperature=0, max_tokens=max_tokens),
    )
    async for event in engine.stream(request):
        if isinstance(event, Finish):
            return event.usage.output_tokens
    return 0


async def tokens_per_s(noise_stop_nats: float, streams: int, max_tokens: int) -> tuple[float, int]:
    """Aggregate tokens/s of one batch, and the noise stops it made."""
    config = EngineConfig(
        model_path=resolve_weights(load_catalog().get(DEFAULT_MODEL)),
        model_name=DEFAULT_MODEL,
        max_running=streams,
        adapt_threads=False,
        noise_stop_nats=noise_stop_nats,
    )
    engine = LocalEngine(config)
    await engine.start()
    try:
        await one_answer(engine, 99, 8)  # the first decode's one-off costs, outside the timing
        start = time.perf_counter()
        counts = await asyncio.gather(*(one_answer(engine, i, max_tokens) for i in range(streams)))
        elapsed = time.perf_counter() - start
        return sum(counts) / elapsed, int((await engine.stats())["num_noise_stops"])
    finally:
        await engine.stop()


async def main_async(args: argparse.Namespace) -> None:
    results: dict[str, list[float]] = {"on": [], "off": []}
    for round_ in range(args.rounds):
        order = [("on", NOISE_NATS), ("off", 0.0)]
        for name, limit in order if round_ % 2 == 0 else order[::-1]:  # neither always goes first
            rate, stops = await tokens_per_s(limit, args.streams, args.max_tokens)
            results[name].append(rate)
            print(f"round {round_ + 1} noise stop {name}: {rate:.1f} tok/s ({stops} noise stops)", flush=True)
    on, off = statistics.median(results["on"]), statistics.median(results["off"])
    print(f"\n{args.streams} streams x {args.max_tokens} tokens, median of {args.rounds}:")
    print(f"noise stop on {on:.1f} tok/s, off {off:.1f} tok/s, on/off {on / off:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
