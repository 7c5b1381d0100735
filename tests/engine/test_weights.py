"""Re-encoding the weights for faster CPU kernels (engine/weights.py), on the real embedded model."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from hotspare.app import engine_config
from hotspare.config import LocalSettings, Settings
from hotspare.engine import q8_check
from hotspare.engine.backends.llama_cpp import LlamaCppModel
from hotspare.engine.model import DecodeItem
from hotspare.engine.weights import Weights, prepare_weights
from hotspare.models.catalog import DEFAULT_MODEL, load_catalog
from hotspare.models.integrity import HashCache, sha256_file

SOURCE_SHA256 = load_catalog().get(DEFAULT_MODEL).sha256


def prepare(source: Path, cache_dir: Path | None, quantization: str | None = "Q4_1") -> Weights:
    return prepare_weights(
        source,
        quantization=quantization,
        source_sha256=SOURCE_SHA256,
        cache_dir=cache_dir,
        num_threads=2,
        hashes=HashCache(cache_dir.parent / "hashes.json" if cache_dir else None),
    )


@pytest.fixture(scope="module")
def copy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("weights") / "cache"


@pytest.fixture(scope="module")
def copy(model_path: Path, copy_dir: Path) -> Weights:
    return prepare(model_path, copy_dir)


def _first_logits(path: Path, text: str) -> np.ndarray:
    model = LlamaCppModel(path, kv_cache_tokens=512, max_slots=2, batch_tokens=128, num_threads=2)
    try:
        tokens = model.tokenize(text, add_bos=True)
        (row,) = model.decode([DecodeItem(0, 0, tokens, True)])
        return model.logits(row).astype(np.float64)
    finally:
        model.close()


@pytest.fixture(scope="module")
def loaded(copy: Weights) -> Iterator[LlamaCppModel]:
    model = LlamaCppModel(copy.path, kv_cache_tokens=512, max_slots=2, batch_tokens=128, num_threads=2)
    yield model
    model.close()


def test_a_q4_1_model_is_re_encoded_as_q8_0_with_a_record_of_its_source(
    model_path: Path, copy: Weights, loaded: LlamaCppModel
) -> None:
    assert copy.path != model_path and copy.path.parent.name == "cache"
    assert copy.path.name.endswith(".q8_0.gguf")
    assert copy.note == "Q8_0, re-encoded from Q4_1"
    assert "Q8_0" in loaded.info.description  # llama.cpp reads it back as Q8_0 weights
    record = json.loads(copy.path.with_suffix(".json").read_text())
    assert record["source_sha256"] == SOURCE_SHA256
    assert record["sha256"] == sha256_file(copy.path)
    assert record["size_bytes"] == copy.path.stat().st_size
    assert not list(copy.path.parent.glob("*partial*"))  # nothing left behind


def test_the_copy_loads_in_the_repacked_layout_where_the_build_has_one(loaded: LlamaCppModel) -> None:
    """On AVX-512 VNNI builds every 2-D weight matrix goes into hotspare's Q8_0 layout
    (engine/patches/q8_repack.cpp), the output projection included; the embedding table, read by
    row, stays as it is. Elsewhere nothing is repacked."""
    if q8_check.active():
        assert loaded.repacked_mib > 100  # of the file's 138 MiB; the layers alone are 108
    else:
        assert loaded.repacked_mib == 0


def test_the_copy_computes_what_the_source_computes(model_path: Path, copy: Weights) -> None:
    """Within llama.cpp's own batch-size noise (KL up to ~0.015, docs/engine.md); a different model
    or a broken conversion gives KL of several nats."""
    for text in ("The capital of France is", "def fibonacci(n):\n    ", "Bees make honey from"):
        p, q = (_softmax(_first_logits(path, text)) for path in (model_path, copy.path))
        kl = float((p * np.log(p / q)).sum())
        assert kl < 0.05, (text, kl)


def test_the_copy_is_reused_while_intact(model_path: Path, copy: Weights, copy_dir: Path) -> None:
    made = copy.path.stat().st_mtime_ns
    again = prepare(model_path, copy_dir)
    assert again == copy
    assert copy.path.stat().st_mtime_ns == made  # not written again


def test_a_damaged_copy_is_made_again(model_path: Path, tmp_path: Path) -> None:
    first = prepare(model_path, tmp_path / "cache")
    good = sha256_file(first.path)
    with first.path.open("r+b") as f:  # same size, different bytes
        f.seek(first.path.stat().st_size // 2)
        f.write(b"\x00" * 4096)
    stat = first.path.stat()
    os.utime(first.path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    again = prepare(model_path, tmp_path / "cache")
    assert again.path == first.path
    assert sha256_file(again.path) == good


def test_a_copy_made_by_another_llama_cpp_is_made_again(model_path: Path, tmp_path: Path) -> None:
    first = prepare(model_path, tmp_path / "cache")
    record_path = first.path.with_suffix(".json")
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps({**record, "llama_cpp": "0.0.1"}))
    made = first.path.stat().st_mtime_ns
    prepare(model_path, tmp_path / "cache")
    assert first.path.stat().st_mtime_ns != made
    assert json.loads(record_path.read_text())["llama_cpp"] == record["llama_cpp"]


def test_other_types_and_the_off_switch_load_the_catalogue_file(model_path: Path, tmp_path: Path) -> None:
    assert prepare(model_path, tmp_path / "cache", quantization="Q4_K_M") == Weights(model_path)
    assert prepare(model_path, None) == Weights(model_path)
    assert not (tmp_path / "cache").exists()


def test_a_failure_loads_the_catalogue_file_with_a_warning(
    model_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    with caplog.at_level(logging.WARNING, logger="hotspare.engine.weights"):
        assert prepare(model_path, not_a_folder) == Weights(model_path)
    assert "could not re-encode" in caplog.text


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()  # type: ignore[no-any-return]


def test_the_settings_reach_the_engine_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOTSPARE_HOME", str(tmp_path))
    entry = load_catalog().get(DEFAULT_MODEL)
    on = engine_config(Settings(), entry)
    assert (on.weights_dir, on.quantization, on.model_sha256) == (tmp_path / "weights", "Q4_1", SOURCE_SHA256)
    off = engine_config(Settings(local=LocalSettings(fast_weights=False)), entry)
    assert off.weights_dir is None
