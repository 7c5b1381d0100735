"""The router in-process: real fake upstreams over HTTP, a scripted local backend."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from hotspare.core.errors import FailureClass, UpstreamError
from hotspare.core.types import ApiFormat, Finish, Role, StreamEvent, TextDelta
from hotspare.router.breaker import CircuitState
from hotspare.router.member import build_upstream
from hotspare.router.replies import EventReply, RawReply, Reply
from hotspare.router.router import Router
from hotspare.upstream.base import ClientCall
from tests.fakes.upstreams import Behavior, FakeUpstream

from .factories import FakeLocal, FakeLocalBackend, make_call, router_config, upstream_config

T = TypeVar("T")
ANTHROPIC = ApiFormat.ANTHROPIC_MESSAGES
OPENAI = ApiFormat.OPENAI_CHAT


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def make_router(
    fakes: list[FakeUpstream], local: FakeLocal | None, hedge: bool = False, **overrides: Any
) -> Router:
    breaker = {
        "consecutive_failures": 2,
        "open_s": 0.01,
        "probe_interval_s": 0.01,
        "close_after_successes": 1,
        **overrides.pop("breaker", {}),
    }
    configs = [upstream_config(f, breaker=breaker, **overrides) for f in fakes]
    config = router_config(
        {
            "mode": "auto" if local else "upstream-only",
            "upstreams": [c.model_dump() for c in configs],
            "local": {"hedge": hedge},
        }
    )
    return Router(config, [build_upstream(c) for c in config.upstreams], local)


async def collect(reply: Reply) -> bytes | list[StreamEvent]:
    if isinstance(reply, RawReply):
        return b"".join([chunk async for chunk in reply.body])
    return [event async for event in reply.events]


async def route_once(router: Router, call: ClientCall) -> tuple[Reply, bytes | list[StreamEvent]]:
    try:
        reply = await router.route(call)
        return reply, await collect(reply)
    finally:
        await router.aclose()


def sse_payloads(raw: bytes) -> list[Any]:
    out = []
    for block in raw.decode().split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: "):
                data = line[6:]
                out.append(data if data == "[DONE]" else json.loads(data))
    return out


def anthropic_text(raw: bytes) -> str:
    return "".join(p["delta"]["text"] for p in sse_payloads(raw) if p["type"] == "content_block_delta")


def test_healthy_passthrough_is_unchanged(anthropic_fake: FakeUpstream) -> None:
    local = FakeLocal()
    reply, body = run(route_once(make_router([anthropic_fake], local), make_call(ANTHROPIC)))
    assert isinstance(reply, RawReply) and reply.backend == "anthropic" and reply.status == 200
    assert isinstance(body, bytes)
    assert anthropic_text(body) == "Hello from the fake upstream."
    assert [p["type"] for p in sse_payloads(body)][-1] == "message_stop"
    assert ("content-type", "text/event-stream; charset=utf-8") in reply.headers
    assert local.started == 0


def test_refused_connection_fails_over_to_local_before_the_first_byte(openai_fake: FakeUpstream) -> None:
    openai_fake.refuse()
    local = FakeLocal()
    reply, events = run(route_once(make_router([openai_fake], local), make_call(OPENAI)))
    assert isinstance(reply, EventReply) and reply.backend == "local"
    assert isinstance(events, list)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "local answer here"


def test_one_quick_retry_on_5xx(anthropic_fake: FakeUpstream) -> None:
    anthropic_fake.script(Behavior(status=500))
    reply, _ = run(route_once(make_router([anthropic_fake], FakeLocal()), make_call(ANTHROPIC)))
    assert reply.backend == "anthropic"
    assert len(anthropic_fake.attempts()) == 2


def test_client_fault_is_returned_unchanged_and_not_retried(openai_fake: FakeUpstream) -> None:
    openai_fake.script(Behavior(status=400, error_message="bad temperature"))
    local = FakeLocal()
    reply, body = run(route_once(make_router([openai_fake], local), make_call(OPENAI)))
    assert isinstance(reply, RawReply) and reply.status == 400
    assert isinstance(body, bytes)
    assert json.loads(body)["error"]["message"] == "bad temperature"
    assert len(openai_fake.attempts()) == 1 and local.started == 0


def test_mid_stream_cut_is_continued_by_local_in_the_same_stream(anthropic_fake: FakeUpstream) -> None:
    anthropic_fake.script(Behavior(cut_after=2))
    local = FakeLocal(text="continued by local")
    reply, body = run(route_once(make_router([anthropic_fake], local), make_call(ANTHROPIC)))
    assert isinstance(reply, RawReply) and isinstance(body, bytes)
    assert anthropic_text(body) == "Hello fromcontinued by local"
    payloads = sse_payloads(body)
    assert [p["type"] for p in payloads[-3:]] == ["content_block_stop", "message_delta", "message_stop"]
    assert payloads[-2]["usage"] == {"output_tokens": 2 + 3}
    assert payloads[-2]["delta"]["stop_reason"] == "end_turn"
    continuation = local.requests[0]
    assert continuation.messages[-1].role is Role.ASSISTANT
    assert continuation.messages[-1].content == "Hello from"
    assert continuation.sampling.max_tokens == 16 - 2


@pytest.mark.parametrize(
    "behavior", [Behavior(stall_after=3), Behavior(error_after=3), Behavior(omit_terminator=True)]
)
def test_openai_mid_stream_failures_end_with_usage_and_done(
    openai_fake: FakeUpstream, behavior: Behavior
) -> None:
    openai_fake.script(behavior)
    local = FakeLocal(text="rest")
    router = make_router([openai_fake], local, timeouts={"idle_s": 0.3})
    _, body = run(route_once(router, make_call(OPENAI)))
    assert isinstance(body, bytes)
    payloads = sse_payloads(body)
    assert not any("error" in p for p in payloads if isinstance(p, dict))
    text = "".join(
        c["delta"].get("content") or "" for p in payloads if isinstance(p, dict) for c in p["choices"]
    )
    num_sent = 6 if behavior.omit_terminator else 3
    assert text == "".join(["Hello", " from", " the", " fake", " upstream", "."][:num_sent]) + "rest"
    assert payloads[-1] == "[DONE]"
    assert payloads[-2]["usage"]["completion_tokens"] == num_sent + 1
    assert payloads[-3]["choices"][0]["finish_reason"] == "stop"


def test_when_nothing_can_continue_the_client_gets_an_error_event(anthropic_fake: FakeUpstream) -> None:
    anthropic_fake.script(Behavior(cut_after=2))
    local = FakeLocal()
    local.fail = UpstreamError(FailureClass.SERVER_ERROR, "down", upstream="x")
    _, body = run(route_once(make_router([anthropic_fake], local), make_call(ANTHROPIC)))
    assert isinstance(body, bytes)
    payloads = sse_payloads(body)
    assert payloads[-1]["type"] == "error"
    assert "message_stop" not in [p["type"] for p in payloads]


def test_breaker_opens_skips_with_zero_attempts_then_probes_and_fails_back(
    anthropic_fake: FakeUpstream,
) -> None:
    local = FakeLocal()

    async def go() -> None:
        router = make_router([anthropic_fake], local, breaker={"consecutive_failures": 2, "open_s": 0.01})
        try:
            anthropic_fake.refuse()
            first = await router.route(make_call(ANTHROPIC))  # attempt + quick retry: 2 failures
            await collect(first)
            assert router.members[0].breaker.state is CircuitState.OPEN
            anthropic_fake.accept()
            anthropic_fake.clear()
            second = await router.route(make_call(ANTHROPIC))
            assert second.backend == "local" and anthropic_fake.attempts() == []
            await collect(second)
            await router.start()  # the prober
            await asyncio.to_thread(anthropic_fake.wait_for, 1, probes=True)
            while router.members[0].breaker.state is CircuitState.OPEN:
                await asyncio.sleep(0.01)  # the prober runs on its own schedule
            third = await router.route(make_call(ANTHROPIC))
            assert third.backend == "anthropic"
            await collect(third)
            assert router.members[0].breaker.state is CircuitState.CLOSED
            assert [t.new for t in router.transitions] == [
                CircuitState.OPEN,
                CircuitState.HALF_OPEN,
                CircuitState.CLOSED,
            ]
        finally:
            await router.aclose()

    run(go())
    assert len(anthropic_fake.attempts()) == 1


def test_retry_after_is_honoured_when_short(openai_fake: FakeUpstream) -> None:
    openai_fake.script(Behavior(status=429, retry_after="0.3"))
    reply, _ = run(route_once(make_router([openai_fake], FakeLocal()), make_call(OPENAI)))
    first, second = openai_fake.attempts()
    assert reply.backend == "openai"
    assert second.at - first.at >= 0.3


def test_long_retry_after_fails_over_at_once(openai_fake: FakeUpstream) -> None:
    openai_fake.script(Behavior(status=429, retry_after="30"))
    started = time.monotonic()
    reply, _ = run(route_once(make_router([openai_fake], FakeLocal()), make_call(OPENAI)))
    assert reply.backend == "local" and len(openai_fake.attempts()) == 1
    assert time.monotonic() - started < 5


def test_hedge_starts_local_beside_a_slow_upstream_and_cancels_the_upstream(
    anthropic_fake: FakeUpstream,
) -> None:
    anthropic_fake.script(Behavior(first_delay_s=3))
    local = FakeLocal()
    router = make_router([anthropic_fake], local, hedge=True, hedge_delay_s=0.2)
    started = time.monotonic()
    reply, _ = run(route_once(router, make_call(ANTHROPIC)))
    assert reply.backend == "local"
    assert time.monotonic() - started < 2
    assert local.started == 1 and len(anthropic_fake.attempts()) == 1


def test_no_hedge_when_the_gate_is_full(anthropic_fake: FakeUpstream) -> None:
    anthropic_fake.script(Behavior(first_delay_s=0.5))
    local = FakeLocal()
    router = make_router([anthropic_fake], local, hedge=True, hedge_delay_s=0.1)
    router.hedge_gate.max_in_flight = 0
    reply, _ = run(route_once(router, make_call(ANTHROPIC)))
    assert reply.backend == "anthropic" and local.started == 0


def test_hedge_keeps_the_upstream_when_it_answers_first(anthropic_fake: FakeUpstream) -> None:
    local = FakeLocal()
    router = make_router([anthropic_fake], local, hedge=True, hedge_delay_s=1.0)
    reply, _ = run(route_once(router, make_call(ANTHROPIC)))
    assert reply.backend == "anthropic" and local.started == 0


@pytest.fixture
def operator_key(monkeypatch: pytest.MonkeyPatch) -> str:
    """An `env:` key for upstreams that get other vendors' clients (a forwarded key would not go)."""
    monkeypatch.setenv("HS_TEST_OPERATOR_KEY", "sk-operator-key-1")
    return "env:HS_TEST_OPERATOR_KEY"


