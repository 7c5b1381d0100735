"""The answer of one local request -- one choice, or the n choices of an OpenAI request with `n` > 1 --
as one request to the engine process.

The prompt is prepared (budget, fit, template, tools: `ChoiceEngine.prepare`) once and sent once: one
`Submit` whose `sibling_ids` name the further choices. The engine tokenizes it once and starts the
siblings from the first choice's cells (engine/scheduler.py), at most `max_running` of them at a time.
Before, each of n choices rendered the prompt (and counted its tokens when fitting), wrote it to the
pipe and had it tokenized: n times the work and the memory for one prompt.

Each choice is an iterator of its own (`choice(i)`), reading its own events; closing one cancels that
choice on the engine. Whoever takes the choices closes every one of them, started or not (an
unstarted one holds its place on the engine too).

Crashes (engine/supervision.py) are judged by the prompt, so by the group: its prompt is the suspect
when the engine dies with it in flight, and running *alone* means the group's choices and nothing
else (a suspect's n choices share one prompt; running them one by one would take n crashes to judge
it). A group that delivered nothing on any choice runs again once, alone; a group that crashes alone
is poison, refused by its prompt's hash from then on; a group that delivered anything fails, every
choice with the same error (the API cancels a failed choice's siblings anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Protocol

from hotspare.agents.turn import AnswerReader, Turn
from hotspare.core.errors import EngineDied
from hotspare.core.types import ChatRequest, Finish, StreamEvent, Usage
from hotspare.engine.gate import AdmissionGate, poison_error
from hotspare.engine.protocol import Delta, Done, Failed
from hotspare.engine.supervision import Suspects

log = logging.getLogger(__name__)


class ChoiceEngine(Protocol):
    """What a `ChoiceGroup` asks of the engine's API side (engine/local.py's `LocalEngine`)."""

    model_name: str

    @property
    def gate(self) -> AdmissionGate: ...

    @property
    def suspects(self) -> Suspects: ...

    async def prepare(self, request: ChatRequest) -> Turn: ...

    def submit_choices(self, turn: Turn, num_choices: int) -> list[tuple[int, asyncio.Queue[Any]]]:
        """Send `turn` once for `num_choices` choices: each choice's request id and event queue."""
        ...

    def end_request(self, request_id: int, *, cancel: bool) -> None:
        """Forget `request_id`'s queue; `cancel`: it has not ended on the engine, stop it there."""
        ...

    async def wait_up(self) -> None: ...


