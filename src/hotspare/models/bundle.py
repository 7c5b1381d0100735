"""Air-gapped transfer: one file that carries models, their manifest and their hashes.

A bundle is an uncompressed tar archive (GGUF weights do not compress):

    manifest.json                   {"format": "hotspare-bundle", "version": 1, "models": [...]}
    models/<name>/<file>            each model's weights, then its companion files

`create_bundle` verifies every model against the catalogue before writing, and writes to a
temporary name renamed into place when complete. `import_bundle` trusts nothing in the file: the
manifest must be valid, name models this machine's catalogue knows with the catalogue's own sha256
and size and exactly the companion files the catalogue names, agree with every hash already pinned
on this machine (models/pins.py: a pin is evidence, and a bundle never rewrites it; the bundle's
hash is taken only where the machine has none, as on a first pull), and list exactly the files the
archive holds; every file is streamed into a staging
directory and hashed. Only when every file has been proven are they moved into hotspare's store
(hotspare/home.py). When it refuses, the store is exactly as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hotspare.core.errors import ModelError
from hotspare.home import private_dir, private_opener, replace_durably, store_dir
from hotspare.models.catalog import Catalog
from hotspare.models.entry import HuggingFaceSource, ModelEntry
from hotspare.models.integrity import HashCache, sha256_file
from hotspare.models.locate import expected_weights, resolve_weights
from hotspare.models.pins import Pin, PinStore

MANIFEST_NAME = "manifest.json"
_FILE_NAME = r"^[^/\\]+$"  # a bare file name: never a path, so no member can escape the store


class BundleFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_FILE_NAME)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(ge=0)


class BundleModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    weights: BundleFile
    companions: tuple[BundleFile, ...] = ()

    @property
    def files(self) -> tuple[BundleFile, ...]:
        return (self.weights, *self.companions)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["hotspare-bundle"]
    version: Literal[1]
    models: tuple[BundleModel, ...] = Field(min_length=1)


@dataclass(frozen=True, slots=True)
class ImportedModel:
    name: str
    paths: tuple[Path, ...]


def member_name(model: str, file: str) -> str:
    return f"models/{model}/{file}"


def create_bundle(entries: Sequence[ModelEntry], out: Path, cache: HashCache | None = None) -> Manifest:
    """Write `entries` (verified first: ModelError if one is missing or corrupt) into the bundle `out`."""
    sources = [(entry, _files_of(entry, cache)) for entry in entries]
    manifest = Manifest(
        format="hotspare-bundle",
        version=1,
        models=tuple(
            BundleModel(
                name=e.name,
                weights=_described(files[0], e),
                companions=tuple(_described(p) for p in files[1:]),
            )
            for e, files in sources
        ),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
    try:
        with (
            os.fdopen(fd, "wb") as raw,
            tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            _add_bytes(tar, MANIFEST_NAME, manifest.model_dump_json(indent=2).encode())
            for (entry, files), described in zip(sources, manifest.models, strict=True):
                for path, file in zip(files, described.files, strict=True):
                    _add_file(tar, path, member_name(entry.name, file.name))
        os.replace(tmp_name, out)
    finally:
        Path(tmp_name).unlink(missing_ok=True)
    return manifest


def read_manifest(bundle: Path) -> Manifest:
    """The bundle's manifest, validated; ModelError if it is missing, malformed or not a bundle."""
    with _open(bundle) as tar:
        return _manifest(tar, bundle)


def import_bundle(bundle: Path, catalog: Catalog) -> list[ImportedModel]:
    """Verify every file of `bundle`, then install them all into the store; or refuse, changing
    nothing, with a ModelError saying what is wrong (tampered, truncated, wrong manifest)."""
    store = private_dir(store_dir())
    staging = Path(tempfile.mkdtemp(dir=store, prefix=".import-"))  # 0700
    try:
        with _open(bundle) as tar:
            manifest = _manifest(tar, bundle)
            expected = _check_against_catalog(manifest, catalog, bundle)
            _stage_members(tar, expected, staging, bundle)
        return [_install(model, staging, store) for model in manifest.models]
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _files_of(entry: ModelEntry, cache: HashCache | None) -> list[Path]:
    weights = resolve_weights(entry, cache)
    companions = entry.source.companions if isinstance(entry.source, HuggingFaceSource) else ()
    paths = [weights, *(weights.parent / c for c in companions)]
    for path in paths[1:]:
        if not path.is_file():
            raise ModelError(f"companion file {path} of {entry.name!r} is missing; pull the model again")
    return paths


