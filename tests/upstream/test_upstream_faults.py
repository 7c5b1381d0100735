"""Hostile and broken upstreams (issue 17, the upstream side): headers that must not cross, interim
responses, the operator's key rejected, keys that belong to another vendor, events that break the
parser, gzip bombs, and a stream kept open by keep-alives. Real fake providers over HTTP, the router
in-process."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
import zlib
from typing import Any

import pytest

from hotspare.core.types import ApiFormat, StreamEvent, TextDelta
from hotspare.router.member import build_upstream
from hotspare.router.replies import RawReply, Reply
from hotspare.router.router import Router
from hotspare.upstream.base import ClientCall
from hotspare.upstream.sse import SseDecoder
from hotspare.upstream.transport import MAX_DECODED_PIECE_BYTES, BodyReader, ContentDecoder, ProtocolFailed
from tests.fakes.upstreams import Behavior, FakeUpstream
from tests.router.factories import FakeLocal, make_call, router_config, upstream_config

ANTHROPIC = ApiFormat.ANTHROPIC_MESSAGES
OPENAI = ApiFormat.OPENAI_CHAT
UPSTREAM_TEXT = "Hello from the fake upstream."


def router_for(fakes: list[FakeUpstream], local: FakeLocal | None, **overrides: Any) -> Router:
    configs = [upstream_config(f, **overrides) for f in fakes]
    config = router_config(
        {
            "mode": "auto" if local else "upstream-only",
            "upstreams": [c.model_dump() for c in configs],
            "local": {"hedge": False},
        }
    )
    return Router(config, [build_upstream(c) for c in config.upstreams], local)


def route(router: Router, call: ClientCall) -> tuple[Reply, bytes | list[StreamEvent]]:
    async def go() -> tuple[Reply, bytes | list[StreamEvent]]:
        try:
            reply = await router.route(call)
            if isinstance(reply, RawReply):
                return reply, b"".join([chunk async for chunk in reply.body])
            return reply, [event async for event in reply.events]
        finally:
            await router.aclose()

    return asyncio.run(go())


def text_of(body: bytes | list[StreamEvent]) -> str:
    if isinstance(body, list):
        return "".join(e.text for e in body if isinstance(e, TextDelta))
    out = ""
    for line in body.decode().splitlines():
        if not line.startswith("data: {"):
            continue
        data = json.loads(line[6:])
        if data.get("type") == "content_block_delta":
            out += data["delta"].get("text", "")
        for choice in data.get("choices") or ():
            out += choice["delta"].get("content") or ""
    return out


def with_headers(call: ClientCall, *extra: tuple[str, str]) -> ClientCall:
    return ClientCall(call.api_format, call.body, (*call.headers, *extra), call.request)


# --- 17.5: Expect, Connection-named headers, 1xx ----------------------------------------------------------


def test_expect_and_connection_named_headers_are_not_forwarded(openai_fake: FakeUpstream) -> None:
    call = with_headers(
        make_call(OPENAI),
        ("expect", "100-continue"),
        ("connection", "keep-alive, x-hop-only"),
        ("x-hop-only", "1"),
        ("x-end-to-end", "2"),
    )
    reply, body = route(router_for([openai_fake], FakeLocal()), call)
    assert reply.backend == "openai" and text_of(body) == UPSTREAM_TEXT
    sent = openai_fake.attempts()[-1].headers
    assert "expect" not in sent and "x-hop-only" not in sent and sent["x-end-to-end"] == "2"


@pytest.mark.parametrize("api", [OPENAI, ANTHROPIC])
def test_an_interim_100_continue_is_skipped(
    api: ApiFormat, openai_fake: FakeUpstream, anthropic_fake: FakeUpstream
) -> None:
    fake = openai_fake if api is OPENAI else anthropic_fake
    fake.script(Behavior(interim_100=True))
    local = FakeLocal()
    reply, body = route(router_for([fake], local), make_call(api))
    assert reply.backend == fake.kind and text_of(body) == UPSTREAM_TEXT and local.started == 0


# --- 17.6: the operator's key rejected; account headers ---------------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
def test_a_rejected_operator_key_fails_over_and_is_not_relayed(
    status: int, openai_fake: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HS_TEST_OPERATOR_KEY", "sk-operator-key-1")
    openai_fake.default = Behavior(status=status, error_message="Incorrect API key provided: sk-op***ey-1")
    local = FakeLocal()
    reply, body = route(
        router_for([openai_fake], local, api_key="env:HS_TEST_OPERATOR_KEY"), make_call(OPENAI)
    )
    assert reply.backend == "local" and text_of(body) == "local answer here"
    assert "sk-op" not in str(body)


def test_provider_account_headers_are_not_relayed(openai_fake: FakeUpstream) -> None:
    reply, _ = route(router_for([openai_fake], FakeLocal()), make_call(OPENAI))
    assert isinstance(reply, RawReply)
    names = {k for k, _ in reply.headers}
    assert "openai-organization" not in names and "anthropic-organization-id" not in names
    assert "request-id" in names


# --- 17.2: a forwarded key goes only to its own vendor ----------------------------------------------------


def test_a_forwarded_key_never_goes_to_the_other_vendor(
    anthropic_fake: FakeUpstream, openai_fake: FakeUpstream
) -> None:
    anthropic_fake.script(Behavior(status=503), Behavior(status=503))
    local = FakeLocal()
    reply, _ = route(router_for([anthropic_fake, openai_fake], local), make_call(ANTHROPIC))
    assert reply.backend == "local" and openai_fake.attempts() == []


def test_a_forwarded_key_is_not_used_for_a_takeover_by_the_other_vendor(
    anthropic_fake: FakeUpstream, openai_fake: FakeUpstream
) -> None:
    anthropic_fake.script(Behavior(cut_after=2))
    local = FakeLocal(text="rest")
    reply, body = route(router_for([anthropic_fake, openai_fake], local), make_call(ANTHROPIC))
    assert text_of(body) == "Hello fromrest" and reply.takeovers == ["local"]
    assert openai_fake.attempts() == []


def test_two_forward_mode_hosts_of_one_kind_are_refused_at_startup() -> None:
    upstreams = [
        {"name": "a", "kind": "openai", "base_url": "https://api.openai.com"},
        {"name": "b", "kind": "openai", "base_url": "https://openrouter.ai/api"},
    ]
    with pytest.raises(ValueError, match='both have api_key = "forward"') as info:
        router_config({"upstreams": upstreams})
    assert "env:" in str(info.value)
    upstreams[1]["api_key"] = "env:OPENROUTER_KEY"
    router_config({"upstreams": upstreams})  # unambiguous: accepted


# --- 17.11: whatever a parser raises is MALFORMED ---------------------------------------------------------

BAD_EVENTS = {
    "openai-delta-not-object": (
        "openai",
        b'data: {"id":"x","choices":[{"index":0,"delta":"oops","finish_reason":null}]}\n\n',
    ),
    "openai-created-not-int": (
        "openai",
        b'data: {"id":"x","created":"soon","choices":[{"index":0,"delta":{},"finish_reason":null}]}\n\n',
    ),
    "anthropic-usage-not-int": (
        "anthropic",
        b"event: message_delta\n"
        b'data: {"type":"message_delta","delta":{},"usage":{"output_tokens":"many"}}\n\n',
    ),
    "anthropic-delta-not-object": (
        "anthropic",
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":7}\n\n',
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_EVENTS))
def test_an_event_the_parser_cannot_read_is_a_malformed_failure(
    case: str, openai_fake: FakeUpstream, anthropic_fake: FakeUpstream
) -> None:
    kind, event = BAD_EVENTS[case]
    fake = openai_fake if kind == "openai" else anthropic_fake
    fake.script(Behavior(malformed_after=2, malformed_event=event))
    local = FakeLocal(text="rest")
    api = OPENAI if kind == "openai" else ANTHROPIC
    router = router_for([fake], local)
    reply, body = route(router, make_call(api))
    assert text_of(body) == "Hello fromrest" and reply.takeovers == ["local"]
    assert router.snapshot()[fake.kind]["window_failures"] == 1


# --- 17.16: bounded reads ---------------------------------------------------------------------------------


def test_a_gzip_stream_is_decoded(openai_fake: FakeUpstream) -> None:
    openai_fake.script(Behavior(gzip=True))
    reply, body = route(router_for([openai_fake], FakeLocal()), make_call(OPENAI))
    assert reply.backend == "openai" and text_of(body) == UPSTREAM_TEXT


def test_a_gzip_bomb_is_refused_without_inflating_it(openai_fake: FakeUpstream) -> None:
    openai_fake.script(Behavior(gzip=True, gzip_bomb_bytes=64 << 20))
    local = FakeLocal()
    reply, body = route(router_for([openai_fake], local, timeouts={"first_token_s": 10}), make_call(OPENAI))
    assert reply.backend == "local" and text_of(body) == "local answer here"


def test_the_content_decoder_returns_bounded_pieces() -> None:
    bomb = gzip.compress(b"\0" * (16 << 20))
    decoder = ContentDecoder()
    sizes = [len(decoder.decode(bomb))]
    while decoder.has_more:
        sizes.append(len(decoder.decode(b"")))
    assert max(sizes) <= MAX_DECODED_PIECE_BYTES and sum(sizes) == 16 << 20
    with pytest.raises(zlib.error):
        ContentDecoder().decode(b"\x1f\x8b\x08\x00garbage-not-deflate")


def test_a_whole_body_read_is_capped() -> None:
    class Endless(BodyReader):
        async def read_chunk(self) -> bytes | None:
            return b"x" * 65536

    with pytest.raises(ProtocolFailed, match="over 1000000 bytes"):
        asyncio.run(Endless().aread(max_bytes=1_000_000))


def test_the_sse_buffer_is_not_rescanned_quadratically() -> None:
    event = b"data: " + b"a" * 300_000 + b"\n\n"
    decoder = SseDecoder()
    started = time.monotonic()
    events = [e for i in range(len(event)) for e in decoder.feed(event[i : i + 1])]
    assert time.monotonic() - started < 5.0  # quadratic: ~45 GB scanned and copied
    assert len(events) == 1 and events[0].raw == event


@pytest.mark.parametrize("split", range(1, 6))
def test_a_boundary_split_across_chunks_is_found(split: int) -> None:
    stream = b"data: 1\r\n\r\ndata: 2\r\n\r\n"
    decoder = SseDecoder()
    cut = len(b"data: 1\r\n\r\n") - 4 + split
    events = decoder.feed(stream[:cut]) + decoder.feed(stream[cut:])
    assert [e.data for e in events] == ["1", "2"]


def test_an_endless_event_is_refused() -> None:
    decoder = SseDecoder(max_event_bytes=1000)
    with pytest.raises(ValueError, match="longer than 1000 bytes"):
        for _ in range(20):
            decoder.feed(b"data: " + b"z" * 100)


# --- 17.17: keep-alives do not hold a stalled answer open -------------------------------------------------


@pytest.mark.parametrize("api", [OPENAI, ANTHROPIC])
def test_pings_after_content_do_not_reset_the_idle_timeout(
    api: ApiFormat, openai_fake: FakeUpstream, anthropic_fake: FakeUpstream
) -> None:
    fake = openai_fake if api is OPENAI else anthropic_fake
    fake.script(Behavior(drip_after=2))
    local = FakeLocal(text="rest")
    started = time.monotonic()
    router = router_for([fake], local, timeouts={"idle_s": 0.5, "total_s": 20})
    reply, body = route(router, make_call(api))
    assert text_of(body) == "Hello fromrest" and reply.takeovers == ["local"]
    assert time.monotonic() - started < 3.0  # idle_s after the last content, not total_s
