"""The failover chain against misbehaving fake providers (issue 16): who hedges a slow upstream, who may
take over a broken answer and how, what a complete answer is, the retry's backoff, and what each
finish reason becomes. Two providers of one kind are two fakes on two ports."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from hotspare.core.errors import HotspareError, UpstreamError
from hotspare.core.types import ApiFormat, Finish, FinishReason, StreamEvent
from hotspare.router.member import build_upstream
from hotspare.router.replies import EventReply, RawReply, Reply
from hotspare.router.router import Router
from hotspare.upstream.base import ClientCall
from tests.fakes.upstreams import Behavior, FakeUpstream

from .factories import FakeLocal, make_call, router_config, upstream_config
from .test_router import anthropic_text, sse_payloads

ANTHROPIC = ApiFormat.ANTHROPIC_MESSAGES
OPENAI = ApiFormat.OPENAI_CHAT
UPSTREAM_TEXT = "Hello from the fake upstream."
QUICK_BREAKER = {
    "consecutive_failures": 2,
    "open_s": 0.01,
    "probe_interval_s": 0.01,
    "close_after_successes": 1,
}


@pytest.fixture(scope="module")
def openai_second_server() -> Iterator[FakeUpstream]:
    with FakeUpstream("openai") as fake:
        yield fake


@pytest.fixture(scope="module")
def anthropic_second_server() -> Iterator[FakeUpstream]:
    with FakeUpstream("anthropic") as fake:
        yield fake


def _reset(fake: FakeUpstream) -> FakeUpstream:
    fake.clear()
    fake.default = Behavior()
    fake.probe_status = 200
    return fake


@pytest.fixture
def openai_second(openai_second_server: FakeUpstream) -> FakeUpstream:
    return _reset(openai_second_server)


@pytest.fixture
def anthropic_second(anthropic_second_server: FakeUpstream) -> FakeUpstream:
    return _reset(anthropic_second_server)


def chain_router(
    chain: list[tuple[str, FakeUpstream, dict[str, Any]]], local: FakeLocal | None, *, hedge: bool = False
) -> Router:
    """Upstreams in order, each (name, fake, config overrides), then `local` (None: upstream-only)."""
    configs = [
        upstream_config(fake, name, **{"breaker": QUICK_BREAKER, **overrides})
        for name, fake, overrides in chain
    ]
    config = router_config(
        {
            "mode": "auto" if local else "upstream-only",
            "upstreams": [c.model_dump() for c in configs],
            "local": {"hedge": hedge},
        }
    )
    return Router(config, [build_upstream(c) for c in config.upstreams], local)


async def _collect(reply: Reply) -> bytes | list[StreamEvent]:
    if isinstance(reply, RawReply):
        return b"".join([chunk async for chunk in reply.body])
    return [event async for event in reply.events]


def route(router: Router, call: ClientCall) -> tuple[Reply, bytes | list[StreamEvent], float]:
    async def go() -> tuple[Reply, bytes | list[StreamEvent], float]:
        started = time.monotonic()
        try:
            reply = await router.route(call)
            return reply, await _collect(reply), time.monotonic() - started
        finally:
            await router.aclose()

    return asyncio.run(go())


def openai_text(raw: bytes) -> str:
    return "".join(
        c["delta"].get("content") or ""
        for p in sse_payloads(raw)
        if isinstance(p, dict) and "choices" in p
        for c in p["choices"]
    )


def failures(router: Router, name: str) -> int:
    return int(router.snapshot()[name]["window_failures"])  # type: ignore[call-overload]


# --- 1. a hedge races the next backend of the chain ---------------------------------------------------


def test_a_slow_primary_is_hedged_by_the_next_upstream_not_the_local_model(
    openai_fake: FakeUpstream, openai_second: FakeUpstream
) -> None:
    openai_fake.script(Behavior(first_delay_s=5))
    local = FakeLocal()
    router = chain_router(
        [("primary", openai_fake, {"hedge_delay_s": 0.2}), ("secondary", openai_second, {})],
        local,
        hedge=True,
    )
    reply, body, elapsed_s = route(router, make_call(OPENAI))
    assert reply.backend == "secondary" and local.started == 0
    assert isinstance(body, bytes) and openai_text(body) == UPSTREAM_TEXT
    assert elapsed_s < 2.0  # the hedge, not the primary's first-token limit (2 s)
    assert len(openai_fake.attempts()) == 1 and failures(router, "primary") == 0  # it lost; it did not fail


def test_upstream_only_mode_hedges_too(openai_fake: FakeUpstream, openai_second: FakeUpstream) -> None:
    openai_fake.script(Behavior(hang=True))
    router = chain_router(
        [("primary", openai_fake, {"hedge_delay_s": 0.2}), ("secondary", openai_second, {})], None, hedge=True
    )
    reply, body, elapsed_s = route(router, make_call(OPENAI))
    assert reply.backend == "secondary" and isinstance(body, bytes) and openai_text(body) == UPSTREAM_TEXT
    assert elapsed_s < 1.5


def test_the_primary_keeps_the_answer_when_it_is_first(
    openai_fake: FakeUpstream, openai_second: FakeUpstream
) -> None:
    openai_second.script(Behavior(first_delay_s=3))
    openai_fake.script(Behavior(first_delay_s=0.4))
    router = chain_router(
        [("primary", openai_fake, {"hedge_delay_s": 0.1}), ("secondary", openai_second, {})], None, hedge=True
    )
    reply, body, _ = route(router, make_call(OPENAI))
    assert reply.backend == "primary" and isinstance(body, bytes) and openai_text(body) == UPSTREAM_TEXT
    assert len(openai_second.attempts()) == 1  # it was started, then cancelled
    assert failures(router, "secondary") == 0


# --- 2. who may take over, and how ---------------------------------------------------------------------


def test_a_prefill_continuer_continues_the_answer(
    anthropic_fake: FakeUpstream, anthropic_second: FakeUpstream
) -> None:
    anthropic_fake.script(Behavior(cut_after=2))
    anthropic_second.script(Behavior(deltas=(" the", " rest.")))
    router = chain_router([("a", anthropic_fake, {}), ("b", anthropic_second, {})], None)
    _, body, _ = route(router, make_call(ANTHROPIC))
    assert isinstance(body, bytes) and anthropic_text(body) == "Hello from the rest."
    sent = anthropic_second.attempts()[-1].body
    assert sent is not None and sent["messages"][-1] == {"role": "assistant", "content": "Hello from"}
    assert [p["type"] for p in sse_payloads(body)][-1] == "message_stop"


def test_a_refused_prefill_moves_to_the_next_continuer(
    anthropic_fake: FakeUpstream, anthropic_second: FakeUpstream
) -> None:
    anthropic_fake.script(Behavior(cut_after=2))
    anthropic_second.default = Behavior(reject_prefill=True)
    local = FakeLocal(text="local rest")
    router = chain_router([("a", anthropic_fake, {}), ("b", anthropic_second, {})], local)
    reply, body, _ = route(router, make_call(ANTHROPIC))
    assert isinstance(body, bytes) and anthropic_text(body) == "Hello fromlocal rest"
    assert "prefill" not in body.decode()
    assert reply.takeovers == ["local"]
    assert failures(router, "b") == 0  # a refusal to continue is not an outage


def test_with_no_continuer_left_the_client_gets_the_generic_error_not_the_400(
    openai_fake: FakeUpstream, anthropic_second: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HS_TEST_OPERATOR_KEY", "sk-operator-key-1")
    openai_fake.script(Behavior(cut_after=2))
    anthropic_second.default = Behavior(reject_prefill=True)
    router = chain_router(
        [("o", openai_fake, {"api_key": "env:HS_TEST_OPERATOR_KEY"}), ("b", anthropic_second, {})], None
    )
    reply = None

    async def go() -> list[StreamEvent]:
        nonlocal reply
        try:
            reply = await router.route(make_call(ANTHROPIC))
            assert isinstance(reply, EventReply)
            return [e async for e in reply.events]
        finally:
            await router.aclose()

    with pytest.raises(HotspareError) as info:
        asyncio.run(go())
    error = info.value
    assert not (isinstance(error, UpstreamError) and error.is_client_fault)
    assert "prefill" not in error.message
    assert failures(router, "b") == 0


def test_an_openai_upstream_that_restarts_is_never_glued(
    openai_fake: FakeUpstream, openai_second: FakeUpstream
) -> None:
    """OpenAI-kind servers ignore a prefill and answer from the start: the restarted answer is
    checked against what was sent and only its rest is streamed."""
    openai_fake.script(Behavior(cut_after=2))
    router = chain_router([("a", openai_fake, {}), ("b", openai_second, {})], None)
    reply, body, _ = route(router, make_call(OPENAI))
    assert isinstance(body, bytes) and openai_text(body) == UPSTREAM_TEXT
    assert reply.takeovers == ["b"]
    sent = openai_second.attempts()[-1].body
    assert sent is not None and sent["messages"][-1]["role"] == "user"  # never sent a prefill


def test_a_restart_that_diverges_is_not_used(openai_fake: FakeUpstream, openai_second: FakeUpstream) -> None:
    openai_fake.script(Behavior(cut_after=2))
    openai_second.script(Behavior(deltas=("Goodbye", " now.")))
    local = FakeLocal(text="local rest")
    router = chain_router([("a", openai_fake, {}), ("b", openai_second, {})], local)
    reply, body, _ = route(router, make_call(OPENAI))
    assert isinstance(body, bytes) and openai_text(body) == "Hello fromlocal rest"
    assert reply.takeovers == ["local"]


def test_a_restart_that_diverges_with_nothing_after_it_ends_in_an_error_event(
    openai_fake: FakeUpstream, openai_second: FakeUpstream
) -> None:
    openai_fake.script(Behavior(cut_after=2))
    openai_second.script(Behavior(deltas=("Goodbye", " now.")))
    router = chain_router([("a", openai_fake, {}), ("b", openai_second, {})], None)
    _, body, _ = route(router, make_call(OPENAI))
    assert isinstance(body, bytes) and openai_text(body) == "Hello from"
    payloads = sse_payloads(body)
    assert "error" in payloads[-1] and "[DONE]" not in payloads  # never reported complete


def test_continuation_none_never_takes_over(openai_fake: FakeUpstream, openai_second: FakeUpstream) -> None:
    openai_fake.script(Behavior(cut_after=2))
    router = chain_router([("a", openai_fake, {}), ("b", openai_second, {"continuation": "none"})], None)
    _, body, _ = route(router, make_call(OPENAI))
    assert isinstance(body, bytes) and "error" in sse_payloads(body)[-1]
    assert openai_second.attempts() == []


# --- 3. continuations to an upstream are bounded --------------------------------------------------------


def test_an_upstream_continuation_carries_a_bounded_max_tokens(
    anthropic_fake: FakeUpstream, anthropic_second: FakeUpstream
) -> None:
    anthropic_fake.script(Behavior(cut_after=2))
    router = chain_router(
        [("a", anthropic_fake, {}), ("b", anthropic_second, {"max_continuation_tokens": 100})], None
    )
    route(router, make_call(ANTHROPIC, max_tokens=64000))
    sent = anthropic_second.attempts()[-1].body
    assert sent is not None and sent["max_tokens"] == 100


def test_a_restart_has_room_for_the_sent_text_and_the_bounded_rest(
    openai_fake: FakeUpstream, openai_second: FakeUpstream
) -> None:
    openai_fake.script(Behavior(cut_after=2))
    router = chain_router(
        [("a", openai_fake, {}), ("b", openai_second, {"max_continuation_tokens": 100})], None
    )
    route(router, make_call(OPENAI, max_tokens=64000))
    sent = openai_second.attempts()[-1].body
    assert sent is not None and sent["max_tokens"] == 2 + 100


# --- 4. an answer without its terminator but with its finish is a success --------------------------------


@pytest.mark.parametrize("api", [OPENAI, ANTHROPIC])
def test_an_answer_without_its_terminator_is_complete_and_a_success(
    api: ApiFormat, openai_fake: FakeUpstream, anthropic_fake: FakeUpstream
) -> None:
    fake = openai_fake if api is OPENAI else anthropic_fake
    fake.default = Behavior(omit_done=True)
    local = FakeLocal()
    router = chain_router([("u", fake, {})], local)

    async def go() -> list[bytes]:
        bodies = []
        try:
            for _ in range(3):  # the breaker opens after 2 failures
                reply = await router.route(make_call(api))
                assert reply.backend == "u"
                body = await _collect(reply)
                assert isinstance(body, bytes)
                bodies.append(body)
        finally:
            await router.aclose()
        return bodies

    bodies = asyncio.run(go())
    assert local.started == 0 and failures(router, "u") == 0
    assert router.snapshot()["u"]["state"] == "closed"
    last = sse_payloads(bodies[-1])
    if api is OPENAI:
        assert openai_text(bodies[-1]) == UPSTREAM_TEXT and last[-1] == "[DONE]"
    else:
        assert anthropic_text(bodies[-1]) == UPSTREAM_TEXT and last[-1]["type"] == "message_stop"


def test_a_converted_answer_without_its_terminator_ends_with_its_finish(
    openai_fake: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HS_TEST_OPERATOR_KEY", "sk-operator-key-1")
    openai_fake.script(Behavior(omit_done=True))
    router = chain_router([("u", openai_fake, {"api_key": "env:HS_TEST_OPERATOR_KEY"})], FakeLocal())
    reply, events, _ = route(router, make_call(ANTHROPIC))
    assert reply.backend == "u" and isinstance(events, list)
    assert isinstance(events[-1], Finish) and events[-1].reason is FinishReason.END_TURN


# --- 5. the retry waits a little ---------------------------------------------------------------------------


def test_the_retry_after_a_5xx_is_not_immediate(openai_fake: FakeUpstream) -> None:
    openai_fake.script(Behavior(status=500))
    router = chain_router([("u", openai_fake, {})], None)
    reply, _, _ = route(router, make_call(OPENAI))
    first, second = openai_fake.attempts()
    assert reply.backend == "u" and second.at - first.at >= 0.04


# --- 7. finish reasons ---------------------------------------------------------------------------------


@pytest.mark.parametrize("reason", ["abort", "something_new"])
def test_an_unknown_finish_reason_is_a_failure_taken_over(reason: str, openai_fake: FakeUpstream) -> None:
    openai_fake.script(Behavior(finish_reason=reason))
    local = FakeLocal(text="local rest")
    router = chain_router([("u", openai_fake, {})], local)
    reply, body, _ = route(router, make_call(OPENAI))
    assert isinstance(body, bytes) and openai_text(body) == UPSTREAM_TEXT + "local rest"
    assert reason not in body.decode() and reply.takeovers == ["local"]
    assert failures(router, "u") == 1


def test_an_unknown_stop_reason_with_nothing_to_continue_is_not_reported_as_end_turn(
    anthropic_fake: FakeUpstream,
) -> None:
    anthropic_fake.script(Behavior(finish_reason="model_exploded"))
    router = chain_router([("u", anthropic_fake, {})], None)
    _, body, _ = route(router, make_call(ANTHROPIC))
    assert isinstance(body, bytes)
    kinds = [p["type"] for p in sse_payloads(body)]
    assert kinds[-1] == "error" and "message_stop" not in kinds and "end_turn" not in body.decode()


def test_a_refusal_is_an_answer_and_maps_to_content_filter(
    anthropic_fake: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HS_TEST_OPERATOR_KEY", "sk-operator-key-1")
    anthropic_fake.script(Behavior(finish_reason="refusal"))
    local = FakeLocal()
    router = chain_router([("u", anthropic_fake, {"api_key": "env:HS_TEST_OPERATOR_KEY"})], local)
    reply, events, _ = route(router, make_call(OPENAI))
    assert reply.backend == "u" and local.started == 0 and isinstance(events, list)
    assert isinstance(events[-1], Finish) and events[-1].reason is FinishReason.CONTENT_FILTER
    from hotspare.formats.openai_chat import FINISH_NAMES

    assert FINISH_NAMES[events[-1].reason] == "content_filter"


def test_content_filter_reaches_an_anthropic_client_as_refusal(
    openai_fake: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HS_TEST_OPERATOR_KEY", "sk-operator-key-1")
    openai_fake.script(Behavior(finish_reason="content_filter"))
    local = FakeLocal()
    router = chain_router([("u", openai_fake, {"api_key": "env:HS_TEST_OPERATOR_KEY"})], local)
    _, events, _ = route(router, make_call(ANTHROPIC))
    assert isinstance(events, list) and isinstance(events[-1], Finish) and local.started == 0
    from hotspare.formats.anthropic import STOP_NAMES

    assert STOP_NAMES[events[-1].reason] == "refusal"


@pytest.mark.parametrize(
    ("reason", "expected"),
    [("max_tokens", FinishReason.LENGTH), ("model_context_window_exceeded", FinishReason.LENGTH)],
)
def test_length_reasons_map_to_length(
    reason: str, expected: FinishReason, anthropic_fake: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HS_TEST_OPERATOR_KEY", "sk-operator-key-1")
    anthropic_fake.script(Behavior(finish_reason=reason))
    router = chain_router([("u", anthropic_fake, {"api_key": "env:HS_TEST_OPERATOR_KEY"})], None)
    _, events, _ = route(router, make_call(OPENAI))
    assert isinstance(events, list) and isinstance(events[-1], Finish) and events[-1].reason is expected


# --- 6. breakers per (upstream, model); the recovery probe asks for the model ----------------------------


def test_one_failing_model_opens_only_its_own_circuit(openai_fake: FakeUpstream) -> None:
    """One upstream serving two models (as failoverbench's shared secondary does, through renames):
    model "bad" failing opens the circuit of ("u", "bad") only; "good" keeps being served."""
    rename = {"client-bad": "bad", "client-good": "good"}
    router = chain_router([("u", openai_fake, {"models": ["client-*"], "rename": rename})], FakeLocal())
    assert sorted(router.snapshot()) == ["u/*", "u/bad", "u/good"]

    async def go() -> list[str]:
        backends = []
        try:
            openai_fake.script(Behavior(status=503), Behavior(status=503))  # the attempt and its retry
            for model in ["client-bad", "client-bad", "client-good"]:  # the 2nd skips the open circuit
                reply = await router.route(make_call(OPENAI, model=model))
                await _collect(reply)
                backends.append(reply.backend)
        finally:
            await router.aclose()
        return backends

    assert asyncio.run(go()) == ["local", "local", "u"]
    states = {name: state["state"] for name, state in router.snapshot().items()}
    assert states == {"u/bad": "open", "u/good": "closed", "u/*": "closed"}


def test_the_recovery_probe_is_a_one_token_request_for_the_failing_model(openai_fake: FakeUpstream) -> None:
    router = chain_router([("u", openai_fake, {"rename": {"m": "upstream-m"}})], None)

    async def go() -> tuple[bool, bool]:
        try:
            upstream = router.members[0].upstream
            await _collect(await router.route(make_call(OPENAI, model="m")))  # a key that works
            openai_fake.probe_status = 503
            sick = await upstream.probe("upstream-m")
            openai_fake.probe_status = 200
            return sick, await upstream.probe("upstream-m")
        finally:
            await router.aclose()

    assert asyncio.run(go()) == (False, True)
    probes = openai_fake.attempts(probes=True)
    assert [(p.method, p.path) for p in probes] == [("POST", "/v1/chat/completions")] * 2
    assert probes[-1].body == {
        "model": "upstream-m",
        "max_tokens": 1,
        "messages": [{"role": "user", "content": "hi"}],
    }


# --- issue 17 point 19: n > 1 passthrough streams ---------------------------------------------------------


def test_a_broken_stream_of_several_choices_is_not_taken_over(openai_fake: FakeUpstream) -> None:
    """A takeover could finish choice 0 only; the other choices would end silently cut, reported
    complete. So the client gets the error event instead."""
    openai_fake.script(Behavior(cut_after=2))
    local = FakeLocal()
    call = make_call(OPENAI)
    body = {**json.loads(call.body), "n": 2}
    call = ClientCall(call.api_format, json.dumps(body).encode(), call.headers, call.request)
    _, raw, _ = route(chain_router([("u", openai_fake, {})], local), call)
    assert isinstance(raw, bytes) and local.started == 0
    payloads = sse_payloads(raw)
    assert "error" in payloads[-1] and "[DONE]" not in payloads


def test_a_client_fault_during_a_hedge_goes_back_to_the_client(
    openai_fake: FakeUpstream, openai_second: FakeUpstream
) -> None:
    openai_fake.script(Behavior(status=400, error_message="bad temperature", headers_delay_s=0.4))
    openai_second.script(Behavior(first_delay_s=2))
    router = chain_router(
        [("primary", openai_fake, {"hedge_delay_s": 0.1}), ("secondary", openai_second, {})], None, hedge=True
    )
    reply, body, elapsed_s = route(router, make_call(OPENAI))
    assert isinstance(reply, RawReply) and reply.status == 400 and elapsed_s < 1.5
    assert isinstance(body, bytes) and json.loads(body)["error"]["message"] == "bad temperature"