def _described(path: Path, entry: ModelEntry | None = None) -> BundleFile:
    if entry is not None:  # the weights: already verified against the catalogue (or the recorded pin)
        expected = expected_weights(entry)
        return BundleFile(name=entry.file_name, sha256=expected.sha256, size_bytes=expected.size_bytes)
    return BundleFile(name=path.name, sha256=sha256_file(path), size_bytes=path.stat().st_size)


def _add_file(tar: tarfile.TarFile, path: Path, name: str) -> None:
    # The file's bytes, never a symlink: the huggingface-hub cache links snapshots to blobs.
    real = path.resolve()
    info = tar.gettarinfo(str(real), arcname=name)
    with real.open("rb") as f:
        tar.addfile(info, f)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    import io

    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


class _open:
    """tarfile.open with its failures translated to ModelError."""

    def __init__(self, bundle: Path) -> None:
        self.bundle = bundle

    def __enter__(self) -> tarfile.TarFile:
        try:
            self.tar = tarfile.open(self.bundle, mode="r:")
        except FileNotFoundError as exc:
            raise ModelError(f"bundle {self.bundle} does not exist") from exc
        except (tarfile.TarError, OSError) as exc:
            raise ModelError(f"{self.bundle} is not a hotspare bundle (or is truncated): {exc}") from exc
        return self.tar

    def __exit__(self, *exc_info: object) -> None:
        self.tar.close()


def _manifest(tar: tarfile.TarFile, bundle: Path) -> Manifest:
    try:
        first = tar.next()
    except (tarfile.TarError, OSError) as exc:
        raise ModelError(f"{bundle} is not a hotspare bundle (or is truncated): {exc}") from exc
    if first is None or first.name != MANIFEST_NAME or not first.isfile():
        raise ModelError(f"{bundle} is not a hotspare bundle: its first member is not {MANIFEST_NAME}")
    try:
        data = _read_member(tar, first, bundle).read()
    except (tarfile.TarError, OSError) as exc:
        raise ModelError(f"{bundle} is truncated inside its manifest: {exc}") from exc
    try:
        return Manifest.model_validate(json.loads(data))
    except (ValueError, ValidationError) as exc:
        raise ModelError(f"the manifest of {bundle} is not valid: {exc}") from exc


def _check_against_catalog(manifest: Manifest, catalog: Catalog, bundle: Path) -> dict[str, BundleFile]:
    """The members the archive must hold, by name; refuses models, files or hashes the catalogue (or
    a hash already pinned on this machine) disowns."""
    expected: dict[str, BundleFile] = {}
    pins = PinStore()
    for model in manifest.models:
        entry = catalog.get_or_none(model.name)
        if entry is None:
            raise ModelError(
                f"{bundle} carries model {model.name!r}, which this machine's catalogue does not know; "
                f"known models: {', '.join(catalog.names)}"
            )
        _check_weights(model, entry, bundle)
        _check_companions(model, entry, bundle)
        # A published weights hash was checked above; the catalogue outranks a pin there.
        pinned = model.companions if entry.sha256 is not None else model.files
        for file in pinned:
            _check_pin(pins.get(model.name, file.name), model.name, file, bundle)
        for file in model.files:
            name = member_name(model.name, file.name)
            if name in expected:
                raise ModelError(f"the manifest of {bundle} lists {name} twice")
            expected[name] = file
    return expected


def _check_weights(model: BundleModel, entry: ModelEntry, bundle: Path) -> None:
    w = model.weights
    # An entry without a published hash takes the bundle's (pinned on install), like a first pull.
    catalogue_sha256 = entry.sha256 if entry.sha256 is not None else w.sha256
    catalogue_size = entry.size_bytes if entry.size_bytes is not None else w.size_bytes
    if (w.name, w.sha256, w.size_bytes) != (entry.file_name, catalogue_sha256, catalogue_size):
        raise ModelError(
            f"the manifest of {bundle} describes {model.name!r} as {w.name} ({w.size_bytes} bytes, "
            f"sha256 {w.sha256}) but the catalogue expects {entry.file_name} ({entry.size_bytes} bytes, "
            f"sha256 {entry.sha256})"
        )


