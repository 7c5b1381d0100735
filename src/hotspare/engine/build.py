"""Install a llama.cpp build that survives this CPU: `python -m hotspare.engine.build` (scripts/install).

The rule: build with the host's native instruction sets (the fastest kernels), then prove the build on
a real workload (engine/selftest.py: a prefill of hundreds of tokens in one batch and batched decode
steps) in a child process. If the child dies by a signal, native code crashed: rebuild without the
instruction sets most likely at fault, in the order of LADDER (AMX first, then AVX-512, then a
portable build), one line saying so, and test again. Only what the self-test proves broken is dropped.

Measured reason: llama-cpp-python 0.3.36 built natively on a Firecracker VM whose Xeon advertises
`amx_tile amx_int8 amx_bf16` passes a short decode but crashes (SIGSEGV, a general protection fault at
`ldtilecfg` in `ggml_backend_amx_mul_mat`) on any prompt of a few hundred tokens. Built with
`-mno-amx-*` (AVX-512 kept) it runs everything.

pip caches built wheels by version, not by build flags, so a cached crashing wheel would be reused
silently. Builds therefore bypass pip's cache and live in hotspare's own build cache, one folder per
(CPU, CMAKE_ARGS of the caller, flavor), each with a record of its last self-test. A flavor recorded
as crashed is never installed again on that CPU; a cached wheel that passed once is installed and
tested again (a cached wheel is not a tested wheel). The installed flavor is written to
`<sys.prefix>/hotspare-engine.json` for `hotspare doctor`.

Standard library only: this runs before hotspare's dependencies are installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from hotspare.engine import llama_patch
from hotspare.engine.selftest import Verdict, run_child

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
"""The pinned version (pyproject.toml pins the same; a test checks)."""

MARKER_NAME = "hotspare-engine.json"


@dataclass(frozen=True, slots=True)
class Flavor:
    """One way to build llama.cpp. `cflags` go to both C and C++ compilers after -march=native (GCC
    lets an explicit -mno-X win over -march whatever the order); `requires` is the /proc/cpuinfo flag
    without which the flavor is the same as the one before it (and is skipped)."""

    name: str
    drops: str  # what a person reads: "AMX"
    cflags: tuple[str, ...] = ()
    cmake_args: tuple[str, ...] = ()
    requires: str = ""

    def describe(self) -> str:
        return f"{self.name}: " + (
            f"without {self.drops}"
            if self.cflags or self.cmake_args
            else "every instruction set this CPU has"
        )

    def cmake_env(self, base: str = "") -> str:
        """The CMAKE_ARGS value for this flavor, after the caller's own `base` arguments."""
        args = [base] if base else []
        if self.cflags:
            flags = " ".join(self.cflags)
            args.append(f"-DCMAKE_C_FLAGS={shlex.quote(flags)} -DCMAKE_CXX_FLAGS={shlex.quote(flags)}")
        args.extend(self.cmake_args)
        return " ".join(args)


_NO_AMX = ("-mno-amx-tile", "-mno-amx-int8", "-mno-amx-bf16")
LADDER: tuple[Flavor, ...] = (
    Flavor("native", ""),
    Flavor("no-amx", "AMX", cflags=_NO_AMX, requires="amx_tile"),
    Flavor("no-avx512", "AMX and AVX-512", cflags=(*_NO_AMX, "-mno-avx512f"), requires="avx512f"),
    Flavor("portable", "every instruction set beyond the baseline", cmake_args=("-DGGML_NATIVE=OFF",)),
)


def candidates(cpu_flags: set[str]) -> list[Flavor]:
    """The flavors worth trying on a CPU with `cpu_flags`, fastest first."""
    return [f for f in LADDER if not f.requires or f.requires in cpu_flags]


# ----- the build cache -----


@dataclass(frozen=True, slots=True)
class Record:
    """The last self-test of one flavor's build: "passed" or "crashed" (or "failed": not a crash)."""

    flavor: str
    status: str
    summary: str
    cmake_args: str
    at: float