def test_cross_format_request_is_served_by_the_other_kind(
    anthropic_fake: FakeUpstream, operator_key: str
) -> None:
    router = make_router([anthropic_fake], FakeLocal(), api_key=operator_key)
    reply, events = run(route_once(router, make_call(OPENAI)))
    assert isinstance(reply, EventReply) and reply.backend == "anthropic"
    assert isinstance(events, list) and isinstance(events[-1], Finish)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Hello from the fake upstream."


def test_cross_format_mid_stream_cut_is_continued(openai_fake: FakeUpstream, operator_key: str) -> None:
    openai_fake.script(Behavior(cut_after=1))
    local = FakeLocal(text="world")
    router = make_router([openai_fake], local, api_key=operator_key)
    _, events = run(route_once(router, make_call(ANTHROPIC)))
    assert isinstance(events, list)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Helloworld"
    assert isinstance(events[-1], Finish) and events[-1].usage.output_tokens == 2


def test_second_upstream_serves_when_the_first_fails(
    anthropic_fake: FakeUpstream, openai_fake: FakeUpstream, operator_key: str
) -> None:
    anthropic_fake.default = Behavior(status=503)
    router = make_router([anthropic_fake, openai_fake], FakeLocal(), api_key=operator_key)
    reply, _ = run(route_once(router, make_call(ANTHROPIC)))
    assert reply.backend == "openai"
    assert len(anthropic_fake.attempts()) == 2


