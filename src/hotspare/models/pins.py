"""Hashes recorded on this machine for files the catalogue ships no hash for (trust on first use).

Some catalogue entries (`verified = false`, no `sha256`) name a Hugging Face repo pinned to a commit
whose file hashes we could not confirm. `hotspare models pull` hashes what it downloads, checks it
against the Hub's own content hash (the ETag of an LFS file is its sha256), and records it here; the
same happens for companion files (config, tokenizer, extra weight shards) of every entry. From then
on every load verifies the files against these pins, so a later change on disk is caught exactly as
for a catalogue hash. The file is `$HOTSPARE_HOME/pins.json`: {model: {file: [sha256, size_bytes]}}.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hotspare.core.errors import ModelError
from hotspare.home import hotspare_home, private_dir, replace_durably


@dataclass(frozen=True, slots=True)
class Pin:
    sha256: str
    size_bytes: int


class PinStore:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path if path is not None else hotspare_home() / "pins.json"

    def get(self, model: str, file: str) -> Pin | None:
        match self._load().get(model, {}).get(file):
            case [str(sha256), int(size_bytes)]:
                return Pin(sha256, size_bytes)
            case _:
                return None

    def put(self, model: str, file: str, pin: Pin) -> None:
        data = self._load()
        data.setdefault(model, {})[file] = [pin.sha256, pin.size_bytes]
        self._save(data)

    def drop(self, model: str) -> None:
        data = self._load()
        if data.pop(model, None) is not None:
            self._save(data)

    def _load(self) -> dict[str, dict[str, list[object]]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            # Unlike the hash cache, pins are evidence: a damaged file must not silently vanish.
            raise ModelError(f"cannot read the recorded hashes in {self.path}: {exc}") from exc
        return data if isinstance(data, dict) else {}

    def _save(self, data: dict[str, dict[str, list[object]]]) -> None:
        private_dir(self.path.parent)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".pins.")  # 0600
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        replace_durably(tmp, self.path)
