"""SSE framing and heartbeats: exact bytes, and closing that cancels what it must."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from hotspare.api.sse import Heartbeat, with_heartbeats
from hotspare.formats.sse import encode_comment, encode_event


def test_events_are_one_data_line_of_compact_json() -> None:
    assert encode_event({"a": 1, "b": "é"}) == 'data: {"a":1,"b":"é"}\n\n'.encode()
    assert encode_event({"type": "ping"}, event="ping") == b'event: ping\ndata: {"type":"ping"}\n\n'
    assert encode_event("[DONE]") == b"data: [DONE]\n\n"
    assert encode_comment("keep-alive") == b": keep-alive\n\n"


class Source:
    """Yields 'a', then waits `gap_s` before 'b'; records whether it was cancelled or closed."""

    def __init__(self, gap_s: float) -> None:
        self.gap_s = gap_s
        self.ended = ""

    async def events(self) -> AsyncIterator[str]:
        try:
            yield "a"
            await asyncio.sleep(self.gap_s)
            yield "b"
            self.ended = "finished"
        except asyncio.CancelledError:
            self.ended = "cancelled"
            raise
        except GeneratorExit:
            self.ended = "closed"
            raise


async def collect(source: Source, interval_s: float) -> list[str | Heartbeat]:
    return [event async for event in with_heartbeats(source.events(), interval_s)]


def test_a_long_gap_is_filled_with_heartbeats_and_nothing_is_lost() -> None:
    source = Source(gap_s=0.35)
    events = asyncio.run(collect(source, interval_s=0.1))
    assert events[0] == "a" and events[-1] == "b"
    assert set(events[1:-1]) == {Heartbeat()}
    assert 2 <= len(events[1:-1]) <= 4
    assert source.ended == "finished"


def test_no_heartbeat_when_events_come_in_time() -> None:
    source = Source(gap_s=0.0)
    assert asyncio.run(collect(source, interval_s=5.0)) == ["a", "b"]


def test_closing_during_a_gap_cancels_the_pending_read() -> None:
    async def scenario() -> Source:
        source = Source(gap_s=60.0)
        paced = with_heartbeats(source.events(), interval_s=0.05)
        assert await anext(paced) == "a"
        assert await anext(paced) == Heartbeat()
        await paced.aclose()
        await asyncio.sleep(0)  # let the cancelled read run its cleanup
        return source

    assert asyncio.run(scenario()).ended == "cancelled"


def test_closing_between_events_closes_the_source() -> None:
    async def scenario() -> Source:
        source = Source(gap_s=0.0)
        paced = with_heartbeats(source.events(), interval_s=5.0)
        assert await anext(paced) == "a"
        await paced.aclose()
        return source

    assert asyncio.run(scenario()).ended == "closed"
