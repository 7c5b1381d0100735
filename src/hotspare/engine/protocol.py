"""The local backends' interface, and the messages between the API process and the engine process.

`LocalBackend`: what the API, the router and ops may ask of the local model, whichever backend runs
it (the llama.cpp engine, engine/local.py, or vLLM, engine/vllm.py). They call it typed; nothing
probes a backend for attributes.

The messages are pickled over a multiprocessing Pipe.
API -> engine: `Submit`, `Cancel`, `Tokenize`, `GetStats`, `Shutdown`.
Engine -> API: `Ready` or `LoadFailed` once at start, then lists of `Delta` / `Done` / `Failed` /
`Reply`, one list per scheduling step, so a step with many streams costs one message.

This module imports no model library: the API process imports it, and never llama_cpp.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from hotspare.core.errors import (
    BackendUnavailable,
    ContextOverflow,
    EngineDied,
    HotspareError,
    InvalidRequest,
    Overloaded,
)
from hotspare.core.types import ChatBackend, ChatRequest, FinishReason, SamplingParams, StreamEvent
from hotspare.engine.attention import AttentionChoice


@runtime_checkable
class LocalBackend(ChatBackend, Protocol):
    """The local model, on top of `ChatBackend` (its `name` is "local"). `start()` before use: it
    returns once the model serves, or once its start-up crashed often enough to count as failed;
    `stop()` after, idempotent. Nothing here raises but `start` (ModelError) and what `ChatBackend`
    raises; `warm` and `stats` raise HotspareError when the backend is down.

    Tests and callers that hand the app any `ChatBackend` are served too: code that needs more than
    `ChatBackend` narrows with `isinstance(backend, LocalBackend)` (runtime-checkable) and treats
    other backends as always ready, with no counters.
    """

    @property
    def model_name(self) -> str:
        """The model that answers, as reported to clients."""
        ...

    @property
    def is_ready(self) -> bool:
        """The backend serves now (loaded, warm, its process alive)."""
        ...

    @property
    def failure(self) -> str | None:
        """Why the backend is failed (it died repeatedly; engine/supervision.py), else None."""
        ...

    @property
    def num_restarts(self) -> int:
        """Deaths of its process since the backend was made."""
        ...

    @property
    def num_poison_requests(self) -> int:
        """Prompts refused because they crashed the engine alone (0 where there is no such rule)."""
        ...

    @property
    def attention(self) -> AttentionChoice | None:
        """Flash attention on or off and why (engine/attention.py); None where the backend decides."""
        ...

    @property
    def weights_note(self) -> str:
        """How the loaded weights differ from the catalogue's file ("" = they are that file)."""
        ...

    @property
    def can_warm(self) -> bool:
        """Whether `warm` computes anything (False: it is a no-op, callers need not prepare one)."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def warm(self, request: ChatRequest) -> None:
        """Compute, at low priority, the KV of `request`'s conversation for its next turn."""
        ...

    def more_choices(self, request: ChatRequest) -> list[AsyncIterator[StreamEvent]]:
        """Choices 1..n-1 of a request with `num_choices` n > 1, each a stream as `stream` yields one
        (choice 0 is `stream(request)`'s). The llama.cpp engine prepares and sends the prompt once for
        all n when `stream` was called with this same request object; vLLM batches on its own and
        streams each. The caller closes every one of them, started or not."""
        ...

    async def stats(self) -> dict[str, Any] | None:
        """Engine counters (queue, running, KV use, prefix-cache hits), or None: it keeps none."""
        ...


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the API side needs to know about the loaded model."""

    chat_template: str | None
    bos_token: str
    eos_token: str
    context_train_tokens: int
    kv_capacity_tokens: int
    num_vocab: int
    description: str


@dataclass(frozen=True, slots=True)
class Submit:
    """Generate for `prompt` (already rendered with the chat template). `max_tokens` None: as many
    as fit. `warmup`: only compute the prompt's KV at low priority, sample nothing.

    `sibling_ids`: further choices of the same prompt (OpenAI `n`), each a sequence of its own with
    its own events under its id, started from the first's cells: the prompt crosses the pipe and is
    tokenized once, however many choices it has. They fail together when the prompt is refused."""

    request_id: int
    prompt: str
    sampling: SamplingParams
    warmup: bool = False
    sibling_ids: tuple[int, ...] = ()

    @property
    def request_ids(self) -> tuple[int, ...]:
        """Every choice's id, the first's first."""
        return (self.request_id, *self.sibling_ids)


@dataclass(frozen=True, slots=True)
class Cancel:
    request_id: int


@dataclass(frozen=True, slots=True)
class Tokenize:
    request_id: int
    prompt: str
    ids: bool = False  # reply with the token ids, not their count


@dataclass(frozen=True, slots=True)
class GetStats:
    request_id: int


@dataclass(frozen=True, slots=True)
class Shutdown:
    pass


@dataclass(frozen=True, slots=True)
class Ready:
    info: ModelInfo
    context_tokens: int
    load_s: float
    num_restored_tokens: int = 0
    weights_note: str = ""  # how the loaded weights differ from the catalogue's (engine/weights.py)
    attention: AttentionChoice | None = None  # flash attention on or off, and why (engine/attention.py)


@dataclass(frozen=True, slots=True)
class LoadFailed:
    message: str


@dataclass(frozen=True, slots=True)
class Delta:
    request_id: int
    text: str


@dataclass(frozen=True, slots=True)
class Done:
    request_id: int
    reason: FinishReason
    num_prompt_tokens: int
    num_output_tokens: int
    num_cached_tokens: int
    stop_sequence: str | None


@dataclass(frozen=True, slots=True)
class Failed:
    """The request ended in error. `kind` names a core error class: "ContextOverflow",
    "Overloaded", "InvalidRequest", "BackendUnavailable" or "EngineDied"; `args` rebuild it (`error()`)."""

    request_id: int
    kind: str
    args: tuple[Any, ...]

    def error(self) -> HotspareError:
        """The core error this failure stands for."""
        return _ERRORS[self.kind](*self.args)


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to a Tokenize (an int, or the ids when asked) or GetStats (a dict)."""

    request_id: int
    value: Any


_ERRORS: dict[str, type[HotspareError]] = {
    "ContextOverflow": ContextOverflow,
    "Overloaded": Overloaded,
    "InvalidRequest": InvalidRequest,
    "BackendUnavailable": BackendUnavailable,
    "EngineDied": EngineDied,
}

EngineCommand = Submit | Cancel | Tokenize | GetStats | Shutdown
EngineEvent = Delta | Done | Failed | Reply
