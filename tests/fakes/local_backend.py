"""The lifecycle half of `LocalBackend` (engine/protocol.py) for fakes: nothing to start or stop,
warm-ups ignored, no engine stats. Fakes that record what they are handed override `warm`."""

from __future__ import annotations

from typing import Any

from hotspare.core.types import ChatRequest


class QuietLifecycle:
    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def warm(self, request: ChatRequest) -> None:
        pass

    async def stats(self) -> dict[str, Any] | None:
        return None
