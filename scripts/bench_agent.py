"""Agent-shaped workloads: a long shared system prompt, growing histories, failover onto a warm engine.

- `run_shared_prefix`: a ~2.2k-token system prompt sent cold once, then warm with new questions.
- `run_agent`: several conversations interleaved round-robin, one request at a time; each turn sends
  the system prompt, the whole history (with the model's own earlier answers) and a new task.
- `run_failover` (hotspare only, in-process): a 4,000+-token conversation is fed to
  `LocalEngine.warm` as a proxy would while the upstream is healthy; once the engine is idle, the
  next turn is served locally and its time to first token is what a user feels at failover.

Every prompt carries a per-run nonce, so nothing is cached from an earlier run (hotspare persists
its hottest prefixes to disk). Sizes are in the model's tokens, counted with its own vocabulary.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass
from functools import cache
from typing import Any

from benchmarks.servers import StreamResult, Target, chat_request, model_path, wait_engine_idle

Messages = list[dict[str, str]]

_VERBS = [
    "read",
    "write",
    "list",
    "search",
    "move",
    "copy",
    "delete",
    "patch",
    "run",
    "test",
    "lint",
    "format",
    "build",
    "deploy",
    "fetch",
]
_NOUNS = [
    "file",
    "directory",
    "branch",
    "commit",
    "issue",
    "ticket",
    "table",
    "record",
    "image",
    "report",
    "schedule",
    "invoice",
]
_TYPES = ["string", "integer", "boolean", "array of strings", "object"]
_TOPICS = (
    "a failing unit test in the payment module",
    "a slow database query on the orders table",
    "a memory leak in the image resizer",
    "flaky network timeouts in the sync job",
    "a broken CSV export of the monthly report",
    "a race condition in the cache invalidation",
    "a typo that crashed the nightly build",
    "an expired TLS certificate on the staging host",
)


@cache
def _tokenizer() -> Any:
    import llama_cpp

    return llama_cpp.Llama(model_path=str(model_path()), vocab_only=True, verbose=False)


def count_tokens(text: str) -> int:
    return len(_tokenizer().tokenize(text.encode(), add_bos=False, special=True))


def agent_system_prompt(nonce: str, min_tokens: int = 2200) -> str:
    """An agent's system prompt of at least `min_tokens` tokens: rules plus tool definitions."""
    rng = random.Random(nonce)
    parts = [
        f"You are a careful software agent (session {nonce}). Think step by step, call at most one "
        "tool per turn, explain what you will do before doing it, and never invent file contents.\n"
        "Available tools:\n"
    ]
    while count_tokens("".join(parts)) < min_tokens:
        verb, noun = rng.choice(_VERBS), rng.choice(_NOUNS)
        args = ", ".join(
            f'"{rng.choice(_NOUNS)}_{i}": {rng.choice(_TYPES)}' for i in range(rng.randint(2, 4))
        )
        parts.append(
            f"- {verb}_{noun}_{len(parts)}({args}): {verb}s the {noun} named by its arguments and "
            f"returns the result as JSON; fails with an error message if the {noun} does not exist "
            f"or the caller lacks permission.\n"
        )
    return "".join(parts)


def agent_task(conversation: int, turn: int) -> str:
    topic = _TOPICS[(conversation * 3 + turn) % len(_TOPICS)]
    return (
        f"Task {conversation}.{turn}: we are investigating {topic}. Describe in detail, as a long "
        "numbered plan, what you would check next, which tool you would call and why."
    )


# ----- shared system prompt, cold then warm -----


@dataclass(frozen=True, slots=True)
class SharedPrefixResult:
    """`warm_*`: new questions after the cached system prompt (each computes its own ~28 tokens);
    `repeat_*`: the last request sent again unchanged, as a client's retry is (the whole prompt is
    cached; a server computes one token to get logits). `*_uncached_tokens`: prompt tokens the server
    says it computed (None where it does not report cached tokens)."""

    prompt_tokens: int
    cold_ttft_s: float
    warm_ttfts_s: tuple[float, ...]
    warm_uncached_tokens: tuple[int | None, ...]
    repeat_ttfts_s: tuple[float, ...] = ()
    repeat_uncached_tokens: tuple[int | None, ...] = ()

    @property
    def warm_ttft_s(self) -> float:
        return statistics.median(self.warm_ttfts_s)

    @property
    def repeat_ttft_s(self) -> float:
        return statistics.median(self.repeat_ttfts_s)


