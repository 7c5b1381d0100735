"""OpenAI `n` on the local engine: n choices of one ~840-token prompt as one request (a ChoiceGroup:
prepared, sent and tokenized once, the siblings admitted onto the first choice's prompt cells) against
n separate requests of that prompt sent at once (how the n choices ran before issue 17 point 1).

`python -m scripts.bench_choices [n] [rounds]`, in-process on the embedded model (max_running 16).
Every request carries a nonce, so nothing is cached from an earlier one. Prints per way: wall time,
prompts sent and tokenized, the engine's prompt and cached-prompt tokens, decode steps.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import AsyncIterator

from hotspare.core.types import ChatRequest, Finish, Message, Role, SamplingParams, StreamEvent
from hotspare.engine.config import EngineConfig
from hotspare.engine.local import LocalEngine
from hotspare.models.catalog import DEFAULT_MODEL, load_catalog, resolve_weights

STORY = "The lighthouse keeper counted the waves. " * 110
COUNTERS = ("num_prompts_sent", "num_prompts", "prefix_prompt_tokens", "prefix_cached_tokens", "num_steps")


def request(num_choices: int) -> ChatRequest:
    text = f"[{uuid.uuid4()}] {STORY}Summarise."
    sampling = SamplingParams(temperature=1.0, max_tokens=8)
    return ChatRequest("any", (Message(Role.USER, text),), sampling, num_choices=num_choices)


async def finish_of(events: AsyncIterator[StreamEvent]) -> Finish:
    async for event in events:
        if isinstance(event, Finish):
            return event
    raise RuntimeError("no Finish")


async def one_way(engine: LocalEngine, way: str, n: int) -> str:
    before = await engine.stats()
    started = time.perf_counter()
    if way == "group":
        grouped = request(n)
        choices = [engine.stream(grouped), *engine.more_choices(grouped)]
    else:
        separate = request(1)
        choices = [engine.stream(separate) for _ in range(n)]
    finishes = await asyncio.gather(*(finish_of(c) for c in choices))
    wall_s = time.perf_counter() - started
    after = await engine.stats()
    deltas = " ".join(f"{key}={after[key] - before[key]}" for key in COUNTERS)
    return f"{way:8s} n={n} prompt={finishes[0].usage.input_tokens} wall={wall_s:.2f}s {deltas}"


async def main(n: int, rounds: int) -> None:
    path = resolve_weights(load_catalog().get(DEFAULT_MODEL))
    engine = LocalEngine(EngineConfig(model_path=path, model_name=DEFAULT_MODEL, max_running=16))
    await engine.start()
    try:
        await finish_of(engine.stream(request(1)))  # the chat template's prefix is cached for both ways
        for _ in range(rounds):
            for way in ("separate", "group"):
                print(await one_way(engine, way, n), flush=True)
    finally:
        await engine.stop()


if __name__ == "__main__":
    asyncio.run(
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 8, int(sys.argv[2]) if len(sys.argv) > 2 else 2)
    )
