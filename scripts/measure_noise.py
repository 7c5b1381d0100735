"""Runaway noise against normal answers: how surprised the model is by its own samples.

A small model sampled at temperature 1 (what agents send) can lose the thread at a long context and
emit noise -- single letters, fragments, each on its own line -- until the budget ends it. No n-gram
repeats, so the repetition stop (engine/repetition.py) does not fire. What marks it is the model's own
uncertainty: the surprisal -log p(token) of the tokens it samples, under its unscaled distribution.
This script samples many answers to prompts of several kinds (ordinary questions, lists, code,
high-entropy requests such as random letters, and Claude Code's recorded turn 2 at ~4k tokens of
context, where noise was seen) and prints, per answer, its end, its mean surprisal and the highest
mean over any window of the last WINDOW tokens, so a threshold can be chosen between the two kinds.

    python -m scripts.measure_noise --answers 8 --out /tmp/noise.json

Raw llama.cpp through hotspare's backend wrapper, the embedded SmolLM2-135M-Instruct, prompts rendered
by the engine exactly as it serves them (fit to 8k, tools, template).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import statistics
from pathlib import Path

import numpy as np

from hotspare.agents.fit import ContextPolicy
from hotspare.core.types import ChatRequest, Message, Role, SamplingParams
from hotspare.engine.backends.llama_cpp import LlamaCppModel
from hotspare.engine.config import EngineConfig
from hotspare.engine.local import LocalEngine
from hotspare.engine.model import DecodeItem
from hotspare.engine.repetition import NOISE_WINDOW
from hotspare.models.catalog import DEFAULT_MODEL, load_catalog, resolve_weights
from tests.agents.recorded import claude_code_turns

QUESTIONS = {
    "explain": "Explain how a hash map works.",
    "code": "Write a Python function that parses a CSV file and returns its rows as dictionaries.",
    "count": "Count from 1 to 80, one number per line.",
    "fruits": "List 40 fruits, one per line.",
    "letters": "Write 150 random letters, one per line.",
    "story": "Write a long story about a lighthouse keeper.",
}


async def rendered_prompts(path: Path, model_name: str) -> dict[str, list[int]]:
    """Each prompt as the engine serves it: rendered, fitted to 8k, tokenized."""
    config = EngineConfig(model_path=path, model_name=model_name, context_tokens=8192)
    engine = LocalEngine(config, context_policy=ContextPolicy.FIT)
    await engine.start()
    try:
        _, turn2 = claude_code_turns()
        requests = {"claude_code": dataclasses.replace(turn2, sampling=SamplingParams(max_tokens=512))}
        for name, question in QUESTIONS.items():
            requests[name] = ChatRequest(DEFAULT_MODEL, (Message(Role.USER, question),), SamplingParams())
        return {name: await engine.tokens((await engine.prepare(r)).prompt) for name, r in requests.items()}
    finally:
        await engine.stop()


def surprisal(logits: np.ndarray, token: int) -> float:
    """-log p(token) under softmax(logits) (temperature 1), in nats."""
    top = float(logits.max())
    return top + math.log(float(np.exp(logits - top).sum())) - float(logits[token])


@dataclasses.dataclass
class Answer:
    prompt: str
    seed: int
    tokens: list[int] = dataclasses.field(default_factory=list)
    surprisals: list[float] = dataclasses.field(default_factory=list)
    entropies: list[float] = dataclasses.field(default_factory=list)
    end: str = "length"


def sample_answers(
    model: LlamaCppModel, name: str, prompt: list[int], seeds: list[int], max_tokens: int, min_p: float
) -> list[Answer]:
    """Len(seeds) answers at temperature 1 (and `min_p`), decoded side by side after one shared prefill."""
    for i in range(0, len(prompt) - 1, model.batch_tokens):
        chunk = prompt[i : min(i + model.batch_tokens, len(prompt) - 1)]
        model.decode([DecodeItem(0, i, chunk, False)])
    answers = [Answer(name, seed) for seed in seeds]
    samplers = [model.new_sampler(SamplingParams(temperature=1.0, min_p=min_p), seed) for seed in seeds]
    for slot in range(1, len(seeds) + 1):
        model.copy_prefix(0, slot, len(prompt) - 1)
    last = {slot: prompt[-1] for slot in range(1, len(seeds) + 1)}
    live = set(last)
    position = len(prompt) - 1
    while live:
        order = sorted(live)
        rows = model.decode([DecodeItem(s, position, [last[s]], True) for s in order])
        for slot, row in zip(order, rows, strict=True):
            answer = answers[slot - 1]
            token = model.sample(samplers[slot - 1], row)
            answer.tokens.append(token)
            answer.surprisals.append(surprisal(model.logits(row), token))
            answer.entropies.append(model.entropy(row))  # what the engine's noise stop reads
            last[slot] = token
            if model.is_end_of_generation(token):
                answer.end = "eog"
            if answer.end == "eog" or len(answer.tokens) >= max_tokens:
                live.discard(slot)
        position += 1
    for slot, sampler in enumerate(samplers, 1):
        model.free_sampler(sampler)
        model.remove(slot)
    model.remove(0)
    return answers


def window_means(values: list[float], window: int) -> list[float]:
    if len(values) < window:
        return []
    sums = np.cumsum([0.0, *values])
    return list((sums[window:] - sums[:-window]) / window)


def report(model: LlamaCppModel, answers: list[Answer]) -> None:
    print("surprisal S and entropy H in nats: the answer's mean, and the highest mean over a window")
    print(f"{'prompt':<12} {'seed':>4} {'end':>6} {'n':>4} {'S':>5} {'S win':>5} {'H':>5} {'H win':>5}  text")
    for a in answers:
        text = b"".join(model.piece(t) for t in a.tokens).decode("utf-8", "replace")
        peaks = []
        for values in (a.surprisals, a.entropies):
            windows = window_means(values, NOISE_WINDOW)
            peak = f"{max(windows):5.2f}" if windows else "    -"
            peaks.append(f"{statistics.fmean(values):5.2f} {peak}")
        print(f"{a.prompt:<12} {a.seed:>4} {a.end:>6} {len(a.tokens):>4} {' '.join(peaks)}  {text[:60]!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--answers", type=int, default=8, help="answers per prompt, side by side")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="a catalogue name")
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--min-p", type=float, default=0.0, help="sample with this min_p (0: none)")
    parser.add_argument("--prompts", default=",".join(["claude_code", *QUESTIONS]))
    parser.add_argument("--out", type=Path, help="write every answer's tokens, text and surprisals here")
    args = parser.parse_args()
    path = resolve_weights(load_catalog().get(args.model))
    prompts = asyncio.run(rendered_prompts(path, args.model))
    model = LlamaCppModel(
        path,
        kv_cache_tokens=8192 + args.answers * args.max_tokens,
        max_slots=args.answers + 1,
        batch_tokens=512,
        num_threads=0,
    )
    answers: list[Answer] = []
    for name in args.prompts.split(","):
        seeds = list(range(args.first_seed, args.first_seed + args.answers))
        batch = sample_answers(model, name, prompts[name], seeds, args.max_tokens, args.min_p)
        report(model, batch)
        answers += batch
    if args.out:
        rows = [
            {
                **dataclasses.asdict(a),
                "text": b"".join(model.piece(t) for t in a.tokens).decode("utf-8", "replace"),
            }
            for a in answers
        ]
        args.out.write_text(json.dumps(rows))


if __name__ == "__main__":
    main()
