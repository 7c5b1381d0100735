"""The install's build ladder (engine/build.py) with stand-in builds: a 'wheel' is a file, and the
self-test is a real child process that dies by the signal a crashing build would (SIGSEGV, SIGILL)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hotspare.engine import build
from hotspare.engine.build import BuildCache, BuildError, Flavor, Steps, ensure
from hotspare.engine.selftest import Verdict, judge

AMX_CPU = {"avx2", "avx512f", "amx_tile", "amx_int8"}
PLAIN_CPU = {"avx2", "fma"}


class StandIn:
    """Builds, installs and tests stand-in wheels; `crashes` maps a flavor name to the signal its
    build dies of in the self-test."""

    def __init__(self, crashes: dict[str, signal.Signals] | None = None, broken: bool = False) -> None:
        self.crashes = crashes or {}
        self.broken = broken
        self.built: list[str] = []
        self.installed: list[str] = []
        self.lines: list[str] = []

    def steps(self) -> Steps:
        return Steps(self.build, self.install, self.test, self.lines.append)

    def build(self, flavor: Flavor, folder: Path) -> Path:
        self.built.append(flavor.name)
        folder.mkdir(parents=True, exist_ok=True)
        wheel = folder / "llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl"
        wheel.write_text(flavor.name)
        return wheel

    def install(self, wheel: Path) -> None:
        self.installed.append(wheel.read_text())

    def test(self) -> Verdict:
        current = self.installed[-1] if self.installed else "native"
        sig = self.crashes.get(current)
        if self.broken:
            code = "raise SystemExit('no model file')"
        elif sig is not None:
            code = f"import os, signal; os.kill(os.getpid(), signal.{sig.name})"
        else:
            code = 'print(\'{"prefill_ms": 12.5, "step_ms": 3.0}\')'
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
        return judge(done.returncode, done.stdout, done.stderr, 0.1)


def test_a_native_build_that_passes_is_kept(tmp_path: Path) -> None:
    stand_in = StandIn()
    flavor = ensure(stand_in.steps(), BuildCache(tmp_path, "k"), AMX_CPU)
    assert flavor.name == "native"
    assert (stand_in.built, stand_in.installed) == (["native"], ["native"])
    assert BuildCache(tmp_path, "k").record(flavor).status == "passed"  # type: ignore[union-attr]


def test_an_amx_crash_rebuilds_without_amx_and_says_so(tmp_path: Path) -> None:
    stand_in = StandIn({"native": signal.SIGSEGV})
    flavor = ensure(stand_in.steps(), BuildCache(tmp_path, "k"), AMX_CPU)
    assert flavor.name == "no-amx"
    assert stand_in.built == ["native", "no-amx"]
    crash_lines = [line for line in stand_in.lines if "SIGSEGV" in line]
    assert len(crash_lines) == 1
    assert "trying a build without AMX" in crash_lines[0]
    assert flavor.cmake_env() == (
        "-DCMAKE_C_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16' "
        "-DCMAKE_CXX_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16'"
    )


def test_sigill_goes_down_the_ladder_past_avx512(tmp_path: Path) -> None:
    stand_in = StandIn({"native": signal.SIGILL, "no-amx": signal.SIGILL})
    assert ensure(stand_in.steps(), BuildCache(tmp_path, "k"), AMX_CPU).name == "no-avx512"
    assert stand_in.built == ["native", "no-amx", "no-avx512"]


def test_a_cpu_without_amx_or_avx512_skips_those_rungs(tmp_path: Path) -> None:
    stand_in = StandIn({"native": signal.SIGILL})
    assert ensure(stand_in.steps(), BuildCache(tmp_path, "k"), PLAIN_CPU).name == "portable"
    assert stand_in.built == ["native", "portable"]


def test_a_cached_crashing_build_is_never_installed_again(tmp_path: Path) -> None:
    first = StandIn({"native": signal.SIGSEGV})
    ensure(first.steps(), BuildCache(tmp_path, "k"), AMX_CPU)
    assert not list((tmp_path / "k" / "native").glob("*.whl"))  # the crashing wheel is gone
    again = StandIn({"native": signal.SIGSEGV})
    assert ensure(again.steps(), BuildCache(tmp_path, "k"), AMX_CPU).name == "no-amx"
    assert again.built == []  # the no-amx wheel came from the cache...
    assert again.installed == ["no-amx"]  # ...and was tested again after installing it
    assert any("crashed here before" in line for line in again.lines)


def test_an_installed_build_that_crashes_is_replaced(tmp_path: Path) -> None:
    """pip's cache gave a native wheel (installed, no record): the test catches it."""
    stand_in = StandIn({"native": signal.SIGSEGV})
    assert ensure(stand_in.steps(), BuildCache(tmp_path, "k"), AMX_CPU, installed="native").name == "no-amx"
    assert stand_in.built == ["no-amx"]  # native was not built again: it is recorded as crashed


