"""sha256 of model files, with a cache so a ~100 MB file is not re-hashed at every start.

The cache is a small JSON file (`hash_cache_path()`: `$HOTSPARE_HOME/hash-cache.json`) mapping an
absolute path to the `(size_bytes, mtime_ns, sha256)` it had when it was last hashed. An entry is used
only while the file's size and mtime_ns are unchanged; anything else re-hashes the file. The cache
only saves time: deleting it is always safe, and a corrupt cache is ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hotspare.core.errors import ModelError
from hotspare.home import hotspare_home, private_dir

_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class FileStamp:
    """What identifies one version of a file cheaply: its size and modification time."""

    size_bytes: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileStamp:
        st = path.stat()
        return cls(size_bytes=st.st_size, mtime_ns=st.st_mtime_ns)


def sha256_file(path: Path) -> str:
    """The hex sha256 of the file's bytes. Raises OSError if it cannot be read."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def hash_cache_path() -> Path:
    return hotspare_home() / "hash-cache.json"


class HashCache:
    """sha256 by (path, size, mtime_ns), persisted as JSON. Not safe for concurrent writers; the
    worst a race does is drop an entry, which costs one re-hash."""

    def __init__(self, path: Path | None = None, use_cached: bool = True) -> None:
        """use_cached=False re-hashes every file (and still records the result), for `models verify`."""
        self.path = path if path is not None else hash_cache_path()
        self.use_cached = use_cached

    def sha256(self, file: Path) -> str:
        """The file's sha256, from the cache when its stamp is unchanged, else hashed and recorded."""
        file = file.resolve()
        stamp = FileStamp.of(file)
        entries = self._load()
        cached = entries.get(str(file))
        if self.use_cached and cached is not None and cached[:2] == [stamp.size_bytes, stamp.mtime_ns]:
            return str(cached[2])
        digest = sha256_file(file)
        # The file may have changed while we hashed it; only cache a digest for a stable stamp.
        if FileStamp.of(file) == stamp:
            entries[str(file)] = [stamp.size_bytes, stamp.mtime_ns, digest]
            self._save(entries)
        return digest

    def remember(self, file: Path, sha256: str) -> None:
        """Record a digest the caller computed from the file's current bytes (e.g. while writing it)."""
        file = file.resolve()
        stamp = FileStamp.of(file)
        entries = self._load()
        entries[str(file)] = [stamp.size_bytes, stamp.mtime_ns, sha256]
        self._save(entries)

    def _load(self) -> dict[str, list[int | str]]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {k: v for k, v in data.items() if isinstance(v, list) and len(v) == 3}

    def _save(self, entries: dict[str, list[int | str]]) -> None:
        try:
            private_dir(self.path.parent)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".hash-cache.")  # 0600
            with os.fdopen(fd, "w") as f:
                json.dump(entries, f, indent=0, sort_keys=True)
            os.replace(tmp, self.path)
        except OSError:
            pass  # a read-only home only costs re-hashing next time


def verify_file(path: Path, sha256: str, size_bytes: int, cache: HashCache | None = None) -> None:
    """Raise ModelError unless `path` has exactly `size_bytes` bytes whose sha256 is `sha256`.

    The size is checked first (free); the hash goes through `cache` (a default HashCache if None).
    """
    actual_size = path.stat().st_size
    if actual_size != size_bytes:
        raise ModelError(
            f"{path} is {actual_size} bytes but the catalogue expects {size_bytes} bytes "
            "(truncated or a different file); delete it and install it again"
        )
    actual = (cache if cache is not None else HashCache()).sha256(path)
    if actual != sha256:
        raise ModelError(
            f"{path} has sha256 {actual} but the catalogue expects {sha256} "
            "(corrupt or a different file); delete it and install it again"
        )
