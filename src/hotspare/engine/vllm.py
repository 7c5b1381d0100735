"""vLLM as the local backend: a supervised child process, spoken to over its OpenAI API on 127.0.0.1.

vLLM schedules and caches by itself (continuous batching, prefix caching), so hotspare does not
schedule under it. `VllmBackend` runs `vllm serve` (the command from engine/vllm_launch.py), waits
for its /health, and answers each `ChatRequest` with a streamed chat completion sent through the
OpenAI upstream client (upstream/openai.py). Its `name` is "local", like the llama.cpp engine's, so
the router and the API treat the two alike.

Supervision: the process runs in a session (process group) of its own. When it exits -- a crash,
an out-of-memory kill, or a kill by hotspare after `max_health_failures` failed health checks in a
row, one every `health_interval_s` (a hang) -- requests in flight end with BackendUnavailable (their
connections break), `is_ready` turns False (/ready says 503; the router goes on without it), what is
left of its process group is killed, and it is started again with backoff (0.5 s doubling to 30 s)
until it is healthy. `stop()` sends SIGTERM to the group, then SIGKILL after `stop_timeout_s`. On
Linux the kernel sends vLLM SIGTERM when hotspare dies without stopping it (SIGKILL, out of memory).

Secrets: vLLM starts without this process's keys in its environment (core/environment.py), and its
port on 127.0.0.1 requires a random key made for each backend (any local user could otherwise
use the model through it); hotspare sends it on every request.

Tools and JSON output go through the prompt (agents/prompt.py's fallback format) and tool calls are
read back out of the answer (agents/turn.py), as on the llama.cpp engine. JSON output is also
constrained by vLLM's guided decoding (`response_format`); tool calls are not (no grammar): a call
is not guaranteed to be well-formed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import json
import logging
import os
import secrets
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import httpx

from hotspare.agents.prompt import offered_tools, prompt_input
from hotspare.agents.turn import AnswerReader, Turn, with_model_stop
from hotspare.core.environment import child_environment
from hotspare.core.errors import (
    BackendUnavailable,
    FailureClass,
    HotspareError,
    InvalidRequest,
    ModelError,
    Overloaded,
    UpstreamError,
)
from hotspare.core.types import ApiFormat, ChatRequest, Finish, StreamEvent, TextDelta
from hotspare.engine.attention import AttentionChoice
from hotspare.engine.supervision import CrashPolicy, death_cause
from hotspare.engine.supervisor import Supervisor
from hotspare.engine.vllm_launch import API_KEY_ENV, VllmLaunch, VllmOptions, vllm_launch
from hotspare.models.entry import ModelEntry
from hotspare.models.locate import resolve_weights
from hotspare.upstream.base import ClientCall
from hotspare.upstream.config import TimeoutsConfig, UpstreamConfig
from hotspare.upstream.openai import OpenAIUpstream

log = logging.getLogger(__name__)

# vLLM is on this machine: connecting is instant, but a request may queue behind a full batch.
_TIMEOUTS = TimeoutsConfig(connect_s=5.0, first_token_s=600.0, idle_s=120.0, total_s=3600.0)
_HEALTH_POLL_S = 0.25
_MAX_BACKOFF_S = 30.0
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class _VllmClient(OpenAIUpstream):
    """The OpenAI client, plus the sampling parameters vLLM accepts beyond OpenAI's."""

    def build_body(self, request: ChatRequest) -> dict[str, Any]:
        body = super().build_body(request)
        s = request.sampling
        if s.top_k:
            body["top_k"] = s.top_k
        if s.min_p:
            body["min_p"] = s.min_p
        if s.repeat_penalty != 1.0:
            body["repetition_penalty"] = s.repeat_penalty
        if request.json_output is not None:
            schema = request.json_output.schema
            body["response_format"] = (
                {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
                if schema is not None
                else {"type": "json_object"}
            )
        return body


class VllmBackend:
    """See the module docstring. Implements `LocalBackend` (engine/protocol.py); `start()` before
    use, `stop()` after. vLLM keeps its own counters and prefix cache: `stats()` is None, `warm` a
    no-op (`can_warm` False), and no prompt is refused as poison."""

    name = "local"
    attention: AttentionChoice | None = None  # vLLM chooses its attention backend itself
    weights_note = ""
    num_poison_requests = 0
    can_warm = False

    def __init__(
        self,
        launch: VllmLaunch,
        *,
        context_tokens: int,
        stop: tuple[str, ...] = (),
        start_timeout_s: float = 900.0,
        stop_timeout_s: float = 30.0,
        health_interval_s: float = 10.0,
        max_health_failures: int = 3,
    ) -> None:
        self.launch = launch
        self.model_name = launch.served_model_name
        self.context_tokens = context_tokens
        self._model_stop = stop
        self._start_timeout_s = start_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._health_interval_s = health_interval_s
        self._max_health_failures = max_health_failures
        self._process: asyncio.subprocess.Process | None = None
        self._is_healthy = False
        self._supervisor: asyncio.Task[None] | None = None
        self._policy = CrashPolicy(
            failed_backoff_s=_MAX_BACKOFF_S, max_backoff_s=_MAX_BACKOFF_S, hint="vLLM's own log says why"
        )
        self._restarts = Supervisor(self._policy, log, name="vLLM", process="vLLM")
        root = launch.base_url.removesuffix("/v1")
        config = UpstreamConfig(name="vllm", kind="openai", base_url=root, timeouts=_TIMEOUTS)
        self._client = _VllmClient(config)
        key = dict(launch.env).get(API_KEY_ENV)
        self._auth = (("authorization", f"Bearer {key}"),) if key else ()
        self._http = httpx.AsyncClient(
            base_url=root, timeout=httpx.Timeout(10.0, connect=2.0), headers=dict(self._auth)
        )

    # ----- lifecycle -----

    @property
    def is_ready(self) -> bool:
        return self._is_healthy and self._process is not None and self._process.returncode is None

    @property
    def pid(self) -> int | None:
        """The vLLM process id (for supervision tests)."""
        return self._process.pid if self._process is not None else None

    async def start(self) -> None:
        """Start vLLM; return once its /health answers 200. Raises ModelError if it exits first or is
        not healthy within `start_timeout_s`."""
        await self._spawn()
        supervise = self._restarts.run(self._spawn, self._wait_death, None, lambda: False)
        self._supervisor = asyncio.create_task(supervise, name="hotspare-vllm-supervisor")

    async def stop(self) -> None:
        """Stop the supervisor and the vLLM process group; idempotent."""
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        self._is_healthy = False
        if self._process is not None:
            await self._terminate(self._process)
        await self._client.aclose()
        await self._http.aclose()

    async def _spawn(self) -> None:
        launch = self.launch
        log.info("starting vLLM: %s", " ".join(launch.argv))
        try:
            process = await asyncio.create_subprocess_exec(
                *launch.argv,
                env=child_environment(dict(launch.env)),
                start_new_session=True,
                preexec_fn=_death_signal_setter(),
            )
        except OSError as exc:
            raise ModelError(f"cannot run {launch.argv[0]!r}: {exc.strerror or exc}") from exc
        self._process = process
        try:
            await asyncio.wait_for(self._wait_healthy(process), self._start_timeout_s)
        except TimeoutError:
            await self._terminate(process)
            raise ModelError(f"vLLM was not healthy within {self._start_timeout_s:.0f} s") from None
        except BaseException:
            await self._terminate(process)
            raise
        self._is_healthy = True
        log.info("vLLM ready: %s at %s (pid %d)", self.model_name, launch.base_url, process.pid)

    async def _wait_healthy(self, process: asyncio.subprocess.Process) -> None:
        # Polling /health is how vLLM readiness is observed: nothing to await across processes.
        while True:
            if process.returncode is not None:
                raise ModelError(f"vLLM exited with code {process.returncode} while starting")
            with contextlib.suppress(httpx.TransportError):
                if (await self._http.get(self.launch.health_url)).status_code == 200:
                    return
            await asyncio.sleep(_HEALTH_POLL_S)

    async def _terminate(self, process: asyncio.subprocess.Process) -> None:
        """SIGTERM to the process group, SIGKILL after `stop_timeout_s`; also reaps what is left of a
        group whose leader already died (vLLM's engine-core and worker processes)."""
        if process.returncode is None:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), self._stop_timeout_s)
            except TimeoutError:
                log.warning("vLLM did not stop within %.0f s: killing it", self._stop_timeout_s)
        _signal_group(process.pid, signal.SIGKILL)
        await process.wait()

    async def _wait_death(self) -> str:
        """Wait for the process to exit (or kill it when it hangs, `_watch`), and what is left of its
        process group; how it died. The restarts are engine/supervisor.py's."""
        process = self._process
        assert process is not None
        code = await self._watch(process)
        self._is_healthy = False
        await self._terminate(process)  # the rest of its process group
        return death_cause(code, during="serving", engine="vLLM")

    @property
    def num_restarts(self) -> int:
        return self._policy.num_deaths

    @property
    def failure(self) -> str | None:
        """Why vLLM is failed (it died repeatedly; engine/supervision.py), or None."""
        return None if self.is_ready else self._policy.failure

    async def _watch(self, process: asyncio.subprocess.Process) -> int:
        """Wait for `process` to exit. A process that fails `max_health_failures` health checks in a
        row (hung, or its engine core gone) is killed, which ends the wait."""
        num_failures = 0
        while True:
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(process.wait(), self._health_interval_s)
            if await self._answers_health():
                num_failures = 0
                continue
            num_failures += 1
            if num_failures >= self._max_health_failures:
                log.error("vLLM failed %d health checks in a row: killing it", num_failures)
                _signal_group(process.pid, signal.SIGKILL)

    async def _answers_health(self) -> bool:
        try:
            response = await self._http.get(self.launch.health_url, timeout=self._health_interval_s)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def stats(self) -> dict[str, Any] | None:
        return None

    # ----- requests -----

    async def warm(self, request: ChatRequest) -> None:
        """A no-op: vLLM's prefix cache fills from the requests it serves."""

    def _check_ready(self) -> None:
        if not self.is_ready:
            raise BackendUnavailable("the local vLLM engine is not running (starting or restarting)")

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        self._check_ready()
        sampling, added = with_model_stop(request.sampling, self._model_stop)
        forwarded = dataclasses.replace(
            request,
            model=self.model_name,
            messages=prompt_input(request, native=False).messages,
            sampling=sampling,
            tools=(),
        )
        reader = AnswerReader(Turn("", sampling, bool(offered_tools(request)), model_stop=added))
        call = ClientCall(ApiFormat.OPENAI_CHAT, b"", self._auth, forwarded)
        try:
            async for event in self._client.events(call, forwarded):
                if isinstance(event, TextDelta):
                    for out in reader.text(event.text):
                        yield out
                elif isinstance(event, Finish):
                    for out in reader.finish(event):
                        yield out
        except UpstreamError as exc:
            raise self._translate(exc) from None

    def more_choices(self, request: ChatRequest) -> list[AsyncIterator[StreamEvent]]:
        """Choices 1..n-1 as requests of their own: vLLM batches them itself, and its prefix cache
        serves their common prompt (a request with `n` would give one stream of interleaved choices)."""
        return [self.stream(request) for _ in range(request.num_choices - 1)]

    async def count_tokens(self, request: ChatRequest) -> int:
        """The prompt's size in the model's tokens, from vLLM's /tokenize."""
        self._check_ready()
        messages = prompt_input(request, native=False).messages
        body = {
            "model": self.model_name,
            "messages": [{"role": str(m.role), "content": m.content} for m in messages],
            "add_generation_prompt": True,
        }
        try:
            response = await self._http.post("/tokenize", json=body)
            count = int(response.raise_for_status().json()["count"])
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            failure = type(exc).__name__
            raise BackendUnavailable(f"the local vLLM engine could not count tokens ({failure})") from exc
        return count

    def _translate(self, exc: UpstreamError) -> HotspareError:
        """vLLM's failures as the local engine reports its own (what the API layer maps to statuses)."""
        if exc.is_client_fault:
            return InvalidRequest(f"the local vLLM engine refused the request: {_error_text(exc.body)}")
        if exc.failure in (FailureClass.RATE_LIMITED, FailureClass.OVERLOADED):
            return Overloaded("the local vLLM engine is overloaded", exc.retry_after_s or 1.0)
        if not self.is_ready:
            return BackendUnavailable("the local vLLM engine died; it is being restarted")
        return BackendUnavailable(f"the local vLLM engine failed ({exc.failure}: {exc.message})")


