"""Raw llama.cpp floors, through hotspare's backend wrapper but none of its scheduling: what a prefill
of a few new tokens after a long cached context costs (flash attention on and off), and what 1 vs 2
threads do to decode and prefill while the machine is busy. Numbers the engine cannot beat.

    python -m scripts.bench_raw prefill --context 4262 --new 19 1     # failover-turn floor
    python -m scripts.bench_raw threads --seconds 60                  # run it beside other load
    python -m scripts.bench_raw attention --runs 3                    # engine/calibrate.py's workloads
    python -m scripts.bench_raw start                                 # engine start: calibrating, cached
    python -m scripts.bench_raw kv-quality                            # what q8_0 KV does to the logits
    python -m scripts.bench_raw node --tokens 19 64 512 --cells 2200 4300   # one attention node, both kernels
    python -m scripts.bench_raw weights --tokens 1 8 19 28 64 512           # the Q8_0 weights, both layouts

Same model as everything else (the embedded SmolLM2-135M-Instruct Q4_1); random token ids (the
model's speed does not depend on what the tokens say); medians.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from hotspare.app import engine_config
from hotspare.config import Settings
from hotspare.engine.attention import WORKLOADS, FlashAttention, Measurement, choose
from hotspare.engine.backends.llama_cpp import LlamaCppModel
from hotspare.engine.calibrate import CONTEXT_TOKENS, PIECE_TOKENS, AttentionBench
from hotspare.engine.config import EngineConfig
from hotspare.engine.local import LocalEngine
from hotspare.engine.model import DecodeItem
from hotspare.engine.weights import WEIGHTS_DIR_NAME, prepare_weights
from hotspare.home import hotspare_home
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


def _engine_weights() -> Path:
    """The file the engine loads by default: the Q8_0 copy (made once under $HOTSPARE_HOME/weights)."""
    entry = load_catalog().get(DEFAULT_MODEL)
    return prepare_weights(
        resolve_weights(entry),
        quantization=entry.quantization,
        source_sha256=entry.sha256,
        cache_dir=hotspare_home() / WEIGHTS_DIR_NAME,
        num_threads=2,
    ).path


ATTENTION_MODES = {
    "flash on": (True, "f16"),
    "flash off": (False, "f16"),
    "flash on, q8_0 KV": (True, "q8_0"),
}
PAD_TO = 64  # the CPU flash-attention kernel's tiled path starts at 64 query rows


def attention(args: argparse.Namespace) -> None:
    """engine/calibrate.py's workloads in three modes, every workload `--runs` times in turns, plus
    a 19-token prefill padded to 64 rows by recomputing 45 cached tokens (flash attention's tiled
    path) and a 256-token prefill chunk after 1,792 cached. Medians; the choice engine/attention.py
    makes from them."""
    path = _engine_weights()
    benches = {name: AttentionBench(path, fa, args.threads, kv) for name, (fa, kv) in ATTENTION_MODES.items()}
    times: dict[tuple[str, str], list[float]] = {}
    pad = PAD_TO - 19
    for _ in range(args.runs):
        for name, bench in benches.items():
            for w in WORKLOADS[:2]:
                times.setdefault((name, w), []).append(bench.time_ms(w))
            times.setdefault((name, "decode_19_padded_to_64"), []).append(
                bench.time_decode(CONTEXT_TOKENS - pad, PAD_TO)
            )
            times.setdefault((name, "prefill_256_after_1792"), []).append(
                bench.time_decode(CONTEXT_TOKENS - PIECE_TOKENS, PIECE_TOKENS)
            )
    for bench in benches.values():
        bench.add_idle()
    for _ in range(args.runs):
        for name, bench in benches.items():
            for w in WORKLOADS[2:]:
                times.setdefault((name, w), []).append(bench.time_ms(w))
    for bench in benches.values():
        bench.close()
    median = {k: statistics.median(v) for k, v in times.items()}
    print(f"median of {args.runs}, ms, {args.threads} threads, {path.name}")
    print(f"| workload | {' | '.join(ATTENTION_MODES)} |")
    print(f"| --- |{' --- |' * len(ATTENTION_MODES)}")
    for w in (*WORKLOADS[:2], "decode_19_padded_to_64", "prefill_256_after_1792", *WORKLOADS[2:]):
        print(f"| {w} | " + " | ".join(f"{median[name, w]:.1f}" for name in ATTENTION_MODES) + " |")
    ms = [Measurement(w, median["flash on", w], median["flash off", w]) for w in WORKLOADS]
    print(f"engine/attention.py chooses flash attention {'on' if choose(ms) else 'off'}")


def _chunk_logits(path: Path, tokens: list[int], flash_attention: bool, kv_type: str) -> np.ndarray:
    """Log-probabilities of the next token after every 64-token chunk of `tokens`, fed in order."""
    model = LlamaCppModel(
        path,
        kv_cache_tokens=4096,
        max_slots=2,
        batch_tokens=64,
        num_threads=2,
        flash_attention=flash_attention,
        kv_type=kv_type,
    )
    rows = []
    for i in range(0, len(tokens), 64):
        (row,) = model.decode([DecodeItem(0, i, tokens[i : i + 64], True)])
        rows.append(model.logits(row).astype(np.float64))
    model.close()
    logits = np.array(rows)
    logits -= logits.max(axis=1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))  # type: ignore[no-any-return]


def kv_quality(args: argparse.Namespace) -> None:
    """How far the next-token distributions move from flash attention on with an f16 KV cache (the
    engine's) when flash attention is off, or the KV cache is q8_0: mean / max KL divergence over
    the positions after each 64-token chunk of this repository's docs/engine.md."""
    path = _engine_weights()
    text = (Path(__file__).resolve().parent.parent / "docs" / "engine.md").read_text()
    probe = LlamaCppModel(path, kv_cache_tokens=512, max_slots=1, batch_tokens=64, num_threads=1)
    tokens = probe.tokenize(text, add_bos=True)[: args.tokens]
    probe.close()
    ref = _chunk_logits(path, tokens, True, "f16")
    for fa, kv in ((False, "f16"), (True, "q8_0")):
        other = _chunk_logits(path, tokens, fa, kv)
        kl = (np.exp(ref) * (ref - other)).sum(axis=1)
        same = float((ref.argmax(axis=1) == other.argmax(axis=1)).mean())
        print(
            f"flash {'on ' if fa else 'off'} {kv:4s} vs flash on f16: {len(kl)} positions over "
            f"{len(tokens)} tokens, KL mean {kl.mean():.4f} max {kl.max():.4f}, same argmax {same:.0%}"
        )


async def _start_s(config: EngineConfig) -> tuple[float, str]:
    engine = LocalEngine(config)
    started = time.perf_counter()
    await engine.start()
    elapsed = time.perf_counter() - started
    describe = engine.attention.describe() if engine.attention else ""
    await engine.stop()
    return elapsed, describe


def start(args: argparse.Namespace) -> None:
    """`--runs` times: an engine start (the default settings, the Q8_0 copy already made) with an
    empty calibration folder (it calibrates), again (it reads the result), and with flash attention
    forced on (no calibration at all)."""
    entry = load_catalog().get(DEFAULT_MODEL)
    _engine_weights()
    for run in range(args.runs):
        with tempfile.TemporaryDirectory() as folder:
            auto = dataclasses.replace(
                engine_config(Settings(), entry), persist_dir=None, calibration_dir=Path(folder)
            )
            forced = dataclasses.replace(auto, flash_attention=FlashAttention.ON)
            for label, config in (("first", auto), ("later", auto), ("forced on", forced)):
                elapsed, describe = asyncio.run(_start_s(config))
                print(f"run {run + 1}, {label} start: ready in {elapsed:.2f} s; {describe}")


KERNEL_MODES = {
    "flash on, llama.cpp's kernel": ("1", "0"),
    "flash on, hotspare's kernel": ("1", "1"),
    "flash off": ("0", "1"),
}


def kernel(args: argparse.Namespace) -> None:
    """1 and 19 new tokens after a 4k-token context (copied into a fresh sequence each run), with
    two idle conversations (4k and 1.5k cells) beside it, in one child process per mode: the kernel
    switch (HOTSPARE_FA_GROUPED) is read once per process. Medians of `--runs`, ms."""
    print(
        f"| ms, median of {args.runs}, {args.threads} threads "
        "| 1 new token after 4k | 19 new tokens after 4k |"
    )
    print("| --- | --- | --- |")
    for name, (fa, grouped) in KERNEL_MODES.items():
        out = _child({"HOTSPARE_FA_GROUPED": grouped}, "kernel-child", fa, str(args.runs), str(args.threads))
        print(f"| {name} | {out[-2]} | {out[-1]} |")


def _child(switches: dict[str, str], *argv: str) -> list[str]:
    """The words `python -m scripts.bench_raw *argv` prints, run in a child process with the kernel
    `switches` in its environment (HOTSPARE_FA_GROUPED and HOTSPARE_Q8_REPACK are read once per
    process)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, **switches}
    command = [sys.executable, "-m", "scripts.bench_raw", *argv]
    return subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout.split()


def kernel_child(args: argparse.Namespace) -> None:
    model = _model(args.fa == "1", args.threads)
    _feed(model, 0, _tokens(2000))
    _feed(model, 2, _tokens(1500))
    _feed(model, 8, _tokens(4000))
    times: dict[int, list[float]] = {1: [], 19: []}
    for _ in range(args.runs):
        for n in times:
            model.copy_prefix(8, 9, 4000)
            started = time.perf_counter()
            model.decode([DecodeItem(9, 4000, _tokens(n), True)])
            times[n].append(time.perf_counter() - started)
            model.remove(9)
    print(" ".join(f"{statistics.median(v) * 1e3:.1f}" for v in times.values()))


def node(args: argparse.Namespace) -> None:
    """One flash-attention node (engine/fa_check.py's inputs: GQA 9/3, 64-wide heads, the KV cache's
    cell-major layout) for each tokens x cells, llama.cpp's kernels against hotspare's, each mode in
    `--rounds` child processes taking turns (the kernel switch is read once per process); the best
    round's median of `--runs`, ms per layer. On a shared 2-core VM one round varies by up to 1.5x."""
    sizes = ["--tokens", *map(str, args.tokens), "--cells", *map(str, args.cells)]
    shapes = [(n, cells) for n in args.tokens for cells in args.cells]  # node-child's order
    best = _best_of_rounds(args, "HOTSPARE_FA_GROUPED", "node-child", sizes, shapes)
    print(f"ms per layer, {args.threads} threads, best of {args.rounds} rounds")
    print("| query tokens x cells | llama.cpp's kernels | hotspare's kernel | ratio |")
    print("| --- | --- | --- | --- |")
    for n in args.tokens:
        for cells in args.cells:
            stock, ours = best["0", (n, cells)], best["1", (n, cells)]
            print(f"| {n} x {cells} | {stock:.2f} | {ours:.2f} | {stock / ours:.2f}x |")


def _best_of_rounds(
    args: argparse.Namespace, switch: str, child: str, extra: list[str], keys: list[Any]
) -> dict[tuple[str, Any], float]:
    """`args.rounds` rounds of `child` (which prints one figure per key, in order) with the kernel
    `switch` at 0 and then at 1, each in its own process; the lowest figure per (switch, key)."""
    best: dict[tuple[str, Any], float] = {}
    for _ in range(args.rounds):
        for value in ("0", "1"):
            out = _child({switch: value}, child, str(args.runs), str(args.threads), *extra)
            for key, figure in zip(keys, map(float, out), strict=True):
                best[value, key] = min(best.get((value, key), figure), figure)
    return best


def node_child(args: argparse.Namespace) -> None:
    from hotspare.engine.fa_check import Shape, node_seconds

    times = [
        node_seconds(Shape(n, cells, threads=args.threads, cell_major=True), args.runs) * 1e3
        for n in args.tokens
        for cells in args.cells
    ]
    print(" ".join(f"{ms:.3f}" for ms in times))


def weights(args: argparse.Namespace) -> None:
    """The weights' matrix products: `--tokens` new tokens after 64 cached (attention is negligible
    there), llama.cpp's Q8_0 layout against hotspare's (HOTSPARE_Q8_REPACK), each in `--rounds` child
    processes taking turns; the best round's median of `--runs`, ms per llama_decode."""
    tokens = ["--tokens", *map(str, args.tokens)]
    best = _best_of_rounds(args, "HOTSPARE_Q8_REPACK", "weights-child", tokens, args.tokens)
    print(f"ms per llama_decode after 64 cached tokens, {args.threads} threads, best of {args.rounds} rounds")
    print("| new tokens | llama.cpp's Q8_0 layout | hotspare's | ratio |")
    print("| --- | --- | --- | --- |")
    for n in args.tokens:
        stock, ours = best["0", n], best["1", n]
        print(f"| {n} | {stock:.1f} | {ours:.1f} | {stock / ours:.2f}x |")


def weights_child(args: argparse.Namespace) -> None:
    model = LlamaCppModel(
        _engine_weights(), kv_cache_tokens=2048, max_slots=4, batch_tokens=512, num_threads=args.threads
    )
    _feed(model, 0, _tokens(64))
    times: dict[int, list[float]] = {n: [] for n in args.tokens}
    for _ in range(args.runs):
        for n in args.tokens:
            model.copy_prefix(0, 1, 64)
            started = time.perf_counter()
            _feed(model, 1, _tokens(n), 64)
            times[n].append(time.perf_counter() - started)
            model.remove(1)
    print(" ".join(f"{statistics.median(times[n]) * 1e3:.2f}" for n in args.tokens))


def _with_child(sub: Any, name: str, runs: int) -> list[argparse.ArgumentParser]:
    """The parsers of an A/B command and of the child it runs per kernel switch (`_best_of_rounds`):
    the child takes runs and threads as positionals, the command takes them and --rounds as options."""
    parent, child = sub.add_parser(name), sub.add_parser(f"{name}-child")
    parent.add_argument("--runs", type=int, default=runs)
    parent.add_argument("--threads", type=int, default=2)
    parent.add_argument("--rounds", type=int, default=3)
    child.add_argument("runs", type=int)
    child.add_argument("threads", type=int)
    return [parent, child]


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
    a = sub.add_parser("attention")
    a.add_argument("--threads", type=int, default=2)
    a.add_argument("--runs", type=int, default=3)
    s = sub.add_parser("start")
    s.add_argument("--runs", type=int, default=3)
    q = sub.add_parser("kv-quality")
    q.add_argument("--tokens", type=int, default=2048)
    k = sub.add_parser("kernel")
    k.add_argument("--runs", type=int, default=5)
    k.add_argument("--threads", type=int, default=2)
    c = sub.add_parser("kernel-child")
    c.add_argument("fa")
    c.add_argument("runs", type=int)
    c.add_argument("threads", type=int)
    for n in _with_child(sub, "node", runs=20):
        n.add_argument("--tokens", type=int, nargs="+", default=[19, 64, 512])
        n.add_argument("--cells", type=int, nargs="+", default=[2200, 4300])
    for w in _with_child(sub, "weights", runs=10):
        w.add_argument("--tokens", type=int, nargs="+", default=[1, 8, 19, 28, 64, 512])
    args = parser.parse_args()
    commands = {
        "prefill": prefill,
        "threads": threads,
        "attention": attention,
        "start": start,
        "kernel": kernel,
    }
    extra = {
        "kv-quality": kv_quality,
        "kernel-child": kernel_child,
        "node": node,
        "node-child": node_child,
        "weights": weights,
        "weights-child": weights_child,
    }
    {**commands, **extra}[args.what](args)


if __name__ == "__main__":
    main()
