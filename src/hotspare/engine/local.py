"""The llama.cpp engine as a `LocalBackend`, in a child process the API process supervises.

The engine process can crash (a segfault in native code) or hang; neither may take the API down.
`LocalEngine` talks to it over a Pipe (engine/process.py: a writer and a reader thread, so no
command or event touches the pipe on the event loop); requests in flight when the process dies end
with `BackendUnavailable`, the engine is reported unavailable, and a new process is started (with
backoff, engine/supervisor.py). A process that has work but sends nothing for `hang_timeout_s`, or
that takes no command for as long, is killed and treated the same way.

Deaths that repeat are not restarted blindly (engine/supervision.py, the rule both local backends
share): three within a minute put the engine in state *failed* with the cause (`failure`), restarts
back off, and the router leaves the local model out of the chain meanwhile. Requests in flight at a
death are suspects: one that has delivered nothing yet is retried once, alone; one that crashes the
engine alone is poison, refused by its prompt's hash (PoisonRequest) from then on (engine/gate.py).

A request is prepared (rendered, budgeted, fitted) and sent once however many choices it asks for
(OpenAI `n`): `stream` runs it as a `ChoiceGroup` (engine/choices.py, where "alone" for n choices is
defined) and `more_choices` hands out choices 1..n-1 of that same group.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import weakref
from collections.abc import AsyncIterator
from typing import Any

from hotspare.agents.fit import ContextPolicy
from hotspare.agents.prompt import PromptInput, template_knows_tools
from hotspare.agents.turn import Renderer, Turn, prepare_turn
from hotspare.core.errors import (
    BackendUnavailable,
    EngineDied,
)
from hotspare.core.types import ChatRequest, Message, Role, StreamEvent
from hotspare.engine.attention import AttentionChoice
from hotspare.engine.backends.gbnf import GrammarBuilder
from hotspare.engine.chat_template import ChatTemplate
from hotspare.engine.choices import ChoiceGroup
from hotspare.engine.config import EngineConfig
from hotspare.engine.gate import AdmissionGate
from hotspare.engine.local_sampling import local_sampling
from hotspare.engine.process import EngineProcess, PendingRequests
from hotspare.engine.protocol import (
    Cancel,
    Failed,
    GetStats,
    Shutdown,
    Submit,
    Tokenize,
)
from hotspare.engine.supervision import CrashPolicy, Suspects, death_cause
from hotspare.engine.supervisor import Supervisor

log = logging.getLogger(__name__)

_NEXT_TURN = "\x00hotspare-next-turn\x00"
"""Stands for the next user message in a warm-up's rendering; the warmed prompt ends where it starts."""

