"""How often long greedy answers differ between a request decoded alone and the same request decoded
in a batch (the engine core in process, the embedded model, greedy, cold cache for every run).

llama.cpp's kernels give slightly different logits at different batch sizes (docs/engine.md,
"Batching and numerics"), so at a near-tie two runs of the same greedy request can pick different
tokens and then go on differently. The tests check that the distributions agree within that noise;
this script reports how often the *answers* differ, and after how many tokens, for a few batch
sizes, and whether the same schedule run twice gives the same answers.

    python -m scripts.bench_divergence                 # 8 prompts, 48 tokens, batches of 8 and 16
    python -m scripts.bench_divergence --tokens 64 --batches 2 4 8 16
"""

from __future__ import annotations

import argparse
import itertools

from hotspare.core.types import Message, Role, SamplingParams
from hotspare.engine.chat_template import ChatTemplate
from hotspare.engine.config import EngineConfig
from hotspare.engine.core import EngineCore
from hotspare.engine.protocol import Delta, Failed, Submit
from hotspare.engine.worker import load
from hotspare.models.catalog import DEFAULT_MODEL, load_catalog, resolve_weights

TOPICS = [
    "volcanoes", "chess openings", "baking bread", "the moon", "jazz", "bees", "tax law", "glaciers",
    "submarines", "origami", "coral reefs", "the printing press", "owls", "cryptography", "tea", "rivers",
]  # fmt: skip

_ids = itertools.count(1)


def generate(core: EngineCore, prompts: list[str], tokens: int) -> list[str]:
    """Greedy answers of `prompts`, all submitted at once (one batch), from an empty KV cache."""
    core.forget_cache()  # no cached prefix from an earlier run
    params = SamplingParams(temperature=0, max_tokens=tokens)
    ids = [next(_ids) for _ in prompts]
    for rid, prompt in zip(ids, prompts, strict=True):
        core.submit(Submit(rid, prompt, params))
    texts = dict.fromkeys(ids, "")
    while core.scheduler.has_work:
        for event in core.step():
            if isinstance(event, Failed):
                raise RuntimeError(f"request failed: {event}")
            if isinstance(event, Delta):
                texts[event.request_id] += event.text
    return [texts[rid] for rid in ids]


def first_difference(core: EngineCore, a: str, b: str) -> int | None:
    """Tokens before two answers part (None: identical)."""
    if a == b:
        return None
    n = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return len(core.model.tokenize(a[:n], add_bos=False))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=int, default=8, help="prompts compared (each alone and batched)")
    parser.add_argument("--tokens", type=int, default=48, help="answer length")
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 16], help="batch sizes to compare")
    parser.add_argument("--threads", type=int, default=0, help="llama.cpp threads (0: physical cores)")
    args = parser.parse_args()
    if max(args.batches) > len(TOPICS) or args.prompts > min(args.batches):
        parser.error(f"--prompts <= every batch size <= {len(TOPICS)}")
    path = resolve_weights(load_catalog().get(DEFAULT_MODEL))
    config = EngineConfig(
        model_path=path,
        model_name=DEFAULT_MODEL,
        max_running=max(args.batches),
        num_threads=args.threads,
        adapt_threads=False,
    )
    core, _ = load(config)
    info = core.model.info
    template = ChatTemplate(info.chat_template, bos_token=info.bos_token, eos_token=info.eos_token)
    questions = [f"Write a detailed explanation of {topic}." for topic in TOPICS]
    prompts = [template.render((Message(Role.USER, q),)) for q in questions]
    measured = prompts[: args.prompts]
    alone = [generate(core, [p], args.tokens)[0] for p in measured]
    print(f"{args.prompts} prompts, greedy {args.tokens}-token answers, each alone vs in a batch:")
    for size in args.batches:
        batched = generate(core, prompts[:size], args.tokens)[: args.prompts]
        again = generate(core, prompts[:size], args.tokens)[: args.prompts]
        parts = [first_difference(core, a, b) for a, b in zip(alone, batched, strict=True)]
        same = sum(p is None for p in parts)
        where = sorted(p for p in parts if p is not None)
        print(
            f"  batch of {size:2d}: {same}/{len(parts)} identical to alone"
            + (f"; the others part after {', '.join(map(str, where))} tokens" if where else "")
            + f"; the same batch run twice: {'identical' if again == batched else 'DIFFERENT'}"
        )
    core.model.close()


if __name__ == "__main__":
    main()
