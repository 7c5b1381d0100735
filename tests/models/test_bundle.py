from __future__ import annotations

import hashlib
import io
import json
import os
import random
import stat
import tarfile
from pathlib import Path

import pytest

from hotspare.core.errors import ModelError
from hotspare.models.bundle import MANIFEST_NAME, create_bundle, import_bundle, read_manifest
from hotspare.models.catalog import Catalog, resolve_weights
from hotspare.models.entry import ModelEntry
from hotspare.models.pins import Pin, PinStore

from .factories import local_entry
from .test_home import record_syncs

Prepared = tuple[Catalog, Path, dict[str, tuple[bytes, int]]]
ALPHA = random.Random(1).randbytes(300_000)
BETA = random.Random(2).randbytes(200_000)


@pytest.fixture
def origin(tmp_path: Path) -> tuple[Catalog, Path]:
    """A catalogue of two local models whose files exist on the 'connected' machine."""
    src = tmp_path / "origin"
    src.mkdir()
    (src / "alpha.gguf").write_bytes(ALPHA)
    (src / "beta.gguf").write_bytes(BETA)
    entries = (
        local_entry(src / "alpha.gguf", ALPHA, name="alpha"),
        local_entry(src / "beta.gguf", BETA, name="beta"),
    )
    return Catalog(entries=entries), src


def airgap(src: Path) -> None:
    """Remove the originals: from now on only what a bundle installs can be found."""
    for path in src.iterdir():
        path.unlink()


