"""Messages between the API process and the engine process (pickled over a multiprocessing Pipe).

API -> engine: `Submit`, `Cancel`, `Tokenize`, `GetStats`, `Shutdown`.
Engine -> API: `Ready` or `LoadFailed` once at start, then lists of `Delta` / `Done` / `Failed` /
`Reply`, one list per scheduling step, so a step with many streams costs one message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hotspare.core.types import FinishReason, SamplingParams
from hotspare.engine.attention import AttentionChoice
from hotspare.engine.backends.llama_cpp import ModelInfo


@dataclass(frozen=True, slots=True)
class Submit:
    """Generate for `prompt` (already rendered with the chat template). `max_tokens` None: as many
    as fit. `warmup`: only compute the prompt's KV at low priority, sample nothing."""

    request_id: int
    prompt: str
    sampling: SamplingParams
    warmup: bool = False


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
    "Overloaded", "InvalidRequest" or "BackendUnavailable"; `args` rebuild it."""

    request_id: int
    kind: str
    args: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to a Tokenize (an int, or the ids when asked) or GetStats (a dict)."""

    request_id: int
    value: Any


EngineCommand = Submit | Cancel | Tokenize | GetStats | Shutdown
EngineEvent = Delta | Done | Failed | Reply
