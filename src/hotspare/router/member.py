"""One upstream in a failover chain, with its health state: circuit breaker, time-to-first-token
history, hedge policy, and the early-warning shed credit.

Health is kept per (upstream, model) where an upstream serves several: an outage of one model
(failoverbench S15) must not open the circuit of the others, nor be hidden by their successes. The
router makes one Member per model named in the upstream's config (`UpstreamConfig.breaker_models`),
plus one shared by whatever its globs match; they share the Upstream (its HTTP pool). A member's
`name` is the upstream's name, with `/model` when the upstream has more than one member."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence

from hotspare.core.errors import FailureClass, HotspareError, UpstreamError
from hotspare.core.types import ChatRequest, StreamEvent
from hotspare.router.breaker import CircuitBreaker, Transition
from hotspare.router.hedge import HedgePolicy, TtftTracker
from hotspare.router.metrics import RouterMetrics
from hotspare.router.observe import RouterObserver
from hotspare.upstream.anthropic import AnthropicUpstream
from hotspare.upstream.base import ClientCall, Upstream
from hotspare.upstream.config import UpstreamConfig
from hotspare.upstream.openai import OpenAIUpstream


def build_upstream(config: UpstreamConfig) -> Upstream:
    return AnthropicUpstream(config) if config.kind == "anthropic" else OpenAIUpstream(config)


class Member:
    """One upstream in the chain with its health state. Used on the router's event loop only."""

    def __init__(
        self,
        upstream: Upstream,
        clock: Callable[[], float],
        on_transition: Callable[[Transition], None],
        metrics: RouterMetrics,
        model: str | None = None,
        name: str | None = None,
    ):
        self.upstream = upstream
        self.config: UpstreamConfig = upstream.config
        self.model = model  # the upstream model this member's breaker is for; None: the shared one
        self.name = name or upstream.name
        self.last_model: str | None = model  # what the recovery probe asks for (shared member: the last)
        self.breaker = CircuitBreaker(self.name, self.config.breaker, clock, on_transition)
        self.metrics = metrics
        metrics.add_upstream(upstream.name)
        self.ttft = TtftTracker()
        self.hedge = HedgePolicy(self.config.timeouts.first_token_s, self.config.hedge_delay_s)
        self.observers: list[RouterObserver] = []
        self.shed_credit = 0.0  # accumulates the advisor's shed share; each whole unit sheds a request

    def probe_model(self) -> str | None:
        return self.last_model

    def record(self, verdict: bool | None, failure: FailureClass | None = None) -> None:
        """One attempt's outcome: True ok, False failed (with its class), None cancelled."""
        outcome = "cancelled" if verdict is None else "ok" if verdict else "failed"
        self.metrics.attempt(self.upstream.name, outcome)
        for observer in self.observers:
            observer.on_attempt(self.upstream.name, outcome, failure if verdict is False else None)
        if verdict is None:
            self.breaker.record_cancelled()
        elif verdict:
            self.breaker.record_success()
        else:
            self.breaker.record_failure()

    def should_shed(self, share: float, has_next: bool) -> bool:
        """Early warning: send `share` (0..1) of this upstream's requests past it (only when someone
        is after it), spread evenly rather than at random."""
        if share <= 0 or not has_next:
            self.shed_credit = 0.0
            return False
        self.shed_credit += min(share, 1.0)
        if self.shed_credit < 1.0:
            return False
        self.shed_credit -= 1.0
        return True

    def opener(self, call: ClientCall) -> Callable[[ChatRequest], AsyncIterator[StreamEvent]]:
        """Starts this upstream on a takeover's continuation of `call` (skipped while its circuit is open)."""

        def open_(request: ChatRequest) -> AsyncIterator[StreamEvent]:
            if not self.breaker.try_acquire():
                skipped = UpstreamError(
                    FailureClass.CONNECT_ERROR, "circuit open", upstream=self.upstream.name
                )
                return _raise(skipped)
            return self.upstream.events(call, request)

        return open_


def members_of(
    upstream: Upstream,
    clock: Callable[[], float],
    on_transition: Callable[[Transition], None],
    metrics: RouterMetrics,
) -> list[Member]:
    """One member per model named in `upstream`'s config, then the shared one if its globs need it."""
    named, has_glob = upstream.config.breaker_models()
    keys: list[str | None] = [*named, *([None] if has_glob or not named else [])]
    if len(keys) == 1:
        return [Member(upstream, clock, on_transition, metrics, keys[0])]
    return [
        Member(upstream, clock, on_transition, metrics, key, f"{upstream.name}/{key or '*'}") for key in keys
    ]


def larger_context(failed: Member, rest: Sequence[Member]) -> list[Member]:
    """The members after `failed` with a larger context window than it has."""
    size = failed.config.max_context_tokens or 0
    return [m for m in rest if (m.config.max_context_tokens or 0) > size]


async def _raise(exc: HotspareError) -> AsyncIterator[StreamEvent]:
    raise exc
    yield  # pragma: no cover -- makes this an async generator
