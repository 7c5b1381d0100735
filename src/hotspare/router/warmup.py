"""Which conversations answered upstream are handed to the local engine's warm-up.

Every answered conversation used to go: the API process rendered its prompt and woke the engine,
whose threads then competed for the CPU with the passthrough traffic (measured on the 2-core dev VM:
a burst of identical short requests took 4.7 ms per streamed request through hotspare instead of
2.1 ms). A warm-up only pays off when it saves prefill later, so two kinds are skipped:

* a conversation seen (and handed over) recently: its KV is computed or on its way;
* a short one: under MIN_CHARS (about 128 tokens) the local model computes it cold in well under a
  second on a CPU, so keeping it warm buys little.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from hotspare.core.types import Message

MIN_CHARS = 512
MAX_REMEMBERED = 4096


class WarmupFilter:
    """Remembers the last MAX_REMEMBERED conversations it admitted. One event loop; no I/O."""

    def __init__(self, min_chars: int = MIN_CHARS, max_remembered: int = MAX_REMEMBERED) -> None:
        self.min_chars = min_chars
        self.max_remembered = max_remembered
        self._seen: OrderedDict[int, None] = OrderedDict()
        self.num_skipped = 0

    def admit(self, messages: Sequence[Message]) -> bool:
        """Whether `messages` (the conversation as the next turn will send it) should be warmed."""
        if sum(len(m.content) for m in messages) < self.min_chars:
            self.num_skipped += 1
            return False
        key = hash(tuple(messages))
        if key in self._seen:
            self._seen.move_to_end(key)
            self.num_skipped += 1
            return False
        self._seen[key] = None
        if len(self._seen) > self.max_remembered:
            self._seen.popitem(last=False)
        return True
