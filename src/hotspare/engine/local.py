"""The local model as a `ChatBackend`, with the engine in a child process the API process supervises.

The engine process can crash (a segfault in native code) or hang; neither may take the API down.
`LocalEngine` talks to it over a Pipe: a reader thread receives each step's events and hands them to
the asyncio loop; requests in flight when the process dies end with `BackendUnavailable`, the engine
is reported unavailable, and a new process is started (with backoff). A process that has work but sends
nothing for `hang_timeout_s`, or that takes no command for as long, is killed and treated the same way.

Commands never touch the pipe on the event loop: `send` queues them for a writer thread. The pipe's
buffer is about 208 KB, so a command bigger than its free space (a long prompt, a warm-up of a whole
conversation, a token count) blocked `Connection.send` until the engine read it; written from the
loop, that stalled every stream, passthrough included, and /health, and forever with a hung engine,
whose watchdog runs on the same loop. The engine drains its end on a thread of its own too
(engine/inbox.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import threading
import time
from collections.abc import AsyncIterator
from multiprocessing.process import BaseProcess
from queue import SimpleQueue
from typing import Any

from hotspare.agents.fit import ContextPolicy
from hotspare.agents.prompt import PromptInput, template_knows_tools
from hotspare.agents.turn import AnswerReader, Renderer, prepare_turn
from hotspare.core.environment import scrubbed_environ
from hotspare.core.errors import (
    BackendUnavailable,
    ContextOverflow,
    HotspareError,
    InvalidRequest,
    ModelError,
    Overloaded,
)
from hotspare.core.types import ChatRequest, Finish, StreamEvent, Usage
from hotspare.engine.chat_template import ChatTemplate
from hotspare.engine.config import EngineConfig
from hotspare.engine.protocol import (
    Cancel,
    Delta,
    Done,
    EngineCommand,
    Failed,
    GetStats,
    LoadFailed,
    Ready,
    Shutdown,
    Submit,
    Tokenize,
)
from hotspare.engine.worker import worker_main

log = logging.getLogger(__name__)

_ERRORS: dict[str, type[HotspareError]] = {
    "ContextOverflow": ContextOverflow,
    "Overloaded": Overloaded,
    "InvalidRequest": InvalidRequest,
    "BackendUnavailable": BackendUnavailable,
}


class _EngineProcess:
    """One engine child process and the thread that writes its commands (`LocalEngine` runs the
    thread that reads its events)."""

    def __init__(self, config: EngineConfig, load_timeout_s: float) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child_conn = ctx.Pipe()
        self.process: BaseProcess = ctx.Process(
            target=worker_main,
            args=(child_conn, config, logging.getLogger().getEffectiveLevel()),
            name="hotspare-engine",
            daemon=True,
        )
        with scrubbed_environ():  # the engine needs no key: it inherits none (core/environment.py)
            self.process.start()
        child_conn.close()
        self._load_timeout_s = load_timeout_s
        self.last_heard = time.monotonic()
        self.sending_since: float | None = None  # when the command being written began (None: idle)
        self._outbox: SimpleQueue[EngineCommand | None] = SimpleQueue()
        threading.Thread(target=self._write, name="hotspare-engine-writer", daemon=True).start()

    def wait_ready(self) -> Ready:
        """Block until the model is loaded and warm. Raises ModelError if it cannot be."""
        if not self.conn.poll(self._load_timeout_s):
            self.kill()
            raise ModelError(f"the engine did not load the model within {self._load_timeout_s:.0f} s")
        try:
            msg = self.conn.recv()
        except EOFError:
            raise ModelError(
                f"the engine process exited while loading (code {self.process.exitcode})"
            ) from None
        if isinstance(msg, LoadFailed):
            raise ModelError(f"the engine could not load the model: {msg.message}")
        assert isinstance(msg, Ready)
        return msg

    def send(self, cmd: EngineCommand) -> None:
        """Queue `cmd` for the writer thread, in order; never blocks."""
        self._outbox.put(cmd)

    def is_hung(self, has_work: bool, timeout_s: float) -> bool:
        """Silent for `timeout_s` with work in flight, or stuck that long taking a command."""
        now = time.monotonic()
        sending_since = self.sending_since
        is_silent = has_work and now - self.last_heard > timeout_s
        return is_silent or (sending_since is not None and now - sending_since > timeout_s)

    def _write(self) -> None:
        """Writer thread: send each queued command until `kill` (a None) or a broken pipe."""
        while (cmd := self._outbox.get()) is not None:
            self.sending_since = time.monotonic()
            try:
                self.conn.send(cmd)
            except (OSError, ValueError):  # the process is gone: the reader thread reports it
                return
            finally:
                self.sending_since = None

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        self._outbox.put(None)


class LocalEngine:
    """See the module docstring. Implements `ChatBackend`; `name` is "local"."""

    name = "local"

    def __init__(
        self,
        config: EngineConfig,
        *,
        load_timeout_s: float = 300.0,
        hang_timeout_s: float = 60.0,
        context_policy: ContextPolicy = ContextPolicy.REJECT,
    ) -> None:
        self.config = config
        self.context_policy = context_policy
        self.model_name = config.model_name
        self.context_tokens = 0
        self.load_s = 0.0
        self.num_restored_tokens = 0
        self.weights_note = ""
        self.num_restarts = 0
        self.num_warmups_skipped = 0  # warm-ups not sent: the engine had a backlog
        self._load_timeout_s = load_timeout_s
        self._hang_timeout_s = hang_timeout_s
        self._proc: _EngineProcess | None = None
        self._template: ChatTemplate | None = None
        self._pending: dict[int, asyncio.Queue[Any]] = {}
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self._crashed = asyncio.Event()

    # ----- lifecycle -----

    @property
    def is_ready(self) -> bool:
        return self._proc is not None

    async def start(self) -> None:
        """Start the engine process; return when the model is loaded and warm. Raises ModelError."""
        self._loop = asyncio.get_running_loop()
        await self._spawn()
        self._supervisor = asyncio.create_task(self._supervise(), name="hotspare-engine-supervisor")

    async def stop(self) -> None:
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(OSError):
                proc.send(Shutdown())
            await asyncio.to_thread(proc.process.join, 5)
            proc.kill()
        self._fail_pending("the local engine was stopped")

    async def _spawn(self) -> None:
        proc = _EngineProcess(self.config, self._load_timeout_s)
        try:
            ready = await asyncio.to_thread(proc.wait_ready)
        except BaseException:
            await asyncio.to_thread(proc.kill)  # also ends its writer thread
            raise
        self.context_tokens = ready.context_tokens
        self.load_s = ready.load_s
        self.num_restored_tokens = ready.num_restored_tokens
        self.weights_note = ready.weights_note
        info = ready.info
        self._template = ChatTemplate(
            self.config.chat_template or info.chat_template,
            bos_token=info.bos_token,
            eos_token=info.eos_token,
        )
        self._crashed.clear()
        self._proc = proc
        threading.Thread(target=self._read, args=(proc,), name="hotspare-engine-reader", daemon=True).start()
        log.info(
            "engine ready: %s (%s), context %d tokens, loaded in %.2f s, %d cached prefix tokens restored",
            self.model_name,
            "; ".join(filter(None, (info.description, ready.weights_note))),
            self.context_tokens,
            self.load_s,
            self.num_restored_tokens,
        )

    async def _supervise(self) -> None:
        """Restart the engine after a crash; kill it if it hangs with work in flight."""
        backoff_s = 0.5
        while not self._stopping:
            try:
                await asyncio.wait_for(self._crashed.wait(), timeout=1.0)
            except TimeoutError:
                proc = self._proc
                if proc and proc.is_hung(bool(self._pending), self._hang_timeout_s):
                    log.error(
                        "engine silent with work in flight, or taking no command, for %.0f s: killing it",
                        self._hang_timeout_s,
                    )
                    await asyncio.to_thread(proc.kill)
                continue
            self.num_restarts += 1
            log.error("engine process died; restarting (restart #%d)", self.num_restarts)
            while not self._stopping:
                try:
                    await self._spawn()
                    backoff_s = 0.5
                    break
                except ModelError as exc:
                    log.error("engine restart failed: %s", exc)
                    await asyncio.sleep(backoff_s)
                    backoff_s = min(backoff_s * 2, 30.0)

    def _read(self, proc: _EngineProcess) -> None:
        """Reader thread: forward each message to the loop until the process goes away."""
        assert self._loop is not None
        while True:
            try:
                msg = proc.conn.recv()
            except (EOFError, OSError):
                break
            proc.last_heard = time.monotonic()
            self._loop.call_soon_threadsafe(self._dispatch, msg)
        proc.kill()
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._on_exit, proc)

    def _dispatch(self, events: list[Any]) -> None:
        for event in events:
            queue = self._pending.get(event.request_id)
            if queue is not None:
                queue.put_nowait(event)

    def _on_exit(self, proc: _EngineProcess) -> None:
        if self._proc is proc:
            self._proc = None
            self._fail_pending("the local engine process died; it is being restarted")
            if not self._stopping:
                self._crashed.set()

    def _fail_pending(self, message: str) -> None:
        for rid, queue in list(self._pending.items()):
            queue.put_nowait(Failed(rid, "BackendUnavailable", (message,)))

    # ----- requests -----

    def _submit(self, cmd_for: Any) -> tuple[int, asyncio.Queue[Any]]:
        proc = self._proc
        if proc is None:
            raise BackendUnavailable("the local model is not loaded (starting or restarting)")
        rid = next(self._ids)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self._pending[rid] = queue
        try:
            proc.send(cmd_for(rid))
        except OSError:
            del self._pending[rid]
            raise BackendUnavailable("the local engine process is not reachable") from None
        return rid, queue

    def _renderer(self) -> Renderer:
        """Renders requests (with their tools) into prompt text; see hotspare.agents."""
        template = self._template
        if template is None:
            raise BackendUnavailable("the local model is not loaded (starting or restarting)")

        def render(prompt: PromptInput) -> str:
            return template.render(prompt.messages, prompt.tools)

        async def count(prompt: str) -> int:
            return int(await self._call(lambda r: Tokenize(r, prompt)))

        return Renderer(render, count, template_knows_tools(template.source))

    def render(self, request: ChatRequest) -> str:
        return self._renderer().prompt(request)

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        turn = await prepare_turn(
            request, self._renderer(), self.context_tokens, self.context_policy, self.config.stop
        )
        answer = AnswerReader(turn)
        rid, queue = self._submit(lambda r: Submit(r, turn.prompt, turn.sampling))
        done = False
        try:
            while True:
                event = await queue.get()
                if isinstance(event, Delta):
                    for out in answer.text(event.text):
                        yield out
                elif isinstance(event, Done):
                    done = True
                    usage = Usage(event.num_prompt_tokens, event.num_output_tokens, event.num_cached_tokens)
                    for out in answer.finish(
                        Finish(event.reason, usage, self.model_name, event.stop_sequence)
                    ):
                        yield out
                    return
                elif isinstance(event, Failed):
                    done = True
                    raise _ERRORS[event.kind](*event.args)
        finally:
            self._pending.pop(rid, None)
            if not done and self._proc is not None:
                with contextlib.suppress(OSError):
                    self._proc.send(Cancel(rid))

    async def warm(self, request: ChatRequest) -> None:
        """Compute, at low priority, the KV of the conversation in `request` as its next turn will
        see it (a trailing assistant message is the upstream's answer, closed as a finished turn), so
        that a later turn served locally starts from cache. Fire and forget; a no-op while the engine
        is not loaded. Runs only when the engine is idle and yields to real requests; not even sent
        while the engine has a backlog (as many requests in flight as it runs at once: the next one
        would wait), since the warm-up would only wait behind it, then yield to the next."""
        if self._template is None or self._proc is None:
            return
        if len(self._pending) >= self.config.max_running:
            self.num_warmups_skipped += 1
            return
        prompt = self._template.render_history(request.messages)
        if prompt:
            with contextlib.suppress(OSError):
                self._proc.send(Submit(next(self._ids), prompt, request.sampling, warmup=True))

    async def _call(self, make: Any) -> Any:
        rid, queue = self._submit(make)
        try:
            event = await queue.get()
        finally:
            self._pending.pop(rid, None)
        if isinstance(event, Failed):
            raise _ERRORS[event.kind](*event.args)
        return event.value

    async def count_tokens(self, request: ChatRequest) -> int:
        prompt = self.render(request)
        return int(await self._call(lambda r: Tokenize(r, prompt)))

    async def stats(self) -> dict[str, Any]:
        """Engine counters (queue, running, KV use, prefix-cache hits); see EngineCore.stats."""
        return dict(await self._call(lambda r: GetStats(r)))

    @property
    def pid(self) -> int | None:
        """The engine process id (for supervision tests)."""
        return self._proc.process.pid if self._proc is not None else None
