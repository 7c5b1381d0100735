"""Slowing down key guessing: a client address with repeated failed keys is refused for a while.

After MAX_FAILURES failed keys (401s) from one address within WINDOW_S, that address gets 429 with
`retry-after` for FIRST_BLOCK_S, doubled for each further block (up to MAX_BLOCK_S), whatever it sends:
its keys are not even checked while blocked. A request with a good key from the address forgets its
failures. Memory is bounded: at most MAX_ADDRESSES addresses are tracked; past that the oldest
record is dropped (an attacker rotating addresses gets no more tries than one address per slot).

Behind a reverse proxy every client has the proxy's address, so one guesser slows everyone behind
it; that is the price of not trusting a forwarded-for header a client can forge.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_FAILURES = 10
WINDOW_S = 60.0
FIRST_BLOCK_S = 1.0
MAX_BLOCK_S = 300.0
MAX_ADDRESSES = 10_000


@dataclass(slots=True)
class _Record:
    failures: list[float] = field(default_factory=list)  # times of failures within the window
    num_blocks: int = 0
    blocked_until: float = 0.0


class AuthThrottle:
    """Failed-key counts per client address. Used on the event loop only (no locking)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def wait_s(self, address: str) -> float | None:
        """Seconds `address` must still wait before its key is checked, or None."""
        record = self._records.get(address)
        if record is None:
            return None
        left = record.blocked_until - self._clock()
        return left if left > 0 else None

    def failed(self, address: str) -> None:
        """Note a failed key from `address`; block it once it has too many in the window."""
        now = self._clock()
        record = self._records.pop(address, None) or _Record()
        self._records[address] = record  # most recent last
        record.failures = [at for at in record.failures if now - at < WINDOW_S]
        record.failures.append(now)
        if len(record.failures) >= MAX_FAILURES:
            record.blocked_until = now + min(MAX_BLOCK_S, FIRST_BLOCK_S * 2**record.num_blocks)
            record.num_blocks += 1
            record.failures.clear()
        while len(self._records) > MAX_ADDRESSES:
            self._records.popitem(last=False)

    def succeeded(self, address: str) -> None:
        self._records.pop(address, None)