def _check_companions(model: BundleModel, entry: ModelEntry, bundle: Path) -> None:
    """A bundle carries exactly the companion files the catalogue names for the model: no file the
    catalogue does not know (it would sit beside the weights, and a loader may read it), none less."""
    named = entry.source.companions if isinstance(entry.source, HuggingFaceSource) else ()
    carried = [file.name for file in model.companions]
    if sorted(carried) != sorted(named):
        raise ModelError(
            f"the manifest of {bundle} gives {model.name!r} the companion files {carried or 'none'}, "
            f"but the catalogue names {list(named) or 'none'}; nothing was installed"
        )


def _check_pin(pin: Pin | None, model: str, file: BundleFile, bundle: Path) -> None:
    """A hash recorded on this machine stands: a bundle never replaces it with another."""
    if pin is not None and (pin.sha256, pin.size_bytes) != (file.sha256, file.size_bytes):
        raise ModelError(
            f"the manifest of {bundle} describes {file.name} of {model!r} as {file.size_bytes} bytes with "
            f"sha256 {file.sha256}, but this machine recorded {pin.size_bytes} bytes with sha256 "
            f"{pin.sha256} when it first got the file; nothing was installed (to replace the model on "
            f"purpose: `hotspare models rm {model}` first)"
        )


def _stage_members(
    tar: tarfile.TarFile, expected: dict[str, BundleFile], staging: Path, bundle: Path
) -> None:
    """Stream every member into `staging`, hashing it; refuse unknown, missing or altered members."""
    seen: set[str] = set()
    for member in _members(tar, bundle):
        file = expected.get(member.name)
        if file is None or member.name in seen or not member.isfile():
            raise ModelError(f"{bundle} holds {member.name!r}, which its manifest does not list")
        seen.add(member.name)
        target = staging / member.name
        target.parent.mkdir(parents=True, exist_ok=True)
        digest, size = _copy_hashing(_read_member(tar, member, bundle), target, bundle, member.name)
        if (digest, size) != (file.sha256, file.size_bytes):
            raise ModelError(
                f"{member.name} in {bundle} is {size} bytes with sha256 {digest}, but the manifest says "
                f"{file.size_bytes} bytes with sha256 {file.sha256}: the bundle is corrupt or was altered; "
                "nothing was installed"
            )
    missing = sorted(set(expected) - seen)
    if missing:
        raise ModelError(
            f"{bundle} is truncated or incomplete: missing {', '.join(missing)}; nothing was installed"
        )


def _members(tar: tarfile.TarFile, bundle: Path) -> Iterator[tarfile.TarInfo]:
    while True:
        try:
            member = tar.next()
        except (tarfile.TarError, OSError) as exc:
            raise ModelError(f"{bundle} is truncated or damaged: {exc}; nothing was installed") from exc
        if member is None:
            return
        yield member


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, bundle: Path) -> IO[bytes]:
    f = tar.extractfile(member)
    if f is None:
        raise ModelError(f"{member.name} in {bundle} is not a regular file")
    return f


def _copy_hashing(src: IO[bytes], target: Path, bundle: Path, name: str) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    try:
        with open(target, "wb", opener=private_opener) as out:
            while block := src.read(1 << 20):
                digest.update(block)
                out.write(block)
                size += len(block)
    except (tarfile.TarError, OSError) as exc:
        raise ModelError(f"{name} in {bundle} is truncated: {exc}; nothing was installed") from exc
    return digest.hexdigest(), size


def _install(model: BundleModel, staging: Path, store: Path) -> ImportedModel:
    """Move a proven model's files from staging into the store (one rename per file), recording each
    file's hash as a pin so that companions and unpublished weights stay verified from now on."""
    final_dir = private_dir(store / model.name)
    paths = []
    pins = PinStore()
    for file in model.files:
        final = final_dir / file.name
        replace_durably(staging / member_name(model.name, file.name), final)
        HashCache().remember(final, file.sha256)
        if pins.get(model.name, file.name) is None:  # a pin is never rewritten (checked equal before)
            pins.put(model.name, file.name, Pin(file.sha256, file.size_bytes))
        paths.append(final)
    return ImportedModel(name=model.name, paths=tuple(paths))
