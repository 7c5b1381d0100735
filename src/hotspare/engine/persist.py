"""Saving the hottest cached prefixes to disk when the engine is idle, and restoring them at start.

Files live in `<persist_dir>/<model file name>-<size>/prefix-<n>.kv` (llama.cpp's sequence state
format: the tokens and their KV cells). Each is written to a temporary name and renamed, so a crash
mid-save never leaves a torn file where a good one is expected. A file that does not load (another
model, a smaller context) is skipped and deleted.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from hotspare.engine.backends.llama_cpp import LlamaCppModel
from hotspare.engine.scheduler import Scheduler

log = logging.getLogger(__name__)

MIN_PERSIST_TOKENS = 32
"""Shorter prefixes are cheaper to recompute than to keep on disk."""


def cache_dir(persist_dir: Path, model_path: Path) -> Path:
    return persist_dir / f"{model_path.name}-{model_path.stat().st_size}"


def save(model: LlamaCppModel, scheduler: Scheduler, directory: Path, max_files: int) -> int:
    """Save the most recently used idle prefixes; returns how many files now hold state."""
    directory.mkdir(parents=True, exist_ok=True)
    cache = scheduler.cache
    hottest = [s for s in reversed(cache.idle_slots) if cache.length(s) >= MIN_PERSIST_TOKENS][:max_files]
    for n, slot in enumerate(hottest):
        final = directory / f"prefix-{n}.kv"
        tmp = final.with_suffix(".tmp")
        if model.save_slot(slot, cache.tokens(slot), tmp) == 0:
            tmp.unlink(missing_ok=True)
            continue
        os.replace(tmp, final)
    for stale in directory.glob("prefix-*.kv"):
        if int(stale.stem.split("-")[1]) >= len(hottest):
            stale.unlink(missing_ok=True)
    return len(hottest)


def restore(model: LlamaCppModel, scheduler: Scheduler, directory: Path, max_tokens: int) -> int:
    """Load saved prefixes as cache; returns tokens restored. With a host cache they go there: cached
    cells in the KV cache cost every decode step (docs/benchmarks.md), a host entry costs nothing until
    a prompt needs it. Each file is still read by llama.cpp into a slot first, which checks it fits
    this model and context, and then moved out."""
    restored = 0
    for path in sorted(directory.glob("prefix-*.kv")):
        slot = scheduler.take_free_slot()
        if slot is None or scheduler.num_free_tokens < max_tokens:
            break
        tokens = model.load_slot(slot, path, max_tokens)
        if not tokens:
            log.warning("discarding saved prefix %s: it does not fit this model/context", path.name)
            path.unlink(missing_ok=True)
            scheduler.return_free_slot(slot)
            continue
        restored += len(tokens)
        host = scheduler.host
        if host is None:
            scheduler.adopt_idle(slot, tokens)
            continue
        state, num_bytes = model.save_state(slot)
        model.remove(slot)
        scheduler.return_free_slot(slot)
        entry_id = host.reserve(tokens)
        if entry_id is not None:
            host.fill(entry_id, state, num_bytes)
    return restored
