"""The weights file the engine loads: the catalogue's own, or a copy re-encoded once into a type
this CPU multiplies fast.

llama.cpp's CPU backend has fast matrix kernels for some weight types only. Q4_0, IQ4_NL and Q8_0
go through repacked or tiled kernels; Q4_1 is multiplied one row-by-column dot product at a time.
That costs most in prefill and in batched decoding. Measured on the embedded SmolLM2-135M (Q4_1) on
the 2-core dev VM (docs/benchmarks.md, "Weights re-encoded as Q8_0"), the Q8_0 copy:
- prefills 2.2x faster and decodes 8 streams 1.3x faster;
- costs little in quality: mean KL divergence 0.007 from the Q4_1 logits (llama.cpp's own batch-size
  noise is 0.002-0.015), perplexity +0.4 % on a page of English;
- is 1.5x the file size.
Q4_0 would be faster still, but re-encoding 4-bit weights into another 4-bit grid loses real quality
(perplexity +24 %, KL 0.31), so the target is Q8_0, which holds every Q4_1 value to within 1/254 of
its block's largest magnitude.

`prepare_weights` writes the copy once into a cache folder, with a record of what it was made from
(the source's sha256, the target type, the llama-cpp-python version) and of its own sha256. Every
later start checks that record and the copy's hash (cached by size and mtime, models/integrity.py);
a copy that does not match is made again. Anything that goes wrong (no disk, no room, llama.cpp
refusing) leaves the engine on the catalogue's own file, with a warning.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from hotspare.core.errors import ModelError
from hotspare.home import PRIVATE_FILE_MODE, private_dir, private_opener, replace_durably
from hotspare.models.integrity import HashCache, sha256_file

log = logging.getLogger(__name__)

WEIGHTS_DIR_NAME = "weights"
"""The copies' folder under $HOTSPARE_HOME."""

REENCODE = {"Q4_1": "Q8_0"}
"""Source weight type (as the catalogue names it) -> the type it is re-encoded as. Only types
measured to gain are listed; everything else is loaded as it is."""

GROWTH = 1.8
"""At most this many bytes of Q8_0 per byte of Q4_1 (34 vs 20 bytes per block of 32 weights; the
unquantized norms do not grow). Used to check for room before writing."""


@dataclass(frozen=True, slots=True)
class Weights:
    """The file to load, and how it differs from the catalogue's ("" when it is the catalogue's)."""

    path: Path
    note: str = ""


def prepare_weights(
    source: Path,
    *,
    quantization: str | None,
    source_sha256: str | None,
    cache_dir: Path | None,
    num_threads: int,
    hashes: HashCache | None = None,
) -> Weights:
    """The weights to load for `source`, a file already verified against `source_sha256`. With no
    `cache_dir` (re-encoding off), no known hash, or a type not in REENCODE: `source` itself.
    Blocks while a copy is written (about half a second per 100 MB of source here). Never raises."""
    target_type = REENCODE.get((quantization or "").upper())
    if cache_dir is None or source_sha256 is None or target_type is None:
        return Weights(source)
    # Imported here: `copies_of` (used by `hotspare models rm`) must not load llama.cpp.
    from hotspare.engine.backends.llama_cpp import LLAMA_CPP_VERSION

    target = cache_dir / f"{source.stem}.{_key(source_sha256)}.{target_type.lower()}.gguf"
    expected = {"source_sha256": source_sha256, "weight_type": target_type, "llama_cpp": LLAMA_CPP_VERSION}
    note = f"{target_type}, re-encoded from {quantization}"
    hashes = hashes if hashes is not None else HashCache()
    try:
        if _is_intact(target, expected, hashes):
            return Weights(target, note)
        if not _has_room(source, cache_dir):
            return Weights(source)
        _write(source, target, expected, target_type, num_threads, hashes)
        return Weights(target, note)
    except (OSError, ModelError, ValueError) as exc:
        log.warning("could not re-encode %s as %s (%s); loading it as it is", source.name, target_type, exc)
        return Weights(source)


def copies_of(cache_dir: Path, source_sha256: str) -> list[Path]:
    """Every file kept in `cache_dir` for the source with this sha256: copies, their records, and
    leftovers of an interrupted write."""
    return sorted(cache_dir.glob(f"*.{_key(source_sha256)}.*")) if cache_dir.is_dir() else []


def _key(source_sha256: str) -> str:
    return source_sha256[:16]


def _record_path(target: Path) -> Path:
    return target.with_suffix(".json")


def _is_intact(target: Path, expected: dict[str, str], hashes: HashCache) -> bool:
    """Whether `target` is a finished copy made from `expected`'s source, byte for byte as written."""
    try:
        record = json.loads(_record_path(target).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(record, dict) or any(record.get(k) != v for k, v in expected.items()):
        return False
    try:
        if target.stat().st_size != record.get("size_bytes"):
            return False
        return hashes.sha256(target) == record.get("sha256")
    except OSError:
        return False


def _has_room(source: Path, cache_dir: Path) -> bool:
    """Disk for the copy, and RAM to load the larger weights (checked now: the catalogue's fit
    check was made for the source's size)."""
    need = int(source.stat().st_size * GROWTH)
    private_dir(cache_dir)
    free_disk = shutil.disk_usage(cache_dir).free
    free_ram = psutil.virtual_memory().available
    if free_disk < 2 * need or free_ram < 2 * need:
        log.warning(
            "not re-encoding %s: it needs %d MiB of disk and RAM (free: %d MiB disk, %d MiB RAM)",
            source.name,
            2 * need >> 20,
            free_disk >> 20,
            free_ram >> 20,
        )
        return False
    return True


def _write(
    source: Path,
    target: Path,
    expected: dict[str, str],
    target_type: str,
    num_threads: int,
    hashes: HashCache,
) -> None:
    """Write the copy under a temporary name, then its record, then move both into place: a crash
    at any point leaves either no copy or one whose record does not match (made again next time)."""
    started = time.monotonic()
    log.info("re-encoding %s as %s for faster CPU kernels (once, into %s)", source.name, target_type, target)
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    from hotspare.engine.backends.llama_cpp import requantize

    try:
        requantize(source, partial, target_type, num_threads or os.cpu_count() or 1)
        os.chmod(partial, PRIVATE_FILE_MODE)
        digest = sha256_file(partial)
        record = {**expected, "sha256": digest, "size_bytes": partial.stat().st_size}
        record_partial = partial.with_name(f"{partial.name}.json")
        with open(record_partial, "w", opener=private_opener) as f:
            f.write(json.dumps(record, indent=1) + "\n")
        _record_path(target).unlink(missing_ok=True)
        replace_durably(partial, target)
        replace_durably(record_partial, _record_path(target))
    finally:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
            partial.with_name(f"{partial.name}.json").unlink(missing_ok=True)
    hashes.remember(target, digest)
    size_mib = target.stat().st_size >> 20
    log.info("re-encoded %s in %.1f s: %d MiB", target.name, time.monotonic() - started, size_mib)
