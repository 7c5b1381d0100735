"""The lifecycle half of `LocalBackend` (engine/protocol.py) for fakes: nothing to start or stop,
warm-ups ignored, no engine stats. Fakes that record what they are handed override `warm`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from hotspare.core.types import ChatRequest, StreamEvent


class QuietLifecycle:
    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def warm(self, request: ChatRequest) -> None:
        pass

    async def stats(self) -> dict[str, Any] | None:
        return None

    def more_choices(self, request: ChatRequest) -> list[AsyncIterator[StreamEvent]]:
        """Choices 1..n-1 as streams of their own (the fakes keep no prompt to share)."""
        stream = getattr(self, "stream")  # noqa: B009 -- the fake that mixes this in has it
        return [stream(request) for _ in range(request.num_choices - 1)]
