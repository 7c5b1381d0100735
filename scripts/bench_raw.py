"""Raw llama.cpp floors, through hotspare's backend wrapper but none of its scheduling: what a prefill
of a few new tokens after a long cached context costs (flash attention on and off), and what 1 vs 2
threads do to decode and prefill while the machine is busy. Numbers the engine cannot beat.

    python scripts/bench_raw.py prefill --context 4262 --new 19 1     # failover-turn floor
    python scripts/bench_raw.py threads --seconds 60                  # run it beside other load

Same model as everything else (the embedded SmolLM2-135M-Instruct Q4_1); random token ids (the
model's speed does not depend on what the tokens say); medians.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from hotspare.engine.backends.llama_cpp import DecodeItem, LlamaCppModel
from hotspare.models.catalog import DEFAULT_MODEL, load_catalog, resolve_weights

_rng = random.Random(1)


def _tokens(n: int) -> list[int]:
    return [_rng.randrange(100, 40000) for _ in range(n)]


def _model(flash_attention: bool, threads: int) -> LlamaCppModel:
    path = resolve_weights(load_catalog().get(DEFAULT_MODEL))
    return LlamaCppModel(
        path,
        kv_cache_tokens=16384,
        max_slots=64,
        batch_tokens=512,
        num_threads=threads,
        flash_attention=flash_attention,
    )


def _feed(model: LlamaCppModel, slot: int, tokens: list[int], start: int = 0) -> None:
    for i in range(0, len(tokens), model.batch_tokens):
        chunk = tokens[i : i + model.batch_tokens]
        model.decode([DecodeItem(slot, start + i, chunk, i + len(chunk) >= len(tokens))])


def prefill(args: argparse.Namespace) -> None:
    """Slot 0 holds `context` tokens, slot 2 an idle sequence of the same size; each round copies
    slot 0's prefix into slot 1 and feeds `new` tokens there."""
    models = {fa: _model(fa, args.threads) for fa in (True, False)}
    for model in models.values():
        _feed(model, 0, _tokens(args.context))
        _feed(model, 2, _tokens(args.context))
    times: dict[tuple[bool, int], list[float]] = {(fa, n): [] for fa in models for n in args.new}
    for _ in range(args.rounds):
        for fa, model in models.items():
            for n in args.new:
                model.copy_prefix(0, 1, args.context)
                started = time.perf_counter()
                _feed(model, 1, _tokens(n), args.context)
                times[fa, n].append(time.perf_counter() - started)
                model.remove(1)
    for (fa, n), values in times.items():
        print(
            f"{n:4d} new tokens after {args.context} cached, flash attention {'on ' if fa else 'off'}: "
            f"{statistics.median(values) * 1e3:7.1f} ms"
        )


def threads(args: argparse.Namespace) -> None:
    """Alternate 1 and 2 threads on one context: 8-sequence decode steps and a 50-token prefill after
    a 2.5k-token prefix, so both see the same background load."""
    model = _model(True, 2)
    for s in range(8):
        _feed(model, 10 + s, _tokens(300))
    _feed(model, 0, _tokens(2500))
    steps: dict[int, list[float]] = {1: [], 2: []}
    prefills: dict[int, list[float]] = {1: [], 2: []}
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        for n in (1, 2):
            model.set_threads(n)
            started = time.perf_counter()
            for k in range(8):
                model.decode([DecodeItem(10 + s, 300 + k, _tokens(1), True) for s in range(8)])
            steps[n].append((time.perf_counter() - started) / 8)
            for s in range(8):
                model.trim(10 + s, 300, -1)
            model.copy_prefix(0, 1, 2500)
            started = time.perf_counter()
            _feed(model, 1, _tokens(50), 2500)
            prefills[n].append(time.perf_counter() - started)
            model.remove(1)
    for n in (1, 2):
        print(
            f"{n} thread(s): 8-sequence decode step {statistics.median(steps[n]) * 1e3:.0f} ms, "
            f"50-token prefill after 2.5k {statistics.median(prefills[n]) * 1e3:.0f} ms "
            f"({len(steps[n])} rounds)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("prefill")
    p.add_argument("--context", type=int, default=4262)
    p.add_argument("--new", type=int, nargs="+", default=[19, 1])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=6)
    t = sub.add_parser("threads")
    t.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    prefill(args) if args.what == "prefill" else threads(args)


if __name__ == "__main__":
    main()
