"""The model catalogue: `models.toml` loaded, validated and looked up by name.

    from hotspare.models.catalog import load_catalog, resolve_weights, DEFAULT_MODEL
    entry = load_catalog().get(DEFAULT_MODEL)
    path = resolve_weights(entry)     # verified weights file, or ModelError saying what to do

`load_catalog(None)` reads the first of: `$HOTSPARE_CATALOG`; `./models.toml`; the repository's
`models.toml` beside the source tree (editable installs); the copy shipped inside the package.
Format: one `[[model]]` table per entry, fields as documented on `ModelEntry` (models/entry.py).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hotspare.core.errors import ConfigError, NotFound
from hotspare.models.entry import LocalSource, ModelEntry
from hotspare.models.locate import resolve_weights

__all__ = ["DEFAULT_MODEL", "Catalog", "ModelEntry", "catalog_path", "load_catalog", "resolve_weights"]

DEFAULT_MODEL = "smollm2-135m-instruct"

_REPO_CATALOG = Path(__file__).resolve().parents[3] / "models.toml"


class _CatalogFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: tuple[ModelEntry, ...] = Field(min_length=1)


@dataclass(frozen=True, slots=True)
class Catalog:
    """Validated entries, in file order. Names are unique."""

    entries: tuple[ModelEntry, ...]
    path: Path | None = None

    def get(self, name: str) -> ModelEntry:
        """The entry called `name`; raises NotFound listing the known names."""
        if (entry := self.get_or_none(name)) is not None:
            return entry
        known = ", ".join(e.name for e in self.entries)
        raise NotFound(f"no model named {name!r} in the catalogue ({self.path}); known models: {known}")

    def get_or_none(self, name: str) -> ModelEntry | None:
        return next((e for e in self.entries if e.name == name), None)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.entries)


def catalog_path() -> Path | None:
    """The catalogue file `load_catalog(None)` reads; None means the packaged copy."""
    if explicit := os.environ.get("HOTSPARE_CATALOG"):
        return Path(explicit).expanduser()
    for candidate in (Path.cwd() / "models.toml", _REPO_CATALOG):
        if candidate.is_file():
            return candidate
    return None


def load_catalog(path: Path | None = None) -> Catalog:
    """Read and validate a catalogue. Raises ConfigError naming the file, the entry, the field and the
    bad value when it is not valid, and when the file cannot be read or parsed."""
    path = path if path is not None else catalog_path()
    where = str(path) if path is not None else "hotspare's packaged models.toml"
    try:
        if path is None:
            text = resources.files("hotspare.models").joinpath("models.toml").read_text("utf-8")
        else:
            text = path.read_text("utf-8")
        raw = tomllib.loads(text)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read the model catalogue {where}: {exc}") from exc
    try:
        parsed = _CatalogFile.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(_describe(err, raw) for err in exc.errors())
        raise ConfigError(f"invalid model catalogue {where}: {problems}") from exc
    entries = tuple(_anchor(e, path.parent) if path is not None else e for e in parsed.model)
    _check_unique(entries, where)
    return Catalog(entries=entries, path=path)


def _anchor(entry: ModelEntry, base: Path) -> ModelEntry:
    """Make a local source's relative path relative to the catalogue's directory."""
    src = entry.source
    if isinstance(src, LocalSource) and not src.path.is_absolute():
        return entry.model_copy(update={"source": src.model_copy(update={"path": base / src.path})})
    return entry


def _check_unique(entries: tuple[ModelEntry, ...], where: str) -> None:
    seen: set[str] = set()
    for entry in entries:
        if entry.name in seen:
            raise ConfigError(f"invalid model catalogue {where}: the name {entry.name!r} is used twice")
        seen.add(entry.name)


def _describe(err: Any, raw: dict[str, Any]) -> str:
    """One pydantic error as "model 'x' (entry 2), field source.revision: <msg> (got <value>)"."""
    loc = list(err["loc"])
    where = "top level"
    if len(loc) >= 2 and loc[0] == "model" and isinstance(loc[1], int):
        index = loc[1]
        models = raw.get("model")
        name = (
            models[index].get("name")
            if isinstance(models, list) and isinstance(models[index], dict)
            else None
        )
        where = f"model {name!r} (entry {index + 1})" if name else f"entry {index + 1}"
        loc = loc[2:]
        # The discriminated union adds the chosen kind to the path; it repeats source.kind.
        if len(loc) >= 2 and loc[0] == "source" and loc[1] in ("pypi", "huggingface", "local"):
            loc = [loc[0], *loc[2:]]
    field = ".".join(str(p) for p in loc) or "(the entry itself)"
    got = "" if err["type"] == "missing" or not loc else f" (got {_short(err['input'])})"
    return f"{where}, field {field}: {err['msg']}{got}"


def _short(value: object, max_chars: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= max_chars else text[: max_chars - 3] + "..."
