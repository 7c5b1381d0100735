"""Saving the hottest cached prefixes to disk when the engine is idle, and restoring them at start.

A file holds one prefix: a header line (format, token count), the tokens (int32), and llama.cpp's
state of that sequence's KV cells (`llama_state_seq_get_data`). Files live in
`<persist_dir>/<model file name>-<size>/prefix-<hash of the tokens>.kv`, so an unchanged prefix is
not written twice; each is written to a temporary name and renamed, so a crash mid-save never leaves a
torn file where a good one is expected. The prefixes are the idle slots of the KV cache (most recent
first) and then the host-RAM entries (their state is already in memory). At start the newest files
load first; each is checked by llama.cpp (restored into a slot: a file of another model or a larger
context is refused, deleted, and skipped). With a host cache the state then goes to host RAM, not the
KV cache: cached cells left idle in the KV cache cost every decode step (docs/benchmarks.md).
"""

from __future__ import annotations

import array
import ctypes
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

from hotspare.engine.model import EngineModel
from hotspare.engine.scheduler import Scheduler
from hotspare.home import private_dir, private_opener

log = logging.getLogger(__name__)

MIN_PERSIST_TOKENS = 32
"""Shorter prefixes are cheaper to recompute than to keep on disk."""

_MAGIC = b"hotspare-kv 1 "


def cache_dir(persist_dir: Path, model_path: Path) -> Path:
    return persist_dir / f"{model_path.name}-{model_path.stat().st_size}"


def save(model: EngineModel, scheduler: Scheduler, directory: Path, max_files: int, max_bytes: int) -> int:
    """Save the most recently used prefixes, at most `max_files` files of `max_bytes` together (one
    too large for what is left is skipped for a colder one that fits); returns how many files now
    hold state."""
    private_dir(directory)  # token ids of conversations: this user's only
    cache = scheduler.cache
    idle = [s for s in reversed(cache.idle_slots) if cache.length(s) >= MIN_PERSIST_TOKENS]
    chosen: list[tuple[list[int], int | None, Any, int]] = [(cache.tokens(s), s, None, 0) for s in idle]
    if scheduler.host is not None:
        entries = sorted(scheduler.host.entries.values(), key=lambda e: e.last_use, reverse=True)
        chosen += [(e.tokens, None, e.state, e.num_bytes) for e in entries if e.state is not None]
    kept: set[Path] = set()
    room = max_bytes
    for tokens, slot, state, num_bytes in chosen:
        if len(kept) >= max_files:
            break
        final = directory / f"prefix-{_name(tokens)}.kv"
        if final in kept:
            continue
        if final.exists():
            size = final.stat().st_size
        else:
            if slot is not None:
                state, num_bytes = model.save_state(slot)
            size = _file_size(tokens, num_bytes)
            if state is None or size > room or not _write(final, tokens, state, num_bytes):
                continue
        if size > room:
            continue
        room -= size
        kept.add(final)
    for stale in set(directory.glob("prefix-*.kv")) - kept:
        stale.unlink(missing_ok=True)
    return len(kept)


def restore(model: EngineModel, scheduler: Scheduler, directory: Path, max_tokens: int) -> int:
    """Load saved prefixes as cache (host RAM if there is one, else idle KV slots); returns tokens."""
    restored = 0
    for path in sorted(directory.glob("prefix-*.kv"), key=lambda p: p.stat().st_mtime, reverse=True):
        slot = scheduler.kv.take_free_slot()
        if slot is None or scheduler.kv.num_free_tokens < max_tokens:
            if slot is not None:
                scheduler.kv.return_free_slot(slot)
            break
        loaded = _read(path)
        if loaded is None or len(loaded[0]) > max_tokens or not model.restore_state(slot, *loaded[1:]):
            log.warning("discarding saved prefix %s: unreadable, or for another model or context", path.name)
            path.unlink(missing_ok=True)
            scheduler.kv.return_free_slot(slot)
            continue
        tokens, state, num_bytes = loaded
        restored += len(tokens)
        host = scheduler.host
        if host is None:
            scheduler.kv.adopt_idle(slot, tokens)
            continue
        model.remove(slot)
        scheduler.kv.return_free_slot(slot)
        entry_id = host.reserve(tokens)
        if entry_id is not None:
            host.fill(entry_id, state, num_bytes)
    return restored


def _name(tokens: list[int]) -> str:
    return hashlib.sha256(array.array("i", tokens).tobytes()).hexdigest()[:24]


def _file_size(tokens: list[int], num_bytes: int) -> int:
    return len(_header(tokens, num_bytes)) + 4 * len(tokens) + num_bytes


def _header(tokens: list[int], num_bytes: int) -> bytes:
    return _MAGIC + f"{len(tokens)} {num_bytes}\n".encode()


def _write(final: Path, tokens: list[int], state: Any, num_bytes: int) -> bool:
    tmp = final.with_suffix(".tmp")
    try:
        with open(tmp, "wb", opener=private_opener) as f:
            f.write(_header(tokens, num_bytes))
            f.write(array.array("i", tokens).tobytes())
            f.write(memoryview(state).cast("B")[:num_bytes])
        os.replace(tmp, final)
    except OSError as exc:
        log.warning("could not save a prefix to %s: %s", final, exc)
        tmp.unlink(missing_ok=True)
        return False
    return True


def _read(path: Path) -> tuple[list[int], ctypes.Array[ctypes.c_uint8], int] | None:
    """(tokens, state, state bytes), or None if the file is not one of ours or is truncated."""
    try:
        data = path.read_bytes()
        head, _, rest = data.partition(b"\n")
        if not head.startswith(_MAGIC):
            return None
        num_tokens, num_bytes = (int(x) for x in head[len(_MAGIC) :].split())
        tokens = array.array("i")
        tokens.frombytes(rest[: 4 * num_tokens])
        body = rest[4 * num_tokens :]
        if len(tokens) != num_tokens or len(body) != num_bytes or num_bytes <= 0:
            return None
    except (OSError, ValueError):
        return None
    return list(tokens), (ctypes.c_uint8 * num_bytes).from_buffer_copy(body), num_bytes