def store_snapshot(home: Path) -> dict[str, tuple[bytes, int]]:
    store = home / "models"
    if not store.exists():
        return {}
    return {
        str(p.relative_to(store)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(store.rglob("*"))
        if p.is_file()
    }


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def manifest_for(*models: tuple[ModelEntry, bytes]) -> bytes:
    return json.dumps(
        {
            "format": "hotspare-bundle",
            "version": 1,
            "models": [
                {
                    "name": e.name,
                    "weights": {
                        "name": e.file_name,
                        "sha256": hashlib.sha256(d).hexdigest(),
                        "size_bytes": len(d),
                    },
                }
                for e, d in models
            ],
        }
    ).encode()


def test_round_trip_installs_every_model_into_the_store(
    origin: tuple[Catalog, Path], tmp_path: Path, isolated_homes: Path
) -> None:
    catalog, src = origin
    bundle = tmp_path / "out" / "models.bundle"
    manifest = create_bundle(catalog.entries, bundle)
    assert [(m.name, m.weights.name, m.weights.size_bytes) for m in manifest.models] == [
        ("alpha", "alpha.gguf", len(ALPHA)),
        ("beta", "beta.gguf", len(BETA)),
    ]
    assert read_manifest(bundle) == manifest
    assert [p.name for p in bundle.parent.iterdir()] == ["models.bundle"]

    airgap(src)
    imported = import_bundle(bundle, catalog)
    assert [(m.name, [p.name for p in m.paths]) for m in imported] == [
        ("alpha", ["alpha.gguf"]),
        ("beta", ["beta.gguf"]),
    ]
    for entry, data in zip(catalog.entries, (ALPHA, BETA), strict=True):
        path = resolve_weights(entry)
        assert path == isolated_homes / "models" / entry.name / entry.file_name
        assert path.read_bytes() == data
    assert sorted(p.name for p in (isolated_homes / "models").iterdir()) == ["alpha", "beta"]


def test_create_refuses_a_model_that_is_not_installed(origin: tuple[Catalog, Path], tmp_path: Path) -> None:
    catalog, src = origin
    (src / "beta.gguf").unlink()
    out = tmp_path / "b.bundle"
    with pytest.raises(ModelError, match="model 'beta' is not installed"):
        create_bundle(catalog.entries, out)
    assert list(tmp_path.glob("*b.bundle*")) == []


@pytest.fixture
def installed_then_bundle(origin: tuple[Catalog, Path], tmp_path: Path, isolated_homes: Path) -> Prepared:
    """alpha already installed from an earlier bundle; a fresh bundle of both models; the store's state."""
    catalog, src = origin
    create_bundle(catalog.entries[:1], tmp_path / "first.bundle")
    bundle = tmp_path / "both.bundle"
    create_bundle(catalog.entries, bundle)
    airgap(src)
    import_bundle(tmp_path / "first.bundle", catalog)
    return catalog, bundle, store_snapshot(isolated_homes)


def refused_without_change(
    bundle: Path, catalog: Catalog, before: dict[str, tuple[bytes, int]], home: Path, match: str
) -> None:
    with pytest.raises(ModelError, match=match):
        import_bundle(bundle, catalog)
    assert store_snapshot(home) == before
    assert [p.name for p in (home / "models").iterdir()] == ["alpha"]  # no staging left behind


def test_tampered_byte_is_refused_and_nothing_changes(
    installed_then_bundle: Prepared, isolated_homes: Path
) -> None:
    catalog, bundle, before = installed_then_bundle
    data = bytearray(bundle.read_bytes())
    data[data.find(BETA) + 1000] ^= 0x01
    bundle.write_bytes(bytes(data))
    refused_without_change(
        bundle,
        catalog,
        before,
        isolated_homes,
        r"models/beta/beta.gguf in .* sha256 .*corrupt or was altered",
    )


@pytest.mark.parametrize(
    "cut", ["inside-alpha", "before-beta-data", "last-byte-of-beta", "before-beta-header"]
)
def test_truncated_bundle_is_refused_and_nothing_changes(
    installed_then_bundle: Prepared, isolated_homes: Path, cut: str
) -> None:
    catalog, bundle, before = installed_then_bundle
    data = bundle.read_bytes()
    beta_at = data.find(BETA)
    keep = {
        "inside-manifest": 600,
        "inside-alpha": data.find(ALPHA) + 5000,
        "before-beta-data": beta_at,
        "last-byte-of-beta": beta_at + len(BETA) - 1,
        "before-beta-header": data.rfind(b"models/beta/beta.gguf", 0, beta_at) // 512 * 512,
    }[cut]
    bundle.write_bytes(data[:keep])
    refused_without_change(bundle, catalog, before, isolated_homes, r"truncated")


def test_manifest_disagreeing_with_the_catalogue_is_refused(
    installed_then_bundle: Prepared,
    isolated_homes: Path,
    tmp_path: Path,
) -> None:
    # A consistent bundle (manifest hash == file hash) of bytes the catalogue does not vouch for.
    catalog, _, before = installed_then_bundle
    alpha = catalog.entries[0]
    forged = ALPHA[:-1] + b"!"
    bundle = write_tar(
        tmp_path / "forged.bundle",
        [(MANIFEST_NAME, manifest_for((alpha, forged))), ("models/alpha/alpha.gguf", forged)],
    )
    refused_without_change(
        bundle,
        catalog,
        before,
        isolated_homes,
        r"describes 'alpha' as alpha.gguf .* but the catalogue expects",
    )


@pytest.mark.parametrize(
    ("members", "match"),
    [
        ([("models/beta/beta.gguf", BETA)], r"its first member is not manifest.json"),
        ([(MANIFEST_NAME, b"{not json")], r"the manifest of .* is not valid"),
        (
            [(MANIFEST_NAME, b'{"format": "zip", "version": 1, "models": []}')],
            r"the manifest of .* is not valid",
        ),
        ("manifest-lists-missing-file", r"truncated or incomplete: missing models/beta/beta.gguf"),
        ("extra-member", r"holds 'models/beta/extra.bin', which its manifest does not list"),
        ("unknown-model", r"carries model 'gamma', which this machine's catalogue does not know"),
        ("path-escape", r"the manifest of .* is not valid"),
    ],
)
def test_wrong_manifest_is_refused_and_nothing_changes(
    installed_then_bundle: Prepared,
    isolated_homes: Path,
    tmp_path: Path,
    members: object,
    match: str,
) -> None:
    catalog, _, before = installed_then_bundle
    beta = catalog.entries[1]
    good = [(MANIFEST_NAME, manifest_for((beta, BETA))), ("models/beta/beta.gguf", BETA)]
    if members == "manifest-lists-missing-file":
        members = good[:1]
    elif members == "extra-member":
        members = [*good, ("models/beta/extra.bin", b"x")]
    elif members == "unknown-model":
        gamma = local_entry(tmp_path / "gamma.gguf", BETA, name="gamma")
        members = [(MANIFEST_NAME, manifest_for((gamma, BETA))), ("models/gamma/gamma.gguf", BETA)]
    elif members == "path-escape":
        manifest = json.loads(manifest_for((beta, BETA)))
        manifest["models"][0]["weights"]["name"] = "../../evil.gguf"
        members = [(MANIFEST_NAME, json.dumps(manifest).encode()), ("models/beta/../../evil.gguf", BETA)]
    assert isinstance(members, list)
    bundle = write_tar(tmp_path / "wrong.bundle", members)
    refused_without_change(bundle, catalog, before, isolated_homes, match)


def test_a_file_that_is_not_a_bundle_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.bundle"
    junk.write_bytes(b"PK\x03\x04 this is a zip, not a tar" * 100)
    with pytest.raises(ModelError, match=r"is not a hotspare bundle"):
        import_bundle(junk, Catalog(entries=()))
    with pytest.raises(ModelError, match=r"does not exist"):
        import_bundle(tmp_path / "absent.bundle", Catalog(entries=()))


def test_unpublished_hash_model_with_companions_travels_with_its_pins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hotspare.models.fetch import pull
    from hotspare.models.pins import PinStore

    from .hub_server import COMMIT, HubServer

    entry = ModelEntry.model_validate(
        {
            **{k: v for k, v in local_entry(tmp_path / "x", ALPHA).model_dump().items() if k != "source"},
            "name": "gpu-ish",
            "sha256": None,
            "size_bytes": None,
            "verified": False,
            "source": {
                "kind": "huggingface",
                "repo": "org/awq",
                "file": "model.safetensors",
                "revision": COMMIT,
                "companions": ["config.json"],
            },
        }
    )
    catalog = Catalog(entries=(entry,))
    with HubServer() as hub:
        hub.state.files[("org/awq", "model.safetensors")] = ALPHA
        hub.state.files[("org/awq", "config.json")] = b'{"quantization_config": {"quant_method": "awq"}}'
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        pull(entry, progress=False)
        bundle = tmp_path / "gpu.bundle"
        create_bundle([entry], bundle)

    # The air-gapped machine: empty hotspare home, empty Hugging Face cache, no network.
    monkeypatch.setenv("HOTSPARE_HOME", str(tmp_path / "airgapped-home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "airgapped-hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import_bundle(bundle, catalog)
    weights = resolve_weights(entry)
    assert weights == tmp_path / "airgapped-home" / "models" / "gpu-ish" / "model.safetensors"
    assert (weights.parent / "config.json").is_file()
    assert PinStore().get("gpu-ish", "config.json") is not None

    (weights.parent / "config.json").write_text("{}")
    with pytest.raises(ModelError, match=r"config.json is 2 bytes but the catalogue expects"):
        resolve_weights(entry)


def test_imported_files_are_private_and_on_disk_before_their_rename(
    origin: tuple[Catalog, Path], tmp_path: Path, isolated_homes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog, src = origin
    bundle = tmp_path / "models.bundle"
    create_bundle(catalog.entries, bundle)
    airgap(src)
    events = record_syncs(monkeypatch)
    old_umask = os.umask(0o022)
    try:
        imported = import_bundle(bundle, catalog)
    finally:
        os.umask(old_umask)
    for path in (p for model in imported for p in model.paths):
        staged = next(source for kind, source in events if kind == "replace" and source.endswith(path.name))
        assert events.index(("fsync", staged)) < events.index(("replace", staged))
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


# --- companions and pins: a bundle never vouches for more than the catalogue and this machine ------

CONFIG = b'{"quantization_config": {"quant_method": "awq"}}'


def unpublished_entry(tmp_path: Path, companions: tuple[str, ...] = ("config.json",)) -> ModelEntry:
    """A Hugging Face entry with no published hash (trust on first use) and `companions`."""
    fields = local_entry(tmp_path / "x", ALPHA).model_dump()
    return ModelEntry.model_validate(
        {
            **{k: v for k, v in fields.items() if k != "source"},
            "name": "gpu-ish",
            "sha256": None,
            "size_bytes": None,
            "verified": False,
            "source": {
                "kind": "huggingface",
                "repo": "org/awq",
                "file": "model.safetensors",
                "revision": "0" * 40,
                "companions": list(companions),
            },
        }
    )


def hand_made_bundle(path: Path, files: list[tuple[str, bytes]], weights: bytes = ALPHA) -> Path:
    """A bundle of model gpu-ish: `weights` then `files` as companions, all listed in the manifest."""
    members = [("model.safetensors", weights), *files]
    described = [
        {"name": name, "sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data)}
        for name, data in members
    ]
    manifest = {
        "format": "hotspare-bundle",
        "version": 1,
        "models": [{"name": "gpu-ish", "weights": described[0], "companions": described[1:]}],
    }
    return write_tar(
        path,
        [(MANIFEST_NAME, json.dumps(manifest).encode())]
        + [(f"models/gpu-ish/{name}", data) for name, data in members],
    )


def test_a_companion_the_catalogue_does_not_name_is_refused(tmp_path: Path, isolated_homes: Path) -> None:
    catalog = Catalog(entries=(unpublished_entry(tmp_path),))
    extra = [("config.json", CONFIG), ("tokenizer_config.json", b'{"chat_template": "{{ evil }}"}')]
    with pytest.raises(ModelError, match=r"companion files \['config.json', 'tokenizer_config.json'\]"):
        import_bundle(hand_made_bundle(tmp_path / "extra.bundle", extra), catalog)
    with pytest.raises(ModelError, match=r"companion files none, but the catalogue names \['config.json'\]"):
        import_bundle(hand_made_bundle(tmp_path / "short.bundle", []), catalog)
    assert store_snapshot(isolated_homes) == {}
    assert PinStore().get("gpu-ish", "model.safetensors") is None


def test_an_existing_pin_is_never_replaced_by_a_bundles_hash(tmp_path: Path, isolated_homes: Path) -> None:
    catalog = Catalog(entries=(unpublished_entry(tmp_path),))
    import_bundle(hand_made_bundle(tmp_path / "first.bundle", [("config.json", CONFIG)]), catalog)
    before = store_snapshot(isolated_homes)
    pinned = PinStore().get("gpu-ish", "config.json")
    assert pinned == Pin(hashlib.sha256(CONFIG).hexdigest(), len(CONFIG))
    tampered = hand_made_bundle(tmp_path / "tampered.bundle", [("config.json", b'{"evil": true}')])
    with pytest.raises(ModelError, match=r"config.json of 'gpu-ish' .* this machine recorded"):
        import_bundle(tampered, catalog)
    other_weights = hand_made_bundle(tmp_path / "other.bundle", [("config.json", CONFIG)], weights=BETA)
    with pytest.raises(ModelError, match=r"model.safetensors of 'gpu-ish' .* this machine recorded"):
        import_bundle(other_weights, catalog)
    assert PinStore().get("gpu-ish", "config.json") == pinned
    assert store_snapshot(isolated_homes) == before
    resolve_weights(catalog.get("gpu-ish"))  # still verifies against the first hashes
