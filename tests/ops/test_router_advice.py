"""The router with the ops hooks, in process against a fake provider: observers hear attempts with
their failure class and failovers with cause and stage; a degraded upstream is shed and hedged sooner."""

from __future__ import annotations

import asyncio
from typing import Any

from hotspare.core.errors import FailureClass
from hotspare.core.types import ApiFormat
from hotspare.router.breaker import Transition
from hotspare.router.member import build_upstream
from hotspare.router.observe import Stage
from hotspare.router.replies import EventReply, RawReply, Reply
from hotspare.router.router import Router
from tests.fakes.upstreams import Behavior, FakeUpstream
from tests.router.factories import FakeLocal, make_call, router_config, upstream_config


class Recorder:
    def __init__(self) -> None:
        self.attempts: list[tuple[str, str, FailureClass | None]] = []
        self.failovers: list[tuple[str, str, Stage]] = []
        self.ttfts: list[str] = []

    def on_attempt(self, upstream: str, outcome: str, failure: FailureClass | None) -> None:
        self.attempts.append((upstream, outcome, failure))

    def on_first_token(self, upstream: str, ttft_s: float) -> None:
        self.ttfts.append(upstream)

    def on_failover(self, upstream: str, cause: str, stage: Stage) -> None:
        self.failovers.append((upstream, cause, stage))

    def on_transition(self, transition: Transition) -> None:
        pass


class Advice:
    def __init__(self, shed: float, scale: float = 1.0) -> None:
        self.shed, self.scale = shed, scale

    def shed_share(self, upstream: str) -> float:
        return self.shed

    def hedge_scale(self, upstream: str) -> float:
        return self.scale


def make_router(fake: FakeUpstream, local: FakeLocal, hedge: bool = False, **overrides: Any) -> Router:
    config = router_config(
        {
            "mode": "auto",
            "upstreams": [upstream_config(fake, **overrides).model_dump()],
            "local": {"hedge": hedge},
        }
    )
    return Router(config, [build_upstream(c) for c in config.upstreams], local)


async def route_all(router: Router, num: int) -> list[str]:
    backends = []
    try:
        for _ in range(num):
            reply: Reply = await router.route(make_call(ApiFormat.OPENAI_CHAT))
            if isinstance(reply, RawReply):
                _ = [chunk async for chunk in reply.body]
            else:
                assert isinstance(reply, EventReply)
                _ = [event async for event in reply.events]
            backends.append(reply.backend)
    finally:
        await router.aclose()
    return backends


def test_observers_hear_failure_classes_and_failovers(openai_fake: FakeUpstream) -> None:
    router = make_router(openai_fake, FakeLocal())
    recorder = Recorder()
    router.observers.append(recorder)
    openai_fake.script(Behavior(malformed_after=0), Behavior(cut_after=2))
    assert asyncio.run(route_all(router, 3)) == ["local", "openai", "openai"]
    assert recorder.attempts == [
        ("openai", "failed", FailureClass.MALFORMED),
        ("openai", "failed", FailureClass.STREAM_CUT),
        ("openai", "ok", None),
    ]
    assert recorder.failovers == [
        ("openai", "malformed", Stage.BEFORE_FIRST_BYTE),
        ("openai", "stream_cut", Stage.MID_STREAM),
    ]
    assert recorder.ttfts == ["openai", "openai"]


def test_a_degraded_upstream_sheds_its_share_evenly(openai_fake: FakeUpstream) -> None:
    router = make_router(openai_fake, FakeLocal())
    recorder = Recorder()
    router.observers.append(recorder)
    router.advisor = Advice(shed=0.5)
    assert asyncio.run(route_all(router, 4)) == ["openai", "local", "openai", "local"]
    assert len(openai_fake.attempts()) == 2
    assert recorder.failovers == [("openai", "degraded", Stage.BEFORE_FIRST_BYTE)] * 2


def test_only_a_trickle_is_shed_onto_the_local_model(openai_fake: FakeUpstream) -> None:
    """A degraded upstream whose only backend after it is the local model sheds at most two requests
    onto it at a time: the rest stay on the (slow, but far faster) upstream."""
    local = FakeLocal("one two three four")
    local.delta_delay_s = 0.3
    router = make_router(openai_fake, local)
    router.advisor = Advice(shed=1.0)

    async def six_at_once() -> list[str]:
        async def one() -> str:
            reply = await router.route(make_call(ApiFormat.OPENAI_CHAT))
            body = reply.body if isinstance(reply, RawReply) else reply.events  # type: ignore[union-attr]
            _ = [chunk async for chunk in body]
            return reply.backend

        try:
            return list(await asyncio.gather(*(one() for _ in range(6))))
        finally:
            await router.aclose()

    backends = asyncio.run(six_at_once())
    assert sorted(backends) == ["local"] * 2 + ["openai"] * 4, backends
    assert router.shed_gate.num_in_flight == 0  # left when the local answers ended
    assert asyncio.run(route_all(router, 2)) == ["local", "local"]  # room again: shed as advised


def test_no_shedding_without_a_backend_after_it(openai_fake: FakeUpstream) -> None:
    config = router_config(
        {"mode": "upstream-only", "upstreams": [upstream_config(openai_fake).model_dump()]}
    )
    router = Router(config, [build_upstream(c) for c in config.upstreams], None)
    router.advisor = Advice(shed=1.0)
    assert asyncio.run(route_all(router, 2)) == ["openai", "openai"]


def test_a_degraded_upstream_is_hedged_sooner(openai_fake: FakeUpstream) -> None:
    openai_fake.default = Behavior(first_delay_s=0.6)
    slow = make_router(openai_fake, FakeLocal(), hedge=True, hedge_delay_s=1.0)
    assert asyncio.run(route_all(slow, 1)) == ["openai"]  # 0.6 s beats the 1 s hedge
    sooner = make_router(openai_fake, FakeLocal(), hedge=True, hedge_delay_s=1.0)
    sooner.advisor = Advice(shed=0.0, scale=0.2)
    assert asyncio.run(route_all(sooner, 1)) == ["local"]  # hedged after 0.2 s, the local model wins
