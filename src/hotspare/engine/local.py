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

Deaths that repeat are not restarted blindly (engine/supervision.py, the rule both local backends
share): three within a minute put the engine in state *failed* with the cause (`failure`), restarts
back off, and the router leaves the local model out of the chain meanwhile. Requests in flight at a
death are suspects: one that has delivered nothing yet is retried once, alone; one that crashes the
engine alone is poison, refused by its prompt's hash (PoisonRequest) from then on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
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
from hotspare.agents.turn import AnswerReader, Renderer, Turn, prepare_turn
from hotspare.core.environment import scrubbed_environ
from hotspare.core.errors import (
    BackendUnavailable,
    ContextOverflow,
    EngineDied,
    HotspareError,
    InvalidRequest,
    ModelError,
    Overloaded,
    PoisonRequest,
)
from hotspare.core.types import ChatRequest, Finish, Message, Role, StreamEvent, Usage
from hotspare.engine.attention import AttentionChoice
from hotspare.engine.backends.gbnf import GrammarBuilder
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
from hotspare.engine.supervision import CrashPolicy, Suspects, death_cause
from hotspare.engine.worker import worker_main

log = logging.getLogger(__name__)

_ERRORS: dict[str, type[HotspareError]] = {
    "ContextOverflow": ContextOverflow,
    "Overloaded": Overloaded,
    "InvalidRequest": InvalidRequest,
    "BackendUnavailable": BackendUnavailable,
    "EngineDied": EngineDied,
}

_NEXT_TURN = "\x00hotspare-next-turn\x00"
"""Stands for the next user message in a warm-up's rendering; the warmed prompt ends where it starts."""

RETRY_WAIT_S = 60.0
"""How long a suspect's retry waits for the engine to come back after the crash."""


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
        self.hung_s: float | None = None  # set when the supervisor killed it for silence
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
            self.process.join(timeout=5)
            code = self.process.exitcode
            if code is None or code >= 0:  # a Python-level failure: no restart would fix it
                raise ModelError(f"the engine process exited while loading (code {code})") from None
            cause = death_cause(code, during="start-up (loading the model, warm-up)")
            raise EngineDied(f"the engine process died while starting: {cause}", cause) from None
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


def _poison(digest: str, cause: str) -> PoisonRequest:
    return PoisonRequest(
        "the local model refuses this request: it crashed the local engine twice, the second time "
        f"running alone ({cause}; prompt sha256 {digest[:16]}). It is refused so that one request "
        "cannot take the local model away from every other."
    )


class _Gate:
    """Admission to the engine: any number of requests together, or one suspect alone (after a crash,
    engine/supervision.py). A waiting suspect holds back new requests until it has run."""

    def __init__(self) -> None:
        self._cond = asyncio.Condition()
        self._num_shared = 0
        self._num_waiting_alone = 0
        self._is_alone = False

    @property
    def is_exclusive(self) -> bool:
        return self._is_alone or self._num_waiting_alone > 0

    @contextlib.asynccontextmanager
    async def hold(self, *, alone: bool) -> AsyncIterator[None]:
        async with self._cond:
            if alone:
                self._num_waiting_alone += 1
                try:
                    await self._cond.wait_for(lambda: not self._is_alone and self._num_shared == 0)
                finally:
                    self._num_waiting_alone -= 1
                self._is_alone = True
            else:
                await self._cond.wait_for(lambda: not self.is_exclusive)
                self._num_shared += 1
        try:
            yield
        finally:
            async with self._cond:
                if alone:
                    self._is_alone = False
                else:
                    self._num_shared -= 1
                self._cond.notify_all()


