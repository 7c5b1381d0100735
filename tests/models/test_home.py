"""HOTSPARE_HOME's files are this user's only (0700 directories, 0600 files, whatever the umask), and a
verified file reaches the disk before it takes its final name."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from hotspare.api.responses.store import ResponseStore, StoredTurn
from hotspare.home import private_dir, replace_durably
from hotspare.models.integrity import HashCache
from hotspare.models.pins import Pin, PinStore


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """The common default umask: without care, files come out 0644 and directories 0755."""
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "fresh" / "hotspare"
    monkeypatch.setenv("HOTSPARE_HOME", str(home))
    return home


@pytest.mark.usefixtures("loose_umask")
def test_directories_made_in_the_home_are_0700(home: Path) -> None:
    private_dir(home / "kvcache" / "model-123")
    assert [mode(p) for p in (home, home / "kvcache", home / "kvcache" / "model-123")] == [0o700] * 3


@pytest.mark.usefixtures("loose_umask")
def test_an_existing_loose_home_is_tightened(home: Path) -> None:
    home.mkdir(parents=True, mode=0o755)
    os.chmod(home, 0o755)
    private_dir(home / "models")
    assert mode(home) == 0o700


@pytest.mark.usefixtures("loose_umask")
def test_the_conversation_store_pins_and_hash_cache_are_0600(home: Path) -> None:
    store = ResponseStore(home / "responses.sqlite3", 1_000_000, 1e9)
    store.put(StoredTurn("r1", 1e9, None, "local", False, [], {"id": "r1"}))
    files = [home / "responses.sqlite3", home / "responses.sqlite3-wal"]
    assert [mode(p) for p in files] == [0o600, 0o600]
    store.close()
    weights = home / "models" / "m" / "m.gguf"
    PinStore().put("m", "m.gguf", Pin("0" * 64, 4))
    private_dir(weights.parent)
    weights.write_bytes(b"GGUF")
    HashCache().remember(weights, "0" * 64)
    assert [mode(home / name) for name in ("pins.json", "hash-cache.json")] == [0o600, 0o600]
    assert mode(home) == 0o700


@pytest.mark.usefixtures("loose_umask")
def test_a_store_made_before_is_made_private(home: Path) -> None:
    home.mkdir(parents=True)
    (home / "responses.sqlite3").touch(mode=0o644)
    ResponseStore(home / "responses.sqlite3", 1_000_000, 1e9).close()
    assert (mode(home), mode(home / "responses.sqlite3")) == (0o700, 0o600)


def test_replace_durably_syncs_the_data_before_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = record_syncs(monkeypatch)
    source, target = tmp_path / "partial", tmp_path / "final"
    source.write_bytes(b"verified")
    replace_durably(source, target)
    assert events == [("fsync", str(source)), ("replace", str(source)), ("fsync", str(tmp_path))]
    assert target.read_bytes() == b"verified"


def record_syncs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Record every fsync (by the path its descriptor names) and every os.replace, in order."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(source: str | Path, target: str | Path) -> None:
        events.append(("replace", str(source)))
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events
