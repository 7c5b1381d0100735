"""Admission to the llama.cpp engine after a crash (engine/supervision.py's `Suspects`): requests run
together, a suspect runs alone, and a prompt that crashed the engine alone is refused as poison.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from hotspare.core.errors import PoisonRequest


def poison_error(digest: str, cause: str) -> PoisonRequest:
    """The refusal of a prompt (sha256 `digest`) that crashed the engine alone, with how it did."""
    return PoisonRequest(
        "the local model refuses this request: it crashed the local engine twice, the second time "
        f"running alone ({cause}; prompt sha256 {digest[:16]}). It is refused so that one request "
        "cannot take the local model away from every other."
    )


class AdmissionGate:
    """Admission to the engine: any number of requests together, or one suspect alone (after a crash,
    engine/supervision.py). A waiting suspect holds back new requests until it has run."""

    def __init__(self) -> None:
        self._cond = asyncio.Condition()
        self._num_shared = 0
        self._num_waiting_alone = 0
        self._is_alone = False

    @property
    def is_exclusive(self) -> bool:
        return self._is_alone or self._num_waiting_alone > 0

    @contextlib.asynccontextmanager
    async def hold(self, *, alone: bool) -> AsyncIterator[None]:
        async with self._cond:
            if alone:
                self._num_waiting_alone += 1
                try:
                    await self._cond.wait_for(lambda: not self._is_alone and self._num_shared == 0)
                finally:
                    self._num_waiting_alone -= 1
                self._is_alone = True
            else:
                await self._cond.wait_for(lambda: not self.is_exclusive)
                self._num_shared += 1
        try:
            yield
        finally:
            async with self._cond:
                if alone:
                    self._is_alone = False
                else:
                    self._num_shared -= 1
                self._cond.notify_all()