def test_upstream_only_raises_the_last_failure(openai_fake: FakeUpstream) -> None:
    openai_fake.default = Behavior(status=503)
    with pytest.raises(UpstreamError) as info:
        run(route_once(make_router([openai_fake], None), make_call(OPENAI)))
    assert info.value.failure is FailureClass.SERVER_ERROR


def test_non_streaming_is_streamed_internally_and_assembled(
    anthropic_fake: FakeUpstream, openai_fake: FakeUpstream
) -> None:
    _, body = run(route_once(make_router([openai_fake], FakeLocal()), make_call(OPENAI, stream=False)))
    assert isinstance(body, bytes)
    assert json.loads(body) == {
        "id": "chatcmpl-fake01",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello from the fake upstream.", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 6, "total_tokens": 16},
    }
    sent = openai_fake.attempts()[-1].body
    assert sent is not None and sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    reply, body = run(
        route_once(make_router([anthropic_fake], FakeLocal()), make_call(ANTHROPIC, stream=False))
    )
    assert isinstance(reply, RawReply)
    headers = dict(reply.headers)
    # The stream's own headers do not describe the JSON answer; the upstream's request id does.
    assert headers["content-type"] == "application/json"
    assert "cache-control" not in headers
    assert headers["request-id"] == "req_fake"
    assert isinstance(body, bytes)
    assert json.loads(body) == {
        "id": "msg_fake01",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": [{"type": "text", "text": "Hello from the fake upstream."}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 6},
    }


def test_non_streaming_hang_is_caught_by_the_first_token_deadline(openai_fake: FakeUpstream) -> None:
    openai_fake.script(Behavior(first_delay_s=5))
    started = time.monotonic()
    router = make_router([openai_fake], FakeLocal(), timeouts={"first_token_s": 0.3})
    reply, events = run(route_once(router, make_call(OPENAI, stream=False)))
    assert reply.backend == "local" and isinstance(events, list)
    assert time.monotonic() - started < 3
    assert len(openai_fake.attempts()) == 1


