"""Tiny builders for catalogue entries and fake installed distributions."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from hotspare.models.entry import ModelEntry


def entry_dict(**overrides: Any) -> dict[str, Any]:
    """A valid `[[model]]` table as a dict; keyword arguments replace its fields."""
    data: dict[str, Any] = {
        "name": "tiny",
        "family": "test",
        "params": "1M",
        "quantization": "Q4_0",
        "backend": "llama_cpp",
        "context_tokens": 512,
        "sha256": "0" * 64,
        "size_bytes": 10,
        "memory_bytes": 1000,
        "verified": True,
        "source": {"kind": "local", "path": "/nonexistent/tiny.gguf"},
    }
    data.update(overrides)
    return data


def local_entry(path: Path, content: bytes, **overrides: Any) -> ModelEntry:
    """An entry whose local file is `path`, pinned to `content`'s hash and size (the file is not written)."""
    return ModelEntry.model_validate(
        entry_dict(
            sha256=hashlib.sha256(content).hexdigest(),
            size_bytes=len(content),
            memory_bytes=len(content) + 1000,
            source={"kind": "local", "path": str(path)},
            **overrides,
        )
    )


def fake_distribution(site: Path, name: str, version: str, files: dict[str, bytes]) -> None:
    """Install a minimal distribution (dist-info + files) into `site`, for importlib.metadata to find."""
    dist_info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    record = [f"{rel},," for rel in files] + [f"{dist_info.name}/METADATA,,", f"{dist_info.name}/RECORD,,"]
    (dist_info / "RECORD").write_text("\n".join(record) + "\n")
    for rel, content in files.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_bytes(content)


def write_catalog(path: Path, *entries: dict[str, Any]) -> Path:
    """Write entries as TOML (only the shapes our factories produce: scalars, lists, one sub-table)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return str(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + "}"
        raise TypeError(v)

    lines: list[str] = []
    for entry in entries:
        lines.append("[[model]]")
        lines += [f"{k} = {value(v)}" for k, v in entry.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


GPU_WEIGHTS = b"\0" * 1000


def install_gpu_model(catalog_path: Path, monkeypatch: pytest.MonkeyPatch, **overrides: Any) -> Path:
    """A vLLM catalogue entry "gpu-model" written to `catalog_path` (made $HOTSPARE_CATALOG), pulled
    for real from a local Hub server into $HF_HOME. Returns its model directory."""
    from hotspare.models.catalog import load_catalog
    from hotspare.models.fetch import pull

    from .hub_server import COMMIT, HubServer

    data = entry_dict(name="gpu-model", backend="vllm", context_tokens=4096, verified=False)
    data = {k: v for k, v in data.items() if k not in ("sha256", "size_bytes")} | overrides
    data["source"] = {
        "kind": "huggingface",
        "repo": "o/r",
        "file": "model.safetensors",
        "revision": COMMIT,
        "companions": ["config.json"],
    }
    monkeypatch.setenv("HOTSPARE_CATALOG", str(write_catalog(catalog_path, data)))
    with HubServer() as hub, monkeypatch.context() as patch:
        hub.state.files[("o/r", "model.safetensors")] = GPU_WEIGHTS
        hub.state.files[("o/r", "config.json")] = b"{}"
        patch.setenv("HF_ENDPOINT", hub.url)
        return pull(load_catalog().get("gpu-model"), progress=False).path.parent
