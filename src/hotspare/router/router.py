"""The failover chain: the upstreams that serve a client's model, in order, then the local backend.

`Router.route(call)` returns once the first answer content is in hand (so every failure before the
first byte is still invisible to the client) as either

* `RawReply`: bytes already in the client's format -- a passthrough stream or body, an upstream's own
  client-fault error, or a passthrough stream whose tail was taken over by another backend; or
* `EventReply`: core `StreamEvent`s for the API layer to render (the local model, a cross-format
  upstream), with mid-stream takeover already applied. Its iterator raises a `HotspareError` only if
  the answer broke off and no backend could finish it; the API layer then sends its error event.

Per upstream and model: a circuit breaker (open -> zero attempts), one retry after a short jittered
backoff where classify() allows it, and hedging -- the next backend of the chain (the next upstream
whose circuit is not open, the local model only when it is next) starts beside an upstream with no
first content after the hedge delay, and whichever produces first is streamed while the other is
cancelled: the chain's order is the operator's order of preference, so a hedge never skips a backend.

The pieces: member.py (one upstream and its health), race.py (opening an upstream up to its first
content, hedged), relay.py and takeover.py (the answer after its first content, continued by the next
backend if it breaks), replies.py (what `route` returns).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from hotspare.core.errors import (
    BackendUnavailable,
    FailureClass,
    HotspareError,
    NotFound,
    UpstreamError,
)
from hotspare.core.types import (
    ApiFormat,
    ChatBackend,
    Message,
    Role,
)
from hotspare.engine.protocol import LocalBackend
from hotspare.router.breaker import MAX_KEPT_TRANSITIONS, Transition
from hotspare.router.classify import Action, classify
from hotspare.router.config import Mode, RouterConfig
from hotspare.router.hedge import HedgeGate
from hotspare.router.member import Member, build_upstream, larger_context, members_of
from hotspare.router.metrics import RouterMetrics
from hotspare.router.observe import Advisor, RouterObserver, Stage
from hotspare.router.probe import Guarded, Prober
from hotspare.router.race import LocalHedge, Opened, UpstreamHedge, open_upstream, prepend, race
from hotspare.router.relay import Relay, buffered_reply, continuers_after
from hotspare.router.replies import EventReply, RawReply, Reply, client_fault, single
from hotspare.router.warmup import WarmupFilter
from hotspare.upstream.base import ClientCall, Upstream

log = logging.getLogger("hotspare.router")


class Router:
    """Owns its upstreams' HTTP clients and the prober: `start()` then `aclose()` on one event loop."""

    def __init__(
        self,
        config: RouterConfig,
        upstreams: Sequence[Upstream],
        local: ChatBackend | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.mode = config.effective_mode
        self.local = local if self.mode is not Mode.UPSTREAM_ONLY else None
        self.transitions: deque[Transition] = deque(maxlen=MAX_KEPT_TRANSITIONS)  # the latest only
        self.metrics = RouterMetrics()
        self.hedge_gate = HedgeGate()
        # Early warning sheds part of a degraded upstream's traffic. When the next backend is the
        # local model, only a trickle: an upstream slowed by a saturated machine is still far faster
        # than a CPU model fed half its traffic (measured: p99 7.9 s at 64 concurrent requests).
        self.shed_gate = HedgeGate(max_in_flight=2)
        # Hedges onto the next upstream double a slow upstream's traffic; bounded so that an upstream
        # slow for everyone does not double the whole load on the next one.
        self.upstream_hedge_gate = HedgeGate(max_in_flight=32)
        self.upstreams = list(upstreams)
        self.members = [m for u in upstreams for m in members_of(u, clock, self._on_transition, self.metrics)]
        self.observers: list[RouterObserver] = []  # shared with every member
        self.advisor: Advisor | None = None
        for member in self.members:
            member.observers = self.observers
        self._prober = Prober([Guarded(m.upstream, m.breaker, m.probe_model) for m in self.members])
        self.warmups = WarmupFilter()
        self._background: set[asyncio.Future[None]] = set()

    def attach_local(self, local: ChatBackend) -> None:
        """Make `local` the last backend of every chain (once the local engine is warm)."""
        if self.mode is not Mode.UPSTREAM_ONLY:
            self.local = local

    @classmethod
    def from_config(cls, config: RouterConfig, local: ChatBackend | None) -> Router:
        return cls(config, [build_upstream(u) for u in config.upstreams], local)

    def _on_transition(self, transition: Transition) -> None:
        self.transitions.append(transition)
        self.metrics.on_transition(transition)
        for observer in self.observers:
            observer.on_transition(transition)

    async def start(self) -> None:
        self._prober.start()

    async def aclose(self) -> None:
        if self._background:  # warm-ups only hand a prompt to the engine: let them finish
            _, late = await asyncio.wait(set(self._background), timeout=1.0)
            for task in late:
                task.cancel()
        await self._prober.aclose()
        for upstream in self.upstreams:
            await upstream.aclose()

    def snapshot(self) -> dict[str, dict[str, object]]:
        """Per upstream (per upstream/model where it has several): circuit state and counters."""
        out: dict[str, dict[str, object]] = {}
        for m in self.members:
            s = m.breaker.snapshot()
            out[m.name] = {
                "state": str(s.state),
                "consecutive_failures": s.consecutive_failures,
                "window_attempts": s.window_attempts,
                "window_failures": s.window_failures,
                "transitions": s.num_transitions,
            }
        return out

    def chain(self, model: str, call: ClientCall | None = None) -> list[Member]:
        """The upstreams serving `model`, in order (with `call`: only those it may be sent to)."""
        if self.mode is Mode.LOCAL_ONLY:
            return []
        out: list[Member] = []
        for upstream in self.upstreams:
            if not upstream.config.serves(model) or (call is not None and not upstream.accepts(call)):
                continue
            members = [m for m in self.members if m.upstream is upstream]
            target = upstream.config.upstream_model(model)
            keyed = next((m for m in members if m.model == target), None)
            out.append(keyed or next((m for m in members if m.model is None), members[0]))
        return out

    def passthrough_upstreams(self, api: ApiFormat) -> list[Upstream]:
        """The upstreams that speak `api` themselves, in chain order (none in local-only mode): where a
        request about a response they made (`GET /v1/responses/{id}`, ...) can go."""
        if self.mode is Mode.LOCAL_ONLY:
            return []
        return [u for u in self.upstreams if u.passes_through(api)]

    async def route(self, call: ClientCall) -> Reply:
        """Raises `HotspareError`: NotFound if nothing serves the model; the last failure if every
        backend failed before the first byte; the local backend's own errors."""
        members = self.chain(call.request.model, call)
        if call.local_refusal is not None:  # only an upstream speaking the client's format can answer
            members = [m for m in members if m.upstream.passes_through(call.api_format)]
        if not members and self.local is None:
            raise NotFound(f"no upstream serves model {call.request.model!r}")
        last: HotspareError | None = None
        index = 0
        while index < len(members):
            member = members[index]
            index += 1
            can_go_local = self.local is not None and call.local_refusal is None
            to_local = index >= len(members)
            local_room = can_go_local and self.shed_gate.num_in_flight < self.shed_gate.max_in_flight
            if self._should_shed(member, has_next=not to_local or local_room):
                self._failover(member, "degraded", Stage.BEFORE_FIRST_BYTE)
                if to_local:
                    self.shed_gate.try_enter()
                    return await self._local_reply(call, gate=self.shed_gate)
                continue
            try:
                reply = await self._try_member(member, members[index:], call)
            except UpstreamError as exc:
                if exc.failure is FailureClass.CONTEXT_LENGTH:
                    larger = larger_context(member, members[index:])
                    if not larger:
                        return client_fault(member, call, exc)
                    members, index = larger, 0
                self._failover(member, str(exc.failure), Stage.BEFORE_FIRST_BYTE)
                last = exc
                continue
            if reply is not None:
                return reply
            self._failover(member, "circuit_open", Stage.BEFORE_FIRST_BYTE)
        if self.local is None:
            raise last or BackendUnavailable(f"every upstream for {call.request.model!r} is unavailable")
        if call.local_refusal is not None:
            why = f"upstreams for {call.request.model!r} unavailable ({last.message if last else 'none'})"
            raise BackendUnavailable(f"{why}, and the local model cannot answer: {call.local_refusal}")
        return await self._local_reply(call)

    def _should_shed(self, member: Member, has_next: bool) -> bool:
        share = self.advisor.shed_share(member.upstream.name) if self.advisor is not None else 0.0
        return member.should_shed(share, has_next)

    def _failover(self, member: Member, cause: str, stage: Stage) -> None:
        for observer in self.observers:
            observer.on_failover(member.upstream.name, cause, stage)

    async def _try_member(self, member: Member, rest: Sequence[Member], call: ClientCall) -> Reply | None:
        """One upstream with its retries: a reply, None if its circuit is open, or the UpstreamError."""
        deadline = time.monotonic() + member.config.timeouts.total_s
        num_retries = 0
        if member.model is None:  # the shared member's recovery probe asks for what it last served
            member.last_model = member.config.upstream_model(call.request.model)
        while True:
            if not member.breaker.try_acquire():
                log.info("skip %s: circuit %s", member.upstream.name, member.breaker.state)
                self.metrics.attempt(member.upstream.name, "skipped")
                return None
            try:
                return await self._attempt(member, rest, call)
            except UpstreamError as exc:
                decision = classify(
                    exc,
                    num_retries=num_retries,
                    budget_left_s=deadline - time.monotonic(),
                    max_retry_after_s=member.config.max_retry_after_s,
                    has_delivered=False,
                )
                member.record(False if decision.counts_as_failure else None, exc.failure)
                log.warning("%s failed (%s): %s", member.upstream.name, exc.failure, decision.action)
                if decision.action is Action.RETURN_TO_CLIENT:
                    return client_fault(member, call, exc)
                if decision.action is not Action.RETRY:
                    raise
                num_retries += 1
                await asyncio.sleep(decision.delay_s)  # honouring Retry-After, not waiting for an event
            except BaseException:
                member.record(None)
                raise

    async def _attempt(self, member: Member, rest: Sequence[Member], call: ClientCall) -> Reply:
        """One attempt; the breaker verdict is recorded when its answer ends (or by the caller)."""
        upstream = member.upstream
        passthrough = upstream.passes_through(call.api_format)
        sent = call
        if passthrough and not call.request.stream:
            streaming = upstream.as_streaming(call)
            if streaming is None:  # may hold tool calls: forwarded as is, guarded by total_s only
                raw = await upstream.complete(call)
                member.record(True)
                return RawReply(raw.status, raw.headers, single(raw.body), upstream.name)
            sent = streaming
        opening = open_upstream(upstream, sent, passthrough)
        target = self._hedge_target(rest, call)
        if target is None:
            return await self._serve(member, rest, call, await opening, passthrough)
        delay_s = member.hedge.delay_s(member.ttft.samples())
        if self.advisor is not None:  # a degraded upstream is hedged sooner
            delay_s *= self.advisor.hedge_scale(upstream.name)
        if isinstance(target, UpstreamHedge):
            return await self._race_upstream(member, rest, call, opening, delay_s, target)
        local_race = await race(opening, delay_s, target, self.hedge_gate)
        if local_race.hedged is not None:  # the local model answered first; the upstream is cancelled
            assert self.local is not None and target.events is not None
            error = local_race.upstream_error
            member.record(False if error is not None else None, error.failure if error else None)
            self.metrics.served(self.local.name, "hedge")
            events = prepend(local_race.hedged, target.events)
            return EventReply(self.local.name, events, self._local_model(call))
        assert local_race.opened is not None
        return await self._serve(member, rest, call, local_race.opened, passthrough)

    def _hedge_target(self, rest: Sequence[Member], call: ClientCall) -> UpstreamHedge | LocalHedge | None:
        """The next backend of the chain, to start beside a slow upstream: the next upstream whose
        circuit is not open, else the local model; None when hedging is off or nothing is next."""
        if not self.config.local.hedge:
            return None
        for m in rest:
            if m.breaker.is_open:
                continue
            passthrough = m.upstream.passes_through(call.api_format)
            sent = m.upstream.as_streaming(call) if passthrough and not call.request.stream else call
            return UpstreamHedge(m, sent, passthrough) if sent is not None else None
        if self.local is not None and call.local_refusal is None:
            return LocalHedge(self.local, call.request)
        return None

    async def _race_upstream(
        self,
        member: Member,
        rest: Sequence[Member],
        call: ClientCall,
        opening: Coroutine[Any, Any, Opened],
        delay_s: float,
        hedge: UpstreamHedge,
    ) -> Reply:
        result = await race(opening, delay_s, hedge, self.upstream_hedge_gate)
        if result.hedged is None:
            assert result.opened is not None
            return await self._serve(
                member, rest, call, result.opened, member.upstream.passes_through(call.api_format)
            )
        error = result.upstream_error  # the next upstream answered first; this one was cancelled
        member.record(False if error is not None else None, error.failure if error else None)
        nxt = hedge.member
        log.info("hedge: %s answered before %s", nxt.upstream.name, member.upstream.name)
        after = list(rest[list(rest).index(nxt) + 1 :])
        return await self._serve(nxt, after, call, result.hedged, hedge.passthrough)

    async def _serve(
        self, member: Member, rest: Sequence[Member], call: ClientCall, winner: Opened, passthrough: bool
    ) -> Reply:
        """The reply from `member`'s opened answer; `rest` are the backends after it (takeover)."""
        upstream = member.upstream
        if winner.ttft_s is not None:
            member.ttft.add(winner.ttft_s)
            for observer in self.observers:
                observer.on_first_token(upstream.name, winner.ttft_s)
        if winner.stream is not None and not call.request.stream:
            self.metrics.served(upstream.name, "passthrough")
            return await buffered_reply(member, winner.stream)
        self.metrics.served(upstream.name, "passthrough" if passthrough else "events")
        takeovers: list[str] = []
        continuers = continuers_after(rest, call, self.local, self.metrics)
        relay = Relay(member, call, continuers, takeovers, self._failover, self._warm_local)
        if winner.stream is not None:
            errors: list[str] = []
            body = relay.passthrough(winner, errors)
            return RawReply(
                winner.stream.status, winner.stream.headers, body, upstream.name, takeovers, errors
            )
        model = member.config.upstream_model(call.request.model)
        return EventReply(upstream.name, relay.events(winner), model, takeovers)

    def _local_model(self, call: ClientCall) -> str:
        return self.local.model_name if isinstance(self.local, LocalBackend) else call.request.model

    def _warm_local(self, call: ClientCall, answer: str) -> None:
        """Hand a conversation an upstream just answered to the local engine's warm-up, so that if the
        upstream fails on a later turn the local model already holds this conversation's KV. In the
        background: the client's answer does not wait for it (see warmup.py for what is skipped)."""
        local = self.local
        if not isinstance(local, LocalBackend) or not local.can_warm:
            return
        if not self.config.local.warm_conversations or call.local_refusal is not None:
            return
        if call.api_format is ApiFormat.OPENAI_RESPONSES:
            return  # the Responses route warms from its conversation store, previous turns included
        answered = (*call.request.messages, Message(Role.ASSISTANT, answer))
        if not self.warmups.admit(answered):
            return
        task = asyncio.ensure_future(local.warm(dataclasses.replace(call.request, messages=answered)))
        self._background.add(task)
        task.add_done_callback(self._warmed)

    def _warmed(self, task: asyncio.Future[None]) -> None:
        self._background.discard(task)
        error = None if task.cancelled() else task.exception()
        if isinstance(error, HotspareError):
            log.debug("warm-up not accepted: %s", error)
        elif error is not None:
            log.warning("warm-up failed", exc_info=error)

    async def _local_reply(self, call: ClientCall, gate: HedgeGate | None = None) -> EventReply:
        """The local model's answer; `gate` (entered by the caller) is left when the answer ends."""
        assert self.local is not None
        events = self.local.stream(call.request)
        try:
            first = await anext(events)
        except BaseException:
            await events.aclose()  # type: ignore[attr-defined]
            if gate is not None:
                gate.leave()
            raise
        self.metrics.served(self.local.name, "events")
        answer = prepend(first, events, gate.leave if gate is not None else None)
        return EventReply(self.local.name, answer, self._local_model(call))