class ChoiceGroup:
    """The choices of one request, prepared, admitted and submitted once. Used on the event loop only.

    `choice(i)` for each i in range(num_choices), each taken once. Runs (a start, a retry) happen in a
    task of the group's own, which every choice awaits; the last choice closed cancels what is left.
    """

    def __init__(self, engine: ChoiceEngine, request: ChatRequest, num_choices: int) -> None:
        self.engine = engine
        self.request = request
        self.num_choices = num_choices
        self.is_claimed = False  # choices 1.. were handed out (`LocalEngine.more_choices`)
        self._turn: Turn | None = None
        self._digest = ""
        self._ids: list[int | None] = [None] * num_choices  # each choice's id in the current run
        self._queues: list[asyncio.Queue[Any]] = []
        self._is_closed = [False] * num_choices
        self._is_done = [False] * num_choices  # the engine ended the choice (its Done or Failed came)
        self._run: asyncio.Future[None] | None = None  # the task making the current run
        self._num_retries = 0
        self._is_alone = False
        self._has_delivered = False
        self._gate_hold: contextlib.AbstractAsyncContextManager[None] | None = None

    def choice(self, index: int) -> Choice:
        return Choice(self, index)

    # ----- one choice -----

    async def events(self, index: int) -> AsyncGenerator[StreamEvent, None]:
        """Choice `index`'s events (see ChatBackend.stream); closing it cancels the choice."""
        try:
            if self._run is None:
                self._run = asyncio.ensure_future(self._start())
            while True:
                run = self._run
                await asyncio.shield(run)
                assert self._turn is not None
                answer, queue = AnswerReader(self._turn), self._queues[index]
                async with contextlib.aclosing(self._read(index, answer, queue, run)) as outs:
                    async for out in outs:
                        yield out
                if self._is_done[index]:
                    return  # else the run died: read the retry's run (or raise its failure)
        finally:
            await self.close(index)

    async def _read(
        self, index: int, answer: AnswerReader, queue: asyncio.Queue[Any], run: asyncio.Future[None]
    ) -> AsyncGenerator[StreamEvent, None]:
        """One run's events of choice `index`; returns early when the run died and a retry began."""
        while True:
            event = await queue.get()
            if isinstance(event, Delta):
                self._has_delivered = True
                for out in answer.text(event.text):
                    yield out
            elif isinstance(event, Done):
                self._is_done[index] = self._has_delivered = True
                self._end(index, cancel=False)
                self.engine.suspects.on_success(self._digest)
                usage = Usage(event.num_prompt_tokens, event.num_output_tokens, event.num_cached_tokens)
                finish = Finish(event.reason, usage, self.engine.model_name, event.stop_sequence)
                for out in answer.finish(finish):
                    yield out
                return
            elif isinstance(event, Failed):
                error = event.error()
                if not isinstance(error, EngineDied):
                    self._is_done[index] = True
                    self._end(index, cancel=False)
                    raise error
                self._on_death(run, error)
                return

    def _end(self, index: int, *, cancel: bool) -> None:
        rid, self._ids[index] = self._ids[index], None
        if rid is not None:
            self.engine.end_request(rid, cancel=cancel)

    async def close(self, index: int) -> None:
        """Choice `index` is done with (idempotent); the last one closed ends the group."""
        if self._is_closed[index]:
            return
        self._is_closed[index] = True
        self._end(index, cancel=True)
        if index == 0 and not self.is_claimed:  # nobody will read the other choices
            self.is_claimed = True  # nor take them now: `more_choices` would start a group of its own
            for other in range(1, self.num_choices):
                await self.close(other)
        if all(self._is_closed):
            await self._finish()

    async def _finish(self) -> None:
        run = self._run
        if run is not None and not run.done():
            run.cancel()
        if run is not None:
            await asyncio.gather(run, return_exceptions=True)
        await self._leave_gate()

    # ----- runs -----

    async def _start(self) -> None:
        """Prepare the prompt, refuse it if poison, enter the gate (alone if it is a suspect), send it."""
        self._turn = await self.engine.prepare(self.request)
        self._digest = hashlib.sha256(self._turn.prompt.encode()).hexdigest()
        if (cause := self.engine.suspects.is_poison(self._digest)) is not None:
            raise poison_error(self._digest, cause)
        await self._enter_gate(alone=self.engine.suspects.is_suspect(self._digest))
        self._submit()

    def _on_death(self, run: asyncio.Future[None], error: EngineDied) -> None:
        """The engine died under `run`: the first choice to see it starts the group's retry (or its
        failure); the others find it started."""
        if self._run is run:
            self._run = asyncio.ensure_future(self._rerun(error))

    async def _rerun(self, error: EngineDied) -> None:
        for index in range(self.num_choices):
            self._end(index, cancel=False)  # the engine that knew them is gone
        await self._leave_gate()
        was_alone, attempt = self._is_alone, self._num_retries
        self._num_retries += 1
        self.engine.suspects.on_crash(self._digest, was_alone=was_alone, cause=error.cause)
        if was_alone:
            log.error("request with prompt sha256 %s crashed the engine alone: refused", self._digest[:16])
            raise poison_error(self._digest, error.cause)
        if self._has_delivered or attempt:
            raise error
        log.warning("retrying alone a request in flight when the engine died")
        await self._enter_gate(alone=self.engine.suspects.is_suspect(self._digest))
        await self.engine.wait_up()
        self._submit()

    def _submit(self) -> None:
        """Send the prompt once for every choice still open."""
        assert self._turn is not None
        wanted = [i for i in range(self.num_choices) if not self._is_closed[i] and not self._is_done[i]]
        opened = self.engine.submit_choices(self._turn, len(wanted)) if wanted else []
        self._queues = [asyncio.Queue() for _ in range(self.num_choices)]
        for index, (rid, queue) in zip(wanted, opened, strict=True):
            self._ids[index], self._queues[index] = rid, queue

    async def _enter_gate(self, *, alone: bool) -> None:
        hold = self.engine.gate.hold(alone=alone)
        await hold.__aenter__()
        self._gate_hold, self._is_alone = hold, alone  # no await between: a cancel cannot split them

    async def _leave_gate(self) -> None:
        hold, self._gate_hold = self._gate_hold, None
        if hold is not None:
            await hold.__aexit__(None, None, None)


class Choice:
    """One choice of a `ChoiceGroup` as an async iterator. Unlike a bare async generator, closing it
    before it started still tells the group (which holds the choice's place on the engine)."""

    def __init__(self, group: ChoiceGroup, index: int) -> None:
        self._group = group
        self._index = index
        self._events = group.events(index)

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        return self

    async def __anext__(self) -> StreamEvent:
        return await anext(self._events)

    async def aclose(self) -> None:
        await self._events.aclose()  # runs the generator's own close if it started
        await self._group.close(self._index)
