"""The upstream clients against real fake servers: one failure class per misbehaviour."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Coroutine
from typing import Any, TypeVar

import httpx
import pytest

from hotspare.core.errors import FailureClass, UpstreamError
from hotspare.core.types import ApiFormat, Finish, FinishReason, TextDelta, Usage
from hotspare.upstream import keys as keys_module
from hotspare.upstream.anthropic import AnthropicUpstream
from hotspare.upstream.base import ClientCall, Upstream
from hotspare.upstream.config import UpstreamConfig
from hotspare.upstream.openai import OpenAIUpstream
from tests.fakes.upstreams import Behavior, FakeUpstream, key_hash
from tests.router.factories import CLIENT_KEY, make_call, upstream_config

T = TypeVar("T")
FORMATS = {"anthropic": ApiFormat.ANTHROPIC_MESSAGES, "openai": ApiFormat.OPENAI_CHAT}


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def build(fake: FakeUpstream, **overrides: Any) -> Upstream:
    config = upstream_config(fake, **overrides)
    return AnthropicUpstream(config) if fake.kind == "anthropic" else OpenAIUpstream(config)


async def passthrough_bytes(upstream: Upstream, call: ClientCall) -> bytes:
    stream = await upstream.open_stream(call, passthrough=True)
    out = b""
    try:
        while (item := await stream.next_event()) is not None:
            out += item[0].raw
    finally:
        await stream.aclose()
    return out


async def failure_of(
    fake: FakeUpstream, behavior: Behavior, *, stream: bool = True, **overrides: Any
) -> UpstreamError:
    fake.script(behavior)
    upstream = build(fake, **overrides)
    call = make_call(FORMATS[fake.kind], stream=stream)
    try:
        if stream:
            await passthrough_bytes(upstream, call)
        else:
            await upstream.complete(call)
    except UpstreamError as exc:
        return exc
    finally:
        await upstream.aclose()
    raise AssertionError("no failure")


@pytest.fixture(params=["anthropic", "openai"])
def fake(
    request: pytest.FixtureRequest, anthropic_fake: FakeUpstream, openai_fake: FakeUpstream
) -> FakeUpstream:
    return anthropic_fake if request.param == "anthropic" else openai_fake


def test_passthrough_is_byte_identical_and_parsed_on_the_side(fake: FakeUpstream) -> None:
    call = make_call(FORMATS[fake.kind])

    async def go() -> tuple[bytes, bytes, str]:
        upstream = build(fake)
        async with httpx.AsyncClient(base_url=fake.url) as direct:
            path = "/v1/messages" if fake.kind == "anthropic" else "/v1/chat/completions"
            expected = (await direct.post(path, content=call.body, headers=dict(call.headers))).content
        stream = await upstream.open_stream(call, passthrough=True)
        got = b""
        while (item := await stream.next_event()) is not None:
            got += item[0].raw
        await stream.aclose()
        await upstream.aclose()
        return expected, got, stream.parser.text

    expected, got, text = run(go())
    assert got == expected
    assert text == "Hello from the fake upstream."
    forwarded = fake.attempts()[-1]
    assert forwarded.body == json.loads(call.body)
    key_header = "x-api-key" if fake.kind == "anthropic" else "authorization"
    assert forwarded.headers[key_header] == key_hash(CLIENT_KEY)


def test_cross_format_yields_core_events(fake: FakeUpstream) -> None:
    call = make_call(FORMATS[fake.kind])

    async def go() -> list[Any]:
        upstream = build(fake)
        try:
            return [e async for e in upstream.events(call, call.request)]
        finally:
            await upstream.aclose()

    events = run(go())
    assert [e.text for e in events if isinstance(e, TextDelta)] == [
        "Hello",
        " from",
        " the",
        " fake",
        " upstream",
        ".",
    ]
    assert events[-1] == Finish(FinishReason.END_TURN, Usage(10, 6), "m")
    sent = fake.attempts()[-1].body
    assert sent is not None and sent["stream"] is True and sent["messages"][-1]["content"] == "Say hello"


def test_env_key_replaces_the_clients(fake: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HS_FAKE_KEY", "sk-from-env")

    async def go() -> None:
        upstream = build(fake, api_key="env:HS_FAKE_KEY")
        await passthrough_bytes(upstream, make_call(FORMATS[fake.kind]))
        await upstream.aclose()

    run(go())
    headers = fake.attempts()[-1].headers
    key_header = "x-api-key" if fake.kind == "anthropic" else "authorization"
    assert headers[key_header] == key_hash("sk-from-env")
    assert sum(1 for v in headers.values() if v == key_hash(CLIENT_KEY)) == 0


@pytest.mark.parametrize(
    ("behavior", "failure"),
    [
        (Behavior(reset=True), FailureClass.CONNECT_ERROR),
        (Behavior(hang=True), FailureClass.HEADERS_TIMEOUT),
        (Behavior(first_delay_s=5), FailureClass.FIRST_TOKEN_TIMEOUT),
        (Behavior(stall_after=2), FailureClass.IDLE_TIMEOUT),
        (Behavior(status=500), FailureClass.SERVER_ERROR),
        (Behavior(status=503), FailureClass.SERVER_ERROR),
        (Behavior(status=429), FailureClass.RATE_LIMITED),
        (Behavior(cut_after=2), FailureClass.STREAM_CUT),
        (Behavior(omit_terminator=True), FailureClass.STREAM_CUT),
        (Behavior(malformed_after=1), FailureClass.MALFORMED),
        (Behavior(status=400), FailureClass.CLIENT_FAULT),
        (Behavior(status=404), FailureClass.CLIENT_FAULT),
        (Behavior(status=401), FailureClass.CLIENT_FAULT),  # never worked with this key: the client's fault
    ],
)
def test_failure_classes(fake: FakeUpstream, behavior: Behavior, failure: FailureClass) -> None:
    error = run(failure_of(fake, behavior, timeouts={"first_token_s": 0.5, "idle_s": 0.3}))
    assert error.failure is failure
    assert error.upstream == fake.kind


def test_in_band_error_events(anthropic_fake: FakeUpstream, openai_fake: FakeUpstream) -> None:
    assert run(failure_of(anthropic_fake, Behavior(error_after=2))).failure is FailureClass.OVERLOADED
    assert run(failure_of(openai_fake, Behavior(error_after=2))).failure is FailureClass.STREAM_ERROR


def test_anthropic_529_is_overloaded(anthropic_fake: FakeUpstream) -> None:
    error = run(failure_of(anthropic_fake, Behavior(status=529)))
    assert (error.failure, error.status, error.retryable) == (FailureClass.OVERLOADED, 529, True)


def test_retry_after_is_parsed(fake: FakeUpstream) -> None:
    error = run(failure_of(fake, Behavior(status=429, retry_after="3")))
    assert (error.failure, error.retry_after_s, error.retryable) == (FailureClass.RATE_LIMITED, 3.0, True)


def test_client_fault_keeps_the_upstream_body(fake: FakeUpstream) -> None:
    error = run(failure_of(fake, Behavior(status=400, error_message="messages: field required")))
    body = json.loads(error.body)
    assert error.status == 400 and error.content_type == "application/json"
    message = body["error"]["message"]
    assert message == "messages: field required"
    assert not error.should_fail_over


def test_context_length_rejections(anthropic_fake: FakeUpstream, openai_fake: FakeUpstream) -> None:
    too_long = Behavior(status=400, error_message="prompt is too long: 210000 tokens > 200000 maximum")
    assert run(failure_of(anthropic_fake, too_long)).failure is FailureClass.CONTEXT_LENGTH
    exceeded = Behavior(status=400, error_code="context_length_exceeded")
    assert run(failure_of(openai_fake, exceeded)).failure is FailureClass.CONTEXT_LENGTH


def test_401_after_success_is_an_auth_outage(fake: FakeUpstream) -> None:
    fake.script(Behavior(), Behavior(status=401), Behavior(status=403))
    call = make_call(FORMATS[fake.kind])
    other_key = make_call(FORMATS[fake.kind], key="sk-another")

    async def go() -> list[FailureClass]:
        upstream = build(fake)
        await passthrough_bytes(upstream, call)
        out = []
        for c in (call, other_key):
            try:
                await passthrough_bytes(upstream, c)
            except UpstreamError as exc:
                out.append(exc.failure)
        await upstream.aclose()
        return out

    assert run(go()) == [FailureClass.AUTH_OUTAGE, FailureClass.CLIENT_FAULT]


def test_refused_connection(fake: FakeUpstream) -> None:
    fake.refuse()
    assert run(failure_of(fake, Behavior())).failure is FailureClass.CONNECT_ERROR
    assert fake.attempts() == []


def test_connect_timeout_from_the_transport() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("timed out", request=request)

    config = UpstreamConfig(name="openai", kind="openai", base_url="http://127.0.0.1:9")

    async def go() -> UpstreamError:
        upstream = OpenAIUpstream(config, transport=httpx.MockTransport(refuse))
        try:
            await upstream.open_stream(make_call(ApiFormat.OPENAI_CHAT), passthrough=True)
        except UpstreamError as exc:
            return exc
        finally:
            await upstream.aclose()
        raise AssertionError("no failure")

    assert run(go()).failure is FailureClass.CONNECT_TIMEOUT


def test_non_streaming_passthrough(fake: FakeUpstream) -> None:
    async def go() -> bytes:
        upstream = build(fake)
        try:
            return (await upstream.complete(make_call(FORMATS[fake.kind], stream=False))).body
        finally:
            await upstream.aclose()

    body = json.loads(run(go()))
    text = (
        body["content"][0]["text"] if fake.kind == "anthropic" else body["choices"][0]["message"]["content"]
    )
    assert text == "Hello from the fake upstream."
    assert run(failure_of(fake, Behavior(cut_after=1), stream=False)).failure is FailureClass.STREAM_CUT
    assert run(failure_of(fake, Behavior(status=502), stream=False)).failure is FailureClass.SERVER_ERROR


def test_probes_spend_no_tokens(fake: FakeUpstream) -> None:
    async def probe() -> bool:
        upstream = build(fake)
        try:
            return await upstream.probe()
        finally:
            await upstream.aclose()

    assert run(probe()) is True
    fake.probe_status = 503
    assert run(probe()) is False
    fake.refuse()
    assert run(probe()) is False
    assert [(a.method, a.path) for a in fake.attempts(probes=True)] == [("GET", "/v1/models")] * 2
    assert fake.attempts() == []


def test_a_parsed_body_is_shared_never_modified_and_renamed_models_reach_the_upstream(
    openai_fake: FakeUpstream,
) -> None:
    # The API layer hands the body it parsed to the upstream (payload) so a passthrough does not parse
    # it again; rewriting it (stream, stream_options, a renamed model) must copy, not modify it.
    plain = make_call(ApiFormat.OPENAI_CHAT, stream=False, model="gpt-x")
    payload = json.loads(plain.body)
    frozen = json.dumps(payload, sort_keys=True)
    call = dataclasses.replace(plain, payload=payload)

    async def go() -> None:
        upstream = build(openai_fake, rename={"gpt-x": "llama-up"})
        try:
            streaming = upstream.as_streaming(call)
            assert streaming is not None and streaming.payload is not None
            assert streaming.payload["stream"] is True and json.loads(streaming.body)["stream"] is True
            stream = await upstream.open_stream(streaming, passthrough=True)
            while await stream.next_event() is not None:
                pass
            await stream.aclose()
        finally:
            await upstream.aclose()

    run(go())
    assert json.dumps(payload, sort_keys=True) == frozen  # the client's parsed body is untouched
    sent = openai_fake.attempts()[-1].body
    assert sent["model"] == "llama-up" and sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True} and sent["messages"] == payload["messages"]


def test_good_keys_are_pruned_by_age_and_count(
    openai_fake: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keys_module, "MAX_GOOD_KEYS", 3)
    keys = [f"sk-client-{n:02d}" for n in range(6)]

    async def go() -> tuple[list[str], list[str]]:
        upstream = build(openai_fake)
        try:
            for key in keys[:5]:
                await passthrough_bytes(upstream, make_call(ApiFormat.OPENAI_CHAT, key=key))
            by_count = list(upstream._good_keys.last_ok)
            for fingerprint in upstream._good_keys.last_ok:  # as if they last worked 16 minutes ago
                upstream._good_keys.last_ok[fingerprint] -= 16 * 60
            await passthrough_bytes(upstream, make_call(ApiFormat.OPENAI_CHAT, key=keys[5]))
            return by_count, list(upstream._good_keys.last_ok)
        finally:
            await upstream.aclose()

    by_count, by_age = run(go())
    assert by_count == [keys_module.key_fingerprint(k) for k in keys[2:5]]  # the 3 most recently good
    assert by_age == [keys_module.key_fingerprint(keys[5])]