def test_an_installed_build_that_passes_is_kept_without_building(tmp_path: Path) -> None:
    stand_in = StandIn()
    assert ensure(stand_in.steps(), BuildCache(tmp_path, "k"), AMX_CPU, installed="no-amx").name == "no-amx"
    assert (stand_in.built, stand_in.installed) == ([], [])


def test_a_failure_that_is_not_a_crash_stops_the_ladder(tmp_path: Path) -> None:
    stand_in = StandIn(broken=True)
    with pytest.raises(BuildError, match=r"could not run: .*no model file"):
        ensure(stand_in.steps(), BuildCache(tmp_path, "k"), AMX_CPU)
    assert stand_in.built == ["native"]


def test_every_build_crashing_is_an_error(tmp_path: Path) -> None:
    crashes = {name: signal.SIGSEGV for name in ("native", "no-amx", "no-avx512", "portable")}
    with pytest.raises(BuildError, match="every build"):
        ensure(StandIn(crashes).steps(), BuildCache(tmp_path, "k"), AMX_CPU)


def test_builds_are_kept_per_cpu_and_per_cmake_args() -> None:
    cpu = "model name\t: Xeon\nflags\t\t: avx2 amx_tile\n"
    assert build.cpu_flags(cpu) == {"avx2", "amx_tile"}
    assert build.cache_key(cpu) == build.cache_key(cpu)
    assert build.cache_key(cpu) != build.cache_key(cpu.replace(" amx_tile", ""))
    assert build.cache_key(cpu) != build.cache_key(cpu, "-DGGML_CUDA=on")


def test_the_caller_s_cmake_args_come_first() -> None:
    portable = build.LADDER[-1]
    assert portable.cmake_env("-DGGML_CUDA=on") == "-DGGML_CUDA=on -DGGML_NATIVE=OFF"


def test_the_pinned_version_is_pyproject_s() -> None:
    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    pin = re.search(r'"llama-cpp-python==([^"]+)"', pyproject)
    assert pin is not None and pin.group(1) == build.LLAMA_CPP_PYTHON_VERSION


def test_a_child_killed_by_a_signal_is_judged_a_crash() -> None:
    verdict = judge(-signal.SIGSEGV, "", "", 1.0)
    assert verdict.is_crash and not verdict.passed
    assert verdict.summary() == "llama.cpp crashed in native code (SIGSEGV) after 1.0 s"


def test_the_real_self_test_passes_on_the_installed_build() -> None:
    """The suite runs on the build scripts/install left: it passed this same test there."""
    from hotspare.engine.selftest import run_child

    verdict = run_child()
    assert verdict.passed, verdict.summary()
    assert verdict.prefill_ms > 0 and verdict.step_ms > 0
    assert "CPU :" in verdict.features


class RecordingModel:
    """Stands in for LlamaCppModel in `exercise`: records each decode's items."""

    batch_tokens = 512

    def __init__(self) -> None:
        self.decodes: list[list[tuple[int, int]]] = []  # per decode: (slot, number of tokens) per item

    def tokenize(self, text: str, *, add_bos: bool) -> list[int]:
        return list(range(len(text.split())))

    def clear(self) -> None:
        pass

    def copy_prefix(self, src: int, dst: int, num_tokens: int) -> None:
        pass

    def decode(self, items: list[object]) -> list[int]:
        self.decodes.append([(item.slot, len(item.tokens)) for item in items])  # type: ignore[attr-defined]
        return list(range(len(items)))

    def logits(self, row: int) -> object:
        import numpy as np

        return np.zeros(4, dtype=np.float32)


def test_the_engine_warm_up_runs_a_multi_token_prefill_and_a_batched_step() -> None:
    """The engine says Ready only after `load` ran this (worker._warm_up): the kernels a real prompt
    uses -- 64 or more tokens in one batch, then steps of several sequences."""
    from hotspare.engine.selftest import WARM_UP, exercise

    model = RecordingModel()
    exercise(model, WARM_UP)  # type: ignore[arg-type]
    prefill, *steps = model.decodes
    assert prefill == [(0, WARM_UP.prompt_tokens)] and WARM_UP.prompt_tokens >= 64
    assert len(steps) == WARM_UP.num_steps
    assert all(step == [(slot, 1) for slot in range(WARM_UP.num_sequences)] for step in steps)
    assert WARM_UP.num_sequences >= 2


def test_builds_are_kept_per_version_of_hotspare_s_llama_cpp_patch(monkeypatch: pytest.MonkeyPatch) -> None:
    before = build.cache_key("model name : X\nflags : avx2\n")
    monkeypatch.setattr(build.llama_patch, "DIGEST", "000000000000")
    assert build.cache_key("model name : X\nflags : avx2\n") != before