class BuildCache:
    """hotspare's own wheel cache: `root/<key>/<flavor>/` holds the wheel and `record.json`."""

    def __init__(self, root: Path, key: str) -> None:
        self.root = root / key

    def folder(self, flavor: Flavor) -> Path:
        return self.root / flavor.name

    def wheel(self, flavor: Flavor) -> Path | None:
        wheels = sorted(self.folder(flavor).glob("llama_cpp_python-*.whl"))
        return wheels[-1] if wheels else None

    def record(self, flavor: Flavor) -> Record | None:
        path = self.folder(flavor) / "record.json"
        try:
            return Record(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def save(self, flavor: Flavor, record: Record) -> None:
        folder = self.folder(flavor)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "record.json").write_text(json.dumps(asdict(record), indent=1))
        if record.status == "crashed":  # never installed again on this CPU
            for wheel in folder.glob("*.whl"):
                wheel.unlink()


def default_cache_root() -> Path:
    if root := os.environ.get("HOTSPARE_BUILD_CACHE"):
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hotspare" / f"llama-cpp-python-{LLAMA_CPP_PYTHON_VERSION}"


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    text = cpuinfo if cpuinfo is not None else _read("/proc/cpuinfo")
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def cache_key(cpuinfo: str | None = None, base_cmake_args: str = "") -> str:
    """Builds are kept per CPU (model name and flags), per caller's CMAKE_ARGS and per version of
    hotspare's change to llama.cpp (engine/llama_patch.py)."""
    text = cpuinfo if cpuinfo is not None else _read("/proc/cpuinfo")
    model = next(
        (ln.partition(":")[2].strip() for ln in text.splitlines() if ln.startswith("model name")), ""
    )
    flags = " ".join(sorted(cpu_flags(text)))
    digest = hashlib.sha256(f"{model}\n{flags}\n{base_cmake_args}\n{llama_patch.DIGEST}".encode()).hexdigest()
    return digest[:16]


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


# ----- the decision -----

Builder = Callable[[Flavor, Path], Path]  # (flavor, folder) -> the built wheel
Installer = Callable[[Path], None]
Tester = Callable[[], Verdict]


class BuildError(Exception):
    """No flavor of the build passed the self-test (or the test could not run at all)."""


@dataclass(frozen=True, slots=True)
class Steps:
    """How to build, install and test; real ones in `real_steps`, stand-ins in tests."""

    build: Builder
    install: Installer
    test: Tester
    say: Callable[[str], None]


def ensure(
    steps: Steps, cache: BuildCache, flags: set[str], base_cmake_args: str = "", installed: str | None = None
) -> Flavor:
    """Leave a build that passes the self-test installed, and return its flavor. `installed` names
    the flavor installed now, if any: it is tested first and kept if it passes. Raises BuildError."""
    ladder = candidates(flags)
    if installed is not None:
        current = next((f for f in ladder if f.name == installed), None)
        if current is not None and _judge(steps, cache, current, base_cmake_args):
            return current
    for flavor in ladder:
        record = cache.record(flavor)
        if record is not None and record.status == "crashed":
            steps.say(f"skipping the {flavor.name} build: it crashed here before ({record.summary})")
            continue
        wheel = cache.wheel(flavor)
        if wheel is None:
            steps.say(f"building llama.cpp ({flavor.describe()}) -- a few minutes")
            wheel = steps.build(flavor, cache.folder(flavor))
        else:
            steps.say(f"installing the cached {flavor.name} build of llama.cpp")
        steps.install(wheel)
        if _judge(steps, cache, flavor, base_cmake_args):
            return flavor
    raise BuildError("every build of llama.cpp crashed in the self-test on this CPU; see the lines above")


def _judge(steps: Steps, cache: BuildCache, flavor: Flavor, base_cmake_args: str) -> bool:
    """Run the self-test on the installed `flavor`; record it. False on a crash, raises BuildError on
    a failure that is not a crash (no flavor would fix it)."""
    verdict = steps.test()
    status = "passed" if verdict.passed else "crashed" if verdict.is_crash else "failed"
    cache.save(
        flavor, Record(flavor.name, status, verdict.summary(), flavor.cmake_env(base_cmake_args), time.time())
    )
    if verdict.passed:
        steps.say(f"llama.cpp self-test ({flavor.name} build): {verdict.summary()}")
        return True
    if not verdict.is_crash:
        raise BuildError(f"the llama.cpp self-test could not run: {verdict.summary()}")
    after = _next_name(flavor)
    steps.say(f"the {flavor.name} build of {verdict.summary()} in the self-test; {after}")
    return False