class LocalEngine:
    """See the module docstring. Implements `LocalBackend` (engine/protocol.py); `name` is "local"."""

    name = "local"
    can_warm = True

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
        self.attention: AttentionChoice | None = None
        self.num_warmups_skipped = 0  # warm-ups not sent: the engine had a backlog
        self._load_timeout_s = load_timeout_s
        self._hang_timeout_s = hang_timeout_s
        self._proc: _EngineProcess | None = None
        self._template: ChatTemplate | None = None
        self._pending: dict[int, asyncio.Queue[Any]] = {}
        self._ids = itertools.count(1)
        self._last_cause = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self._crashed = asyncio.Event()
        self._up = asyncio.Event()  # set while an engine process is serving
        self._policy = CrashPolicy()
        self._suspects = Suspects()
        self._gate = _Gate()

    # ----- lifecycle -----

    @property
    def is_ready(self) -> bool:
        return self._proc is not None

    @property
    def failure(self) -> str | None:
        """Why the engine is failed (repeated deaths, engine/supervision.py), or None."""
        return self._policy.failure if self._proc is None else None

    @property
    def num_restarts(self) -> int:
        return self._policy.num_deaths

    @property
    def num_poison_requests(self) -> int:
        return self._suspects.num_poison

    async def start(self) -> None:
        """Start the engine process; return when the model is loaded and warm, or when its start-up
        has crashed often enough to count as failed (see `failure`; restarts go on, backed off).
        Raises ModelError when the model cannot be loaded at all (not a crash)."""
        self._loop = asyncio.get_running_loop()
        delay: float | None = None
        try:
            await self._spawn()
        except EngineDied as exc:
            delay = self._on_death(exc.cause)
            while delay is not None and self._policy.failure is None and not self._stopping:
                await asyncio.sleep(delay)
                delay = await self._restart()
        self._supervisor = asyncio.create_task(self._supervise(delay), name="hotspare-engine-supervisor")

    async def stop(self) -> None:
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        proc, self._proc = self._proc, None
        self._up.clear()
        if proc is not None:
            with contextlib.suppress(OSError):
                proc.send(Shutdown())
            await asyncio.to_thread(proc.process.join, 5)
            proc.kill()
        self._fail_pending("BackendUnavailable", "the local engine was stopped")

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
        self.attention = ready.attention
        info = ready.info
        self._template = ChatTemplate(
            self.config.chat_template or info.chat_template,
            bos_token=info.bos_token,
            eos_token=info.eos_token,
        )
        self._crashed.clear()
        self._proc = proc
        self._policy.on_started()
        self._up.set()
        threading.Thread(target=self._read, args=(proc,), name="hotspare-engine-reader", daemon=True).start()
        log.info(
            "engine ready: %s (%s), context %d tokens, loaded in %.2f s, %d cached prefix tokens restored; "
            "%s",
            self.model_name,
            "; ".join(filter(None, (info.description, ready.weights_note))),
            self.context_tokens,
            self.load_s,
            self.num_restored_tokens,
            ready.attention.describe() if ready.attention else "flash attention on",
        )

    def _on_death(self, cause: str) -> float:
        """Record a death; return the seconds to wait before the next restart."""
        return self._policy.record(cause, log, name="engine", process="engine process")

    async def _restart(self) -> float | None:
        """One restart attempt: None when the engine is up, else the wait before the next one."""
        try:
            await self._spawn()
            return None
        except EngineDied as exc:
            return self._on_death(exc.cause)
        except ModelError as exc:
            return self._on_death(f"could not restart: {exc.message}")

    async def _supervise(self, delay: float | None) -> None:
        """Watch the running engine; restart it after a death, backed off by the crash policy.
        `delay` is set when the engine is down now (the wait before the next restart)."""
        while not self._stopping:
            if delay is None:
                delay = await self._watch()
            await asyncio.sleep(delay)
            if not self._stopping:
                delay = await self._restart()

    async def _watch(self) -> float:
        """Until the running engine dies (or hangs with work in flight, and is killed): the wait
        before restarting it."""
        while True:
            try:
                await asyncio.wait_for(self._crashed.wait(), timeout=1.0)
                return self._on_death(self._last_cause)
            except TimeoutError:
                proc = self._proc
                if proc and proc.is_hung(bool(self._pending), self._hang_timeout_s):
                    log.error(
                        "engine silent with work in flight, or taking no command, for %.0f s: killing it",
                        self._hang_timeout_s,
                    )
                    proc.hung_s = self._hang_timeout_s
                    await asyncio.to_thread(proc.kill)

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
            self._up.clear()
            cause = death_cause(proc.process.exitcode, during="serving", hung_s=proc.hung_s)
            self._last_cause = cause
            self._fail_pending("EngineDied", f"the local engine process died: {cause}", cause)
            if not self._stopping:
                self._crashed.set()

    def _fail_pending(self, kind: str, *args: str) -> None:
        """End every request in flight with the core error `kind` (an _ERRORS key) made of `args`."""
        for rid, queue in list(self._pending.items()):
            queue.put_nowait(Failed(rid, kind, args))

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

        return Renderer(render, count, template_knows_tools(template.source), GrammarBuilder)

    def render(self, request: ChatRequest) -> str:
        return self._renderer().prompt(request)

    def _budgeted(self, request: ChatRequest) -> ChatRequest:
        """`request` with max_tokens at most the answer budget (`[local] max_answer_tokens`)."""
        budget = self.config.max_answer_tokens
        wanted = request.sampling.max_tokens
        if not budget or (wanted is not None and wanted <= budget):
            return request
        return dataclasses.replace(request, sampling=dataclasses.replace(request.sampling, max_tokens=budget))

    async def prepare(self, request: ChatRequest) -> Turn:
        """`request` as the engine runs it: budgeted, fitted, rendered with its tools. The one path of
        both answers and warm-ups, so that a warm-up computes exactly the prefix a failover sends."""
        return await prepare_turn(
            self._budgeted(request),
            self._renderer(),
            self.context_tokens,
            self.context_policy,
            self.config.stop,
        )

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        turn = await self.prepare(request)
        digest = hashlib.sha256(turn.prompt.encode()).hexdigest()
        if (cause := self._suspects.is_poison(digest)) is not None:
            raise _poison(digest, cause)
        for attempt in range(2):
            alone = self._suspects.is_suspect(digest)
            async with self._gate.hold(alone=alone):
                if attempt:
                    await self._wait_up()
                delivered = False
                try:
                    async for out in self._generate(turn):
                        delivered = True
                        yield out
                    self._suspects.on_success(digest)
                    return
                except EngineDied as exc:
                    self._suspects.on_crash(digest, was_alone=alone, cause=exc.cause)
                    if alone:
                        log.error(
                            "request with prompt sha256 %s crashed the engine alone: refused", digest[:16]
                        )
                        raise _poison(digest, exc.cause) from None
                    if delivered or attempt:
                        raise
                    log.warning("retrying alone a request in flight when the engine died")

    async def _generate(self, turn: Turn) -> AsyncIterator[StreamEvent]:
        """One run of a prepared turn on the engine process."""
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

    async def _wait_up(self) -> None:
        """Wait for the engine to serve again after a death; BackendUnavailable if it is failed or
        does not come back within RETRY_WAIT_S."""
        deadline = time.monotonic() + RETRY_WAIT_S
        while not self._up.is_set():
            if self._policy.failure is not None:
                raise BackendUnavailable(self._policy.failure)
            if time.monotonic() >= deadline:
                raise BackendUnavailable("the local engine did not come back after it died")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._up.wait(), timeout=1.0)

    async def warm(self, request: ChatRequest) -> None:
        """Compute, at low priority, the KV of the conversation in `request` as its next turn will
        see it (a trailing assistant message is the upstream's answer, closed as a finished turn), so
        that a later turn served locally starts from cache. The prompt is the next turn's, rendered by
        the same path as an answer (`prepare`: budget, fit, tools, template) with a placeholder for
        the next user message, and cut where that message's text would begin. Fire and forget; a
        no-op while the engine is not loaded, or while a suspect runs alone after a crash. Runs only
        when the engine is idle and yields to real requests; not even sent while the engine has a
        backlog (as many requests in flight as it runs at once: the next one would wait), since the
        warm-up would only wait behind it, then yield to the next. Raises what `prepare` raises."""
        if self._template is None or self._proc is None or self._gate.is_exclusive:
            return
        if len(self._pending) >= self.config.max_running:
            self.num_warmups_skipped += 1
            return
        prompt = await self.warm_prompt(request)
        if prompt and self._proc is not None:
            with contextlib.suppress(OSError):
                self._proc.send(Submit(next(self._ids), prompt, request.sampling, warmup=True))

    async def warm_prompt(self, request: ChatRequest) -> str:
        """The prompt text every next turn of `request`'s conversation starts with ("" if none)."""
        next_turn = dataclasses.replace(request, messages=(*request.messages, Message(Role.USER, _NEXT_TURN)))
        prompt = (await self.prepare(next_turn)).prompt
        cut = prompt.find(_NEXT_TURN)
        return prompt[:cut] if cut > 0 else ""

    async def _call(self, make: Any) -> Any:
        rid, queue = self._submit(make)
        try:
            event = await queue.get()
        finally:
            self._pending.pop(rid, None)
        if isinstance(event, Failed):
            raise _ERRORS[event.kind](*event.args)
        return event.value

    async def tokens(self, prompt: str) -> list[int]:
        """`prompt`'s token ids as the engine tokenizes it (for tests and measurements)."""
        return list(await self._call(lambda r: Tokenize(r, prompt, ids=True)))

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
