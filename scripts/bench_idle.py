"""What idle cached KV cells cost running streams, and what `[local] max_idle_kv_tokens` gives back.

The engine core in process (no API, no engine process), SmolLM2-135M-Instruct: three old
conversations of `--conversation` tokens each (random token ids) sit idle in the KV cache, restored
from saved states so every variant starts from the same cell layout; the engine then demotes what its
cap asks for (as its idle loop does), and four streams answer short prompts together. Reported: the
median decode step while all four decode, per variant, variants interleaved round by round.

    python -m scripts.bench_idle --rounds 3 --threads 1

Variants: `empty` (no old conversations), `cap N` (N = 0: no cap, all idle cells stay), and
`cap N, no repack` (the slots kept stay where they were: attention spans the cache up to its highest
used cell, so a kept conversation above the freed cells costs as much as all of them).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

from hotspare.core.types import SamplingParams
from hotspare.engine.backends.llama_cpp import LlamaCppModel
from hotspare.engine.config import EngineConfig
from hotspare.engine.core import EngineCore, num_slots
from hotspare.engine.model import DecodeItem
from hotspare.engine.protocol import Done, Submit
from hotspare.models.catalog import DEFAULT_MODEL, load_catalog, resolve_weights

ANIMALS = ["an owl", "a fox", "a whale", "a heron"]


def _feed(model: LlamaCppModel, slot: int, tokens: list[int]) -> None:
    for i in range(0, len(tokens), model.batch_tokens):
        chunk = tokens[i : i + model.batch_tokens]
        model.decode([DecodeItem(slot, i, chunk, i + len(chunk) >= len(tokens))])


def _old_conversations(model: LlamaCppModel, n: int, size: int) -> list[tuple[list[int], object, int]]:
    rng = random.Random(1)
    saved = []
    for slot in range(n):
        tokens = [rng.randrange(100, 40000) for _ in range(size)]
        _feed(model, slot, tokens)
        state, num_bytes = model.save_state(slot)
        saved.append((tokens, state, num_bytes))
    model.clear()
    return saved


def _variant(
    model: LlamaCppModel, config: EngineConfig, saved: list, max_tokens: int, repack: bool
) -> tuple[float, float, int]:  # type: ignore[type-arg]
    """(median 4-stream decode step s, demotion (and repack) s, idle cells when the streams start).
    The old conversations fill the cells from 0 up, the last the most recently used."""
    model.clear()
    core = EngineCore(model, config, 8192)
    slots = []
    for _tokens, state, num_bytes in saved:
        slot = core.scheduler.kv.take_free_slot()
        assert slot is not None and model.restore_state(slot, state, num_bytes)
        slots.append(slot)
    for slot, (tokens, _, _) in zip(slots, saved, strict=True):
        core.scheduler.kv.adopt_idle(slot, tokens)
    started = time.perf_counter()
    while core.scheduler.needs_demotion or (repack and core.scheduler.has_cache_work):
        core.step()
    demote_s = time.perf_counter() - started
    idle = core.scheduler.cache.num_idle_tokens
    params = SamplingParams(temperature=0.8, max_tokens=max_tokens, seed=7)
    for i, animal in enumerate(ANIMALS):
        core.submit(
            Submit(
                i + 1,
                f"<|im_start|>user\nWrite a long story about {animal}.<|im_end|>\n<|im_start|>assistant\n",
                params,
            )
        )
    steps: list[float] = []
    done = 0
    while done < len(ANIMALS):
        decoding = len(core.scheduler.running) == 4 and all(s.is_decoding for s in core.scheduler.running)
        started = time.perf_counter()
        events = core.step()
        if decoding:
            steps.append(time.perf_counter() - started)
        done += sum(isinstance(e, Done) for e in events)
    return statistics.median(steps), demote_s, idle


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--conversation", type=int, default=2500)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--caps", type=int, nargs="+", default=[0, 4096, 2048])
    args = parser.parse_args()
    path = resolve_weights(load_catalog().get(DEFAULT_MODEL))
    base = EngineConfig(path, "m", max_running=8, adapt_threads=False, host_cache_mib=512)
    model = LlamaCppModel(
        path, kv_cache_tokens=16384, max_slots=num_slots(base), batch_tokens=512, num_threads=args.threads
    )
    saved = _old_conversations(model, 3, args.conversation)
    variants = {"empty": ([], 0, False), **{f"cap {c}": (saved, c, True) for c in args.caps}}
    variants |= {f"cap {c}, no repack": (saved, c, False) for c in args.caps if c >= args.conversation}
    results: dict[str, list[tuple[float, float, int]]] = {name: [] for name in variants}
    for r in range(args.rounds):
        for name, (conversations, cap, repack) in variants.items():
            config = EngineConfig(
                path, "m", max_running=8, adapt_threads=False, host_cache_mib=512, max_idle_kv_tokens=cap
            )
            results[name].append(_variant(model, config, conversations, args.max_tokens, repack))
        print(f"round {r + 1} done, load average {os.getloadavg()}", flush=True)
    for name, runs in results.items():
        steps = ", ".join(f"{s * 1e3:.1f}" for s, _, _ in runs)
        demote = ", ".join(f"{d * 1e3:.0f}" for _, d, _ in runs)
        print(
            f"{name:>24}: idle cells {runs[0][2]:5d}; 4-stream decode step ms {steps}; demotion ms {demote}"
        )


if __name__ == "__main__":
    main()