def vllm_backend(entry: ModelEntry, context_tokens: int = 0) -> VllmBackend:
    """A backend serving `entry` (backend "vllm") from its verified files (this hashes them) on a free
    port of 127.0.0.1; `context_tokens` 0 = the entry's context. Raises ModelError."""
    model_dir = resolve_weights(entry).parent
    options = VllmOptions(port=_free_port(), max_model_len_tokens=context_tokens)
    launch = vllm_launch(entry, model_dir, options, api_key=secrets.token_urlsafe(32))
    return VllmBackend(launch, context_tokens=context_tokens or entry.context_tokens, stop=entry.stop)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _death_signal_setter() -> Callable[[], None] | None:
    """A preexec_fn that has the kernel send the child SIGTERM when the thread that starts it dies
    (asyncio starts it from the event loop's, which lives as long as hotspare), however it dies: the
    child's process group is then nobody's to stop. SIGTERM rather than SIGKILL: vLLM then shuts down
    its engine-core and worker processes itself, which a SIGKILLed vLLM cannot. None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the forked child only calls it
    parent_pid = os.getpid()

    def set_death_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGTERM))
        if os.getppid() != parent_pid:  # hotspare died before the line above took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return set_death_signal


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _error_text(body: bytes) -> str:
    """The message of an OpenAI-shaped error body (vLLM's own words, no secrets), else a stub."""
    try:
        payload = json.loads(body)
    except ValueError:
        return "(no message)"
    error = payload.get("error") if isinstance(payload, Mapping) else None
    message = error.get("message") if isinstance(error, Mapping) else None
    if message is None and isinstance(payload, Mapping):
        message = payload.get("message")  # older vLLM: {"object": "error", "message": ...}
    return str(message) if message else "(no message)"