def _next_name(flavor: Flavor) -> str:
    names = [f.name for f in LADDER]
    rest = LADDER[names.index(flavor.name) + 1 :]
    return f"trying a build without {rest[0].drops}" if rest else "no build left to try"


# ----- the real steps -----


def real_steps(python: str = sys.executable, say: Callable[[str], None] | None = None) -> Steps:
    base = os.environ.get("CMAKE_ARGS", "")
    out = say or (lambda line: print(f"hotspare: {line}", flush=True))

    def build(flavor: Flavor, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "CMAKE_ARGS": flavor.cmake_env(base)}
        env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", "2")
        with tempfile.TemporaryDirectory(prefix="hotspare-llama-") as tmp:
            source = patched_source(python, folder.parent / "sdist", Path(tmp))  # shared by the flavors
            _run(
                [python, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "-w", str(folder), str(source)],
                env,
            )
        wheels = sorted(folder.glob("llama_cpp_python-*.whl"))
        if not wheels:
            raise BuildError(f"pip built no wheel into {folder}")
        return wheels[-1]

    def install(wheel: Path) -> None:
        _run([python, "-m", "pip", "install", "-q", "--force-reinstall", "--no-deps", str(wheel)])
        _run([python, "-m", "pip", "install", "-q", str(wheel), "psutil"])  # its dependencies

    return Steps(build, install, lambda: run_child(python=python), out)


def patched_source(python: str, sdist_dir: Path, where: Path) -> Path:
    """The llama-cpp-python sdist, unpacked under `where` and patched (engine/llama_patch.py). The
    sdist is downloaded into `sdist_dir` once and reused by the ladder's later builds."""
    sdists = sorted(sdist_dir.glob("llama_cpp_python-*.tar.gz"))
    if not sdists:
        _run(
            [python, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "--no-binary", ":all:",
             "-d", str(sdist_dir), f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"],
        )  # fmt: skip
        sdists = sorted(sdist_dir.glob("llama_cpp_python-*.tar.gz"))
    if not sdists:
        raise BuildError(f"pip downloaded no llama-cpp-python sdist into {sdist_dir}")
    with tarfile.open(sdists[-1]) as archive:
        archive.extractall(where, filter="data")
    source = where / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}"
    try:
        llama_patch.apply(source)
    except llama_patch.PatchError as exc:
        raise BuildError(f"hotspare's llama.cpp patch does not apply: {exc}") from exc
    return source


def _run(argv: Sequence[str], env: dict[str, str] | None = None) -> None:
    done = subprocess.run(argv, env=env, check=False)
    if done.returncode != 0:
        raise BuildError(f"{' '.join(argv[:4])} ... failed with exit code {done.returncode}")


def marker_path(prefix: str = sys.prefix) -> Path:
    return Path(prefix) / MARKER_NAME


def read_marker(prefix: str = sys.prefix) -> dict[str, str]:
    try:
        data = json.loads(marker_path(prefix).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def installed_version() -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        return None


def main() -> int:
    cpuinfo = _read("/proc/cpuinfo")
    base = os.environ.get("CMAKE_ARGS", "")
    cache = BuildCache(default_cache_root(), cache_key(cpuinfo, base))
    installed = None
    if installed_version() == LLAMA_CPP_PYTHON_VERSION:
        marker = read_marker()
        if marker.get("patch") == llama_patch.DIGEST:  # else: built by pip, or before this patch
            installed = marker.get("flavor", "native")
    steps = real_steps()
    try:
        flavor = ensure(steps, cache, cpu_flags(cpuinfo), base, installed)
    except BuildError as exc:
        print(f"hotspare: {exc}", file=sys.stderr)
        return 1
    marker_path().write_text(
        json.dumps(
            {
                "flavor": flavor.name,
                "drops": flavor.drops,
                "cmake_args": flavor.cmake_env(base),
                "patch": llama_patch.DIGEST,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
