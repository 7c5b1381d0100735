"""A scripted `ChatBackend` for API tests: no model, exact events, and a record of what happened."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from hotspare.core.errors import HotspareError
from hotspare.core.types import ChatRequest, Finish, FinishReason, StreamEvent, TextDelta, Usage
from hotspare.engine.attention import AttentionChoice
from tests.fakes.local_backend import QuietLifecycle

MODEL = "fake-model"


def finish(
    reason: FinishReason = FinishReason.END_TURN,
    input_tokens: int = 7,
    output_tokens: int = 2,
    cached_tokens: int = 0,
    stop_sequence: str | None = None,
) -> Finish:
    return Finish(reason, Usage(input_tokens, output_tokens, cached_tokens), MODEL, stop_sequence)


def answer(*texts: str, end: Finish | None = None) -> list[StreamEvent]:
    return [*(TextDelta(text) for text in texts), end or finish(output_tokens=len(texts))]


@dataclass
class FakeBackend(QuietLifecycle):
    """Answers every request with `events` (or raises `error` before the first event).

    `stall_after` > 0: after that many events, wait until cancelled (a long generation gap).
    `gap_s`: wait this long before each event after the first.
    `requests` records each request; `num_closed` / `num_cancelled` count how streams ended early.
    """

    events: list[StreamEvent] = field(default_factory=lambda: answer("Hello", " world"))
    error: HotspareError | None = None
    num_prompt_tokens: int = 7
    stall_after: int = 0
    gap_s: float = 0.0
    name: str = "fake"
    model_name: str = MODEL
    is_ready: bool = True
    # The rest of `LocalBackend` (engine/protocol.py): a backend that never died and keeps no counters.
    failure: str | None = None
    num_restarts: int = 0
    num_poison_requests: int = 0
    attention: AttentionChoice | None = None
    weights_note: str = ""
    can_warm: bool = False
    requests: list[ChatRequest] = field(default_factory=list)
    num_closed: int = 0
    num_cancelled: int = 0
    num_finished: int = 0
    stalled: asyncio.Event | None = None

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        self.requests.append(request)
        if self.error is not None:
            raise self.error
        try:
            for number, event in enumerate(self.events):
                if self.stall_after and number == self.stall_after:
                    if self.stalled is not None:
                        self.stalled.set()
                    await asyncio.Event().wait()
                if number and self.gap_s:
                    await asyncio.sleep(self.gap_s)
                yield event
            self.num_finished += 1
        except asyncio.CancelledError:
            self.num_cancelled += 1
            raise
        except GeneratorExit:
            self.num_closed += 1
            raise

    async def count_tokens(self, request: ChatRequest) -> int:
        self.requests.append(request)
        if self.error is not None:
            raise self.error
        return self.num_prompt_tokens
