"""Whose key an upstream holds, and which keys recently worked.

A client's key belongs to the vendor whose API the client spoke (`vendor_of`). Keys are never
stored: a truncated sha256 (`key_fingerprint`) names one in memory. `GoodKeys` remembers when each
key last got a 2xx, so that a 401 for a key that worked within `AUTH_MEMORY_S` reads as the
provider's auth plane failing (an outage to fail over from), not as the client's bad key.

Bound: at most `MAX_GOOD_KEYS` fingerprints (forward mode sees every client's key), the least
recently good dropped first.
"""

from __future__ import annotations

import hashlib
import time

from hotspare.core.types import ApiFormat

AUTH_MEMORY_S = 900.0  # a 401 with a key that worked within this long is an auth-plane outage
MAX_GOOD_KEYS = 10_000  # fingerprints of keys that worked, kept at most (forward mode: clients' keys)


def key_fingerprint(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def vendor_of(api: ApiFormat) -> ApiFormat:
    """The vendor (as its chat format) whose keys a client of `api` holds."""
    return ApiFormat.OPENAI_CHAT if api is ApiFormat.OPENAI_RESPONSES else api


class GoodKeys:
    """Key fingerprint -> when it last worked (monotonic), ordered by that time. One event loop."""

    def __init__(self) -> None:
        self.last_ok: dict[str, float] = {}

    def remember(self, key: str) -> None:
        """Note a key that just worked; forget keys older than `AUTH_MEMORY_S` and, past
        `MAX_GOOD_KEYS`, the least recently good."""
        now = time.monotonic()
        fingerprint = key_fingerprint(key)
        keys = self.last_ok
        keys.pop(fingerprint, None)  # re-inserted last: the dict stays ordered by last success
        keys[fingerprint] = now
        while keys:
            oldest, at = next(iter(keys.items()))
            if now - at < AUTH_MEMORY_S and len(keys) <= MAX_GOOD_KEYS:
                break
            del keys[oldest]

    def worked_recently(self, key: str) -> bool:
        last_ok = self.last_ok.get(key_fingerprint(key))
        return last_ok is not None and time.monotonic() - last_ok < AUTH_MEMORY_S