def test_non_streaming_cut_restarts_on_the_next_backend(openai_fake: FakeUpstream) -> None:
    openai_fake.script(Behavior(cut_after=2))
    reply, events = run(route_once(make_router([openai_fake], FakeLocal()), make_call(OPENAI, stream=False)))
    assert reply.backend == "local" and isinstance(events, list)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "local answer here"


def test_non_streaming_with_tools_goes_up_unchanged(anthropic_fake: FakeUpstream) -> None:
    call = make_call(ANTHROPIC, stream=False)
    body = json.loads(call.body) | {"tools": [{"name": "f", "input_schema": {"type": "object"}}]}
    call = ClientCall(call.api_format, json.dumps(body).encode(), call.headers, call.request)
    _, raw = run(route_once(make_router([anthropic_fake], FakeLocal()), call))
    assert isinstance(raw, bytes) and json.loads(raw)["content"][0]["text"] == "Hello from the fake upstream."
    assert anthropic_fake.attempts()[-1].body == body


class WarmingLocal(FakeLocalBackend):
    """A local backend that also records the conversations handed to its warm-up."""

    def __init__(self) -> None:
        super().__init__()
        self.warmed: list[tuple[Role, str]] = []

    async def warm(self, request: Any) -> None:
        self.warmed = [(m.role, m.content) for m in request.messages]
        self.num_warmed += 1

    num_warmed = 0


LONG = "Summarise the following incident report for the on-call channel. " * 10  # over MIN_CHARS


@pytest.mark.parametrize(
    ("api", "upstream"), [(ANTHROPIC, "anthropic"), (OPENAI, "openai"), (OPENAI, "anthropic")]
)
def test_conversations_answered_upstream_are_handed_to_the_local_warm_up(
    api: ApiFormat, upstream: str, anthropic_fake: FakeUpstream, openai_fake: FakeUpstream, operator_key: str
) -> None:
    """Passthrough (same format) and cross-format alike: the conversation plus the upstream's answer,
    as the next turn will send it, so a later failover finds it in the local KV cache."""
    local = WarmingLocal()
    fake = anthropic_fake if upstream == "anthropic" else openai_fake
    call = make_call(api, content=LONG)
    reply, _ = run(route_once(make_router([fake], local, api_key=operator_key), call))
    assert reply.backend == fake_name(fake) and local.started == 0
    expected = [(m.role, m.content) for m in call.request.messages]
    assert local.warmed == [*expected, (Role.ASSISTANT, "Hello from the fake upstream.")]


def test_warm_up_can_be_switched_off(anthropic_fake: FakeUpstream) -> None:
    local = WarmingLocal()
    router = make_router([anthropic_fake], local)
    router.config = dataclasses.replace(
        router.config, local=dataclasses.replace(router.config.local, warm_conversations=False)
    )
    run(route_once(router, make_call(ANTHROPIC, content=LONG)))
    assert local.warmed == []


def test_short_and_repeated_conversations_are_not_warmed(anthropic_fake: FakeUpstream) -> None:
    # A short chat is cheap to compute cold; a conversation warmed a moment ago is in the cache: both
    # would only wake the engine to compete with passthrough traffic for the CPU.
    local = WarmingLocal()
    router = make_router([anthropic_fake], local)

    async def three() -> None:
        for content in (LONG, LONG, "Say hello"):
            reply = await router.route(make_call(ANTHROPIC, content=content))
            await collect(reply)
        await router.aclose()

    run(three())
    assert local.num_warmed == 1 and local.warmed[0] == (Role.USER, LONG)
    assert router.warmups.num_skipped == 2


def test_a_failed_upstream_answer_is_not_warmed(openai_fake: FakeUpstream) -> None:
    openai_fake.refuse()
    local = WarmingLocal()
    run(route_once(make_router([openai_fake], local), make_call(OPENAI, content=LONG)))
    assert local.warmed == []


def fake_name(fake: FakeUpstream) -> str:
    return make_router([fake], None).members[0].upstream.name


def test_the_router_keeps_only_the_latest_transitions(anthropic_fake: FakeUpstream) -> None:
    async def go() -> Router:
        router = make_router([anthropic_fake], FakeLocal(), breaker={"consecutive_failures": 1})
        breaker = router.members[0].breaker
        for _ in range(100):  # open, half-open, closed
            assert breaker.try_acquire()
            breaker.record_failure()
            breaker.record_probe(is_healthy=True)
            assert breaker.try_acquire()
            breaker.record_success()
        await router.aclose()
        return router

    router = run(go())
    assert len(router.transitions) == 100 and router.members[0].breaker.snapshot().num_transitions == 300