RETRY_WAIT_S = 60.0
"""How long a suspect's retry waits for the engine to come back after the crash."""


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
        self.num_prompts_prepared = 0  # requests prepared (rendered, fitted), answers and warm-ups
        self.num_prompts_sent = 0  # prompts sent for answers: one per request, whatever its choices
        self._groups: weakref.WeakValueDictionary[int, ChoiceGroup] = weakref.WeakValueDictionary()
        self._load_timeout_s = load_timeout_s
        self._hang_timeout_s = hang_timeout_s
        self._proc: EngineProcess | None = None
        self._template: ChatTemplate | None = None
        self._pending = PendingRequests()
        self._last_cause = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self._crashed = asyncio.Event()
        self._up = asyncio.Event()  # set while an engine process is serving
        self._policy = CrashPolicy()
        self._restarts = Supervisor(self._policy, log, name="engine", process="engine process")
        self._suspects = Suspects()
        self._gate = AdmissionGate()

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
            delay = self._restarts.on_death(exc.cause)
            while delay is not None and self._policy.failure is None and not self._stopping:
                await asyncio.sleep(delay)
                delay = await self._restarts.restart(self._spawn)
        supervise = self._restarts.run(self._spawn, self._watch, delay, lambda: self._stopping)
        self._supervisor = asyncio.create_task(supervise, name="hotspare-engine-supervisor")

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
        self._pending.fail_all("BackendUnavailable", "the local engine was stopped")

    async def _spawn(self) -> None:
        proc = EngineProcess(self.config, self._load_timeout_s)
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
        self._up.set()
        assert self._loop is not None
        proc.start_reading(self._loop, self._pending.dispatch, self._on_exit)
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

    async def _watch(self) -> str:
        """Until the running engine dies (or hangs with work in flight, and is killed): how it died."""
        while True:
            try:
                await asyncio.wait_for(self._crashed.wait(), timeout=1.0)
                return self._last_cause
            except TimeoutError:
                proc = self._proc
                if proc and proc.is_hung(bool(self._pending), self._hang_timeout_s):
                    log.error(
                        "engine silent with work in flight, or taking no command, for %.0f s: killing it",
                        self._hang_timeout_s,
                    )
                    proc.hung_s = self._hang_timeout_s
                    await asyncio.to_thread(proc.kill)

    def _on_exit(self, proc: EngineProcess) -> None:
        if self._proc is proc:
            self._proc = None
            self._up.clear()
            cause = death_cause(proc.process.exitcode, during="serving", hung_s=proc.hung_s)
            self._last_cause = cause
            self._pending.fail_all("EngineDied", f"the local engine process died: {cause}", cause)
            if not self._stopping:
                self._crashed.set()

    # ----- requests -----

    def _submit(self, cmd_for: Any) -> tuple[int, asyncio.Queue[Any]]:
        proc = self._proc
        if proc is None:
            raise BackendUnavailable("the local model is not loaded (starting or restarting)")
        rid, queue = self._pending.open()
        try:
            proc.send(cmd_for(rid))
        except OSError:
            self._pending.close(rid)
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
        """`request` as the local model samples it (engine/local_sampling.py)."""
        config = self.config
        sampling = local_sampling(request.sampling, config.max_answer_tokens, config.default_min_p)
        return request if sampling is request.sampling else dataclasses.replace(request, sampling=sampling)

    async def prepare(self, request: ChatRequest) -> Turn:
        """`request` as the engine runs it: budgeted, fitted, rendered with its tools. The one path of
        both answers and warm-ups, so that a warm-up computes exactly the prefix a failover sends."""
        self.num_prompts_prepared += 1
        return await prepare_turn(
            self._budgeted(request),
            self._renderer(),
            self.context_tokens,
            self.context_policy,
            self.config.stop,
        )

    def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        """Choice 0 of `request`. With `request.num_choices` > 1 the prompt is prepared and sent for
        every choice at once (engine/choices.py); `more_choices(request)` hands out the others."""
        group = ChoiceGroup(self, request, max(1, request.num_choices))
        if group.num_choices > 1:
            self._groups[id(request)] = group
        return group.choice(0)

    def more_choices(self, request: ChatRequest) -> list[AsyncIterator[StreamEvent]]:
        """Choices 1..n-1 of `request` (n = `request.num_choices`): those of the group `stream(request)`
        started for this very request object, else a group of their own (one more prompt). The caller
        closes each of them, started or not."""
        group = self._groups.pop(id(request), None)
        if group is not None and group.request is request and not group.is_claimed:
            group.is_claimed = True
            return [group.choice(i) for i in range(1, group.num_choices)]
        rest = ChoiceGroup(self, request, request.num_choices - 1)
        return [rest.choice(i) for i in range(rest.num_choices)]

    # ----- what a ChoiceGroup asks (engine/choices.py) -----

    @property
    def gate(self) -> AdmissionGate:
        return self._gate

    @property
    def suspects(self) -> Suspects:
        return self._suspects

    def submit_choices(self, turn: Turn, num_choices: int) -> list[tuple[int, asyncio.Queue[Any]]]:
        """Send `turn` to the engine once, for `num_choices` choices (one `Submit`). Raises
        BackendUnavailable when the engine process is not there."""
        proc = self._proc
        if proc is None:
            raise BackendUnavailable("the local model is not loaded (starting or restarting)")
        opened = [self._pending.open() for _ in range(num_choices)]
        ids = tuple(rid for rid, _queue in opened)
        try:
            proc.send(Submit(ids[0], turn.prompt, turn.sampling, sibling_ids=ids[1:]))
        except OSError:
            for rid in ids:
                self._pending.close(rid)
            raise BackendUnavailable("the local engine process is not reachable") from None
        self.num_prompts_sent += 1
        return opened

    def end_request(self, request_id: int, *, cancel: bool) -> None:
        self._pending.close(request_id)
        if cancel and self._proc is not None:
            with contextlib.suppress(OSError):
                self._proc.send(Cancel(request_id))

    async def wait_up(self) -> None:
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
                self._proc.send(Submit(self._pending.new_id(), prompt, request.sampling, warmup=True))

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
            self._pending.close(rid)
        if isinstance(event, Failed):
            raise event.error()
        return event.value

    async def tokens(self, prompt: str) -> list[int]:
        """`prompt`'s token ids as the engine tokenizes it (for tests and measurements)."""
        return list(await self._call(lambda r: Tokenize(r, prompt, ids=True)))

    async def count_tokens(self, request: ChatRequest) -> int:
        prompt = self.render(request)
        return int(await self._call(lambda r: Tokenize(r, prompt)))

    async def stats(self) -> dict[str, Any]:
        """Engine counters (queue, running, KV use, prefix-cache hits; see EngineCore.stats), and this
        side's: `num_prompts_prepared`, `num_prompts_sent` (this process's life, not the engine's)."""
        stats = dict(await self._call(lambda r: GetStats(r)))
        return {
            **stats,
            "num_prompts_prepared": self.num_prompts_prepared,
            "num_prompts_sent": self.num_prompts_sent,
        }

    @property
    def pid(self) -> int | None:
        """The engine process id (for supervision tests)."""
        return self._proc.process.pid if self._proc is not None else None