async def run_shared_prefix(
    target: Target, nonce: str, num_warm: int = 3, num_repeat: int = 3
) -> SharedPrefixResult:
    system = agent_system_prompt(f"{nonce}-shared")
    results = []
    messages: Messages = []
    for i in range(num_warm + 1):
        question = f"Question {i}: which of the tools above would you use to {_TOPICS[i]}? Explain."
        messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
        results.append(await target.chat(messages, max_tokens=8))
    repeats = [await target.chat(messages, max_tokens=8) for _ in range(num_repeat)]
    return SharedPrefixResult(
        count_tokens(system),
        results[0].ttft_s,
        tuple(r.ttft_s for r in results[1:]),
        tuple(uncached_tokens(r) for r in results[1:]),
        tuple(r.ttft_s for r in repeats),
        tuple(uncached_tokens(r) for r in repeats),
    )


def uncached_tokens(result: StreamResult) -> int | None:
    if result.prompt_tokens is None or result.cached_tokens is None:
        return None
    return result.prompt_tokens - result.cached_tokens


# ----- interleaved multi-turn conversations -----


@dataclass(frozen=True, slots=True)
class AgentResult:
    """TTFT of every request in order (conversations round-robin); the first one is cold."""

    ttfts_s: tuple[float, ...]
    prompt_tokens: tuple[int, ...]
    completion_tokens: tuple[int, ...]
    uncached_tokens: tuple[int | None, ...]

    @property
    def warm_ttfts_s(self) -> tuple[float, ...]:
        return self.ttfts_s[1:]


async def run_agent(target: Target, nonce: str, num_conversations: int, num_turns: int) -> AgentResult:
    system = agent_system_prompt(f"{nonce}-agent")
    histories: list[Messages] = [[{"role": "system", "content": system}] for _ in range(num_conversations)]
    results: list[StreamResult] = []
    sizes = []
    for turn in range(num_turns):
        for c, history in enumerate(histories):
            history.append({"role": "user", "content": agent_task(c, turn)})
            result = await target.chat(history, max_tokens=64, conversation=c)
            history.append({"role": "assistant", "content": result.text})
            results.append(result)
            sizes.append(result.prompt_tokens or count_tokens("".join(m["content"] for m in history)))
    return AgentResult(
        tuple(r.ttft_s for r in results),
        tuple(sizes),
        tuple(r.completion_tokens for r in results),
        tuple(uncached_tokens(r) for r in results),
    )


# ----- failover onto a warmed conversation (hotspare only) -----


@dataclass(frozen=True, slots=True)
class FailoverResult:
    conversation_tokens: int
    warm_s: float
    warm_ttfts_s: tuple[float, ...]
    warm_uncached_tokens: tuple[int | None, ...]
    cold_ttft_s: float


def long_conversation(nonce: str, min_tokens: int = 4100) -> Messages:
    """A system prompt and finished turns (canned answers, as an upstream gave them), ending with an
    assistant message, of at least `min_tokens` tokens."""
    messages = [{"role": "system", "content": agent_system_prompt(nonce)}]
    rng = random.Random(nonce)
    turn = 0
    while count_tokens("".join(m["content"] for m in messages)) < min_tokens:
        messages.append({"role": "user", "content": agent_task(turn % 5, turn)})
        steps = [
            f"{i}. Call {rng.choice(_VERBS)}_{rng.choice(_NOUNS)} on the {rng.choice(_NOUNS)} and compare "
            f"the result with the last known good {rng.choice(_NOUNS)}."
            for i in range(1, 7)
        ]
        messages.append({"role": "assistant", "content": "Here is my plan:\n" + "\n".join(steps)})
        turn += 1
    return messages


async def run_failover(engine: Any, target: Target, nonce: str, num_conversations: int) -> FailoverResult:
    """Warm `num_conversations` long conversations, wait until the engine is idle, then time the
    first token of each one's next turn; a never-seen conversation of the same size is the cold
    reference."""
    conversations = [long_conversation(f"{nonce}-failover-{i}") for i in range(num_conversations + 1)]
    cold, warmed = conversations[0], conversations[1:]
    started = time.monotonic()
    for conversation in warmed:
        await engine.warm(chat_request(conversation, max_tokens=64))
    await wait_engine_idle(engine)
    warm_s = time.monotonic() - started
    follow_up = {"role": "user", "content": "The upstream is down. Continue with step 1 in detail."}
    warm_results = [await target.chat([*c, follow_up], max_tokens=16) for c in warmed]
    cold_result = await target.chat([*cold, follow_up], max_tokens=16)
    size = min(r.prompt_tokens or 0 for r in warm_results)
    return FailoverResult(
        size,
        warm_s,
        tuple(r.ttft_s for r in warm_results),
        tuple(uncached_tokens(r) for r in warm_results),
        cold_result.ttft_s,
    )
