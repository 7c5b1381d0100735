"""`hotspare models pull`: download a catalogue entry's weights with huggingface-hub and prove them.

Downloads go through `huggingface_hub.hf_hub_download` into its cache (`hf_cache_dir()`), so the
usual conventions hold: `HF_HOME` / `HF_HUB_CACHE` say where, `HF_TOKEN` authenticates, `HF_ENDPOINT`
points at a mirror, `HF_HUB_OFFLINE=1` forbids the network. It shows a progress bar on stderr and,
when the connection is cut mid-file, resumes from the bytes it has with an HTTP Range request
(huggingface-hub retries up to 5 times while data keeps arriving). huggingface-hub writes to a
temporary file and renames it into place only when complete, so a half-written file never sits
where a good one is expected. A partial file is discarded if the process itself is interrupted
(huggingface-hub >= 1.0 does not resume across processes; a later pull starts that file again).

After the download the file's size and sha256 are checked against the catalogue; a file that does
not match is deleted from the cache and the pull fails, saying expected vs actual.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hotspare.core.errors import ModelError
from hotspare.home import hf_cache_dir, hf_endpoint, is_hf_offline
from hotspare.models.entry import HuggingFaceSource, ModelEntry
from hotspare.models.integrity import HashCache, verify_file
from hotspare.models.locate import find_installed, resolve_weights
from hotspare.models.pins import Pin, PinStore


@dataclass(frozen=True, slots=True)
class PullResult:
    """`path`: the verified weights file; `was_downloaded`: False when it was already installed."""

    path: Path
    was_downloaded: bool


def pull(entry: ModelEntry, cache: HashCache | None = None, progress: bool | None = None) -> PullResult:
    """Make `entry`'s weights (and companion files) present and verified. Raises ModelError saying
    what went wrong: offline and missing, not found upstream, network failure, or a hash mismatch.

    An entry without a published sha256 is checked against the Hub's content hash (an LFS file's
    ETag) and its hash recorded (models/pins.py); so is every companion file.
    progress: show a progress bar on stderr (True), never (False), or only on a terminal (None).
    """
    cache = cache if cache is not None else HashCache()
    src = entry.source
    if not isinstance(src, HuggingFaceSource):
        # pip-installed or local: nothing to download; resolve says how to install it if missing.
        return PullResult(resolve_weights(entry, cache), was_downloaded=False)
    if find_installed(entry) is not None and _is_recorded(entry):
        return PullResult(resolve_weights(entry, cache), was_downloaded=False)
    path = _download(entry, src, src.file, progress)
    try:
        if entry.sha256 is not None and entry.size_bytes is not None:
            verify_file(path, entry.sha256, entry.size_bytes, cache)
        else:
            _record(entry, src.file, path, cache)
    except ModelError:
        _remove_cached(path)
        raise
    for companion in src.companions:
        companion_path = _download(entry, src, companion, progress)
        try:
            _record(entry, companion, companion_path, cache)
        except ModelError:
            _remove_cached(companion_path)
            raise
    return PullResult(resolve_weights(entry, cache), was_downloaded=True)


def _is_recorded(entry: ModelEntry) -> bool:
    """Every hash a load will check is known: published in the catalogue or recorded at a pull."""
    src = entry.source
    pins = PinStore()
    names = src.companions if isinstance(src, HuggingFaceSource) else ()
    weights_known = entry.sha256 is not None or pins.get(entry.name, entry.file_name) is not None
    return weights_known and all(pins.get(entry.name, n) is not None for n in names)


def _record(entry: ModelEntry, name: str, path: Path, cache: HashCache) -> None:
    """Pin a downloaded file's hash after checking it against the Hub's content hash, when the
    Hub gave one (huggingface-hub names the cached blob by its ETag: the sha256 for LFS files,
    a git sha1 for small files, which proves nothing here)."""
    digest = cache.sha256(path)
    hub_hash = path.resolve().name
    if re.fullmatch(r"[0-9a-f]{64}", hub_hash) and hub_hash != digest:
        raise ModelError(
            f"{path} has sha256 {digest} but the Hub's content hash (ETag) is {hub_hash}: "
            "the download is corrupt; it was deleted, run the pull again"
        )
    PinStore().put(entry.name, name, Pin(digest, path.stat().st_size))


def remove_cached(entry: ModelEntry) -> list[Path]:
    """Delete the entry's files from the huggingface-hub cache, and the hashes recorded for them;
    returns what was deleted."""
    from huggingface_hub import try_to_load_from_cache

    src = entry.source
    if not isinstance(src, HuggingFaceSource):
        return []
    removed: list[Path] = []
    for name in (src.file, *src.companions):
        found = try_to_load_from_cache(src.repo, name, cache_dir=hf_cache_dir(), revision=src.revision)
        if isinstance(found, str):
            removed += _remove_cached(Path(found))
    PinStore().drop(entry.name)
    return removed


def _download(entry: ModelEntry, src: HuggingFaceSource, filename: str, progress: bool | None) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = is_hf_offline()
    where = f"{src.repo}/{filename} at revision {src.revision}"
    try:
        found = hf_hub_download(
            repo_id=src.repo,
            filename=filename,
            revision=src.revision,
            cache_dir=hf_cache_dir(),
            endpoint=hf_endpoint(),
            local_files_only=offline,
            tqdm_class=_progress_bar(progress),
        )
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
        if not offline:
            raise ModelError(f"cannot reach the Hugging Face Hub to download {where}: {exc}") from exc
        raise ModelError(
            f"HF_HUB_OFFLINE is set and model {entry.name!r} ({where}) is not in the Hugging Face cache "
            f"{hf_cache_dir()}; pull it on a connected machine and bring it here with "
            "`hotspare bundle create` / `hotspare bundle import`"
        ) from exc
    except GatedRepoError as exc:
        raise ModelError(f"{src.repo} is gated: accept its licence on the Hub and set HF_TOKEN") from exc
    except RepositoryNotFoundError as exc:
        raise ModelError(f"repository {src.repo} not found (or private: set HF_TOKEN)") from exc
    except RevisionNotFoundError as exc:
        raise ModelError(f"revision {src.revision} of {src.repo} not found") from exc
    except EntryNotFoundError as exc:
        raise ModelError(f"{where} does not exist") from exc
    except (HfHubHTTPError, _transport_error(), OSError) as exc:
        raise ModelError(f"downloading {where} failed: {exc}; run the pull again to retry") from exc
    return Path(found)


def _progress_bar(show: bool | None) -> Any:
    """A tqdm class forced on or off; None keeps huggingface-hub's own (shown on a terminal only)."""
    if show is None:
        return None
    from tqdm import tqdm

    class Bar(tqdm):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = not show
            super().__init__(*args, **kwargs)

    return Bar


def _transport_error() -> type[Exception]:
    """The HTTP client error huggingface-hub lets through (httpx2 since 1.x, httpx before)."""
    try:
        import httpx2

        return httpx2.HTTPError
    except ImportError:
        import httpx

        return httpx.HTTPError


def _remove_cached(pointer: Path) -> list[Path]:
    """Delete a cache pointer (a symlink into blobs/, or a copy) and the blob it points to."""
    removed: list[Path] = []
    blob = pointer.resolve()
    for path in (pointer, blob):
        if path.is_symlink() or path.exists():
            path.unlink()
            removed.append(path)
    return removed
