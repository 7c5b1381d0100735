"""A fuzz pass over what upstreams send (hypothesis): malformed SSE, events whose JSON is wrong or of
the wrong shape, random byte splits, corrupt gzip. Whatever arrives, reading the stream either ends
with the vendor's finish (a Finish event, the parser done) or raises `UpstreamError`: never another
exception (a 500, an aborted stream, no failover), never an end without a finish (a truncated answer
reported complete), and never a hang (every read is bounded)."""

from __future__ import annotations

import asyncio
import itertools
import json
import zlib
from collections.abc import Mapping
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hotspare.core.errors import UpstreamError
from hotspare.core.types import Finish
from hotspare.router.member import build_upstream
from hotspare.upstream.config import UpstreamConfig
from hotspare.upstream.stream import UpstreamStream
from hotspare.upstream.transport import BodyReader, ContentDecoder

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8))
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
OPENAI_CHUNK = st.fixed_dictionaries(
    {},
    optional={
        "id": JSON,
        "created": JSON,
        "model": JSON,
        "usage": st.one_of(JSON, st.fixed_dictionaries({}, optional={"prompt_tokens": JSON})),
        "error": JSON,
        "choices": st.one_of(
            JSON,
            st.lists(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "index": st.one_of(st.just(0), JSON),
                        "delta": st.one_of(
                            JSON,
                            st.fixed_dictionaries(
                                {}, optional={"content": JSON, "tool_calls": JSON, "function_call": JSON}
                            ),
                        ),
                        "finish_reason": st.one_of(st.sampled_from(["stop", "length", "abort"]), JSON),
                    },
                ),
                max_size=2,
            ),
        ),
    },
)
ANTHROPIC_TYPES = st.sampled_from(
    [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
        "error",
        "ping",
    ]
)
BLOCK = st.fixed_dictionaries({"type": st.sampled_from(["text", "tool_use"])})
ANTHROPIC_EVENT = st.fixed_dictionaries(
    {"type": st.one_of(ANTHROPIC_TYPES, JSON)},
    optional={
        "message": JSON,
        "index": JSON,
        "content_block": st.one_of(
            JSON, st.fixed_dictionaries({"type": st.sampled_from(["text", "tool_use"])})
        ),
        "delta": st.one_of(
            JSON,
            st.fixed_dictionaries(
                {"type": st.sampled_from(["text_delta", "input_json_delta"])},
                optional={"text": JSON, "partial_json": JSON, "stop_reason": JSON},
            ),
        ),
        "usage": JSON,
        "error": JSON,
    },
)


def _block(payload: Any, kind: str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload)
    name = f"event: {payload.get('type')}\n" if kind == "anthropic" and isinstance(payload, Mapping) else ""
    return f"{name}data: {data}\n\n".encode()


RAW_NOISE = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([b"data: {not json\n\n", b"data: [DONE]\n\n", b": comment\n\n", b"\r\r", b"data:\n\n"]),
)


class Scripted(BodyReader):
    """A response whose body arrives in the given pieces (optionally through a gzip decoder)."""

    status = 200
    headers: tuple[tuple[str, str], ...] = (("content-type", "text/event-stream"),)

    def __init__(self, pieces: list[bytes], decoder: ContentDecoder | None) -> None:
        self._pieces = list(pieces)
        self._decoder = decoder

    def header(self, name: str) -> str | None:
        return None

    async def read_chunk(self) -> bytes | None:
        if self._decoder is not None and self._decoder.has_more:
            return self._decoder.decode(b"")
        if not self._pieces:
            return None
        piece = self._pieces.pop(0)
        return self._decoder.decode(piece) if self._decoder is not None else piece

    async def aclose(self) -> None:
        pass


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


def read_all(kind: str, pieces: list[bytes], decoder: ContentDecoder | None) -> list[Any]:
    config = UpstreamConfig.model_validate(
        {
            "name": "u",
            "kind": kind,
            "base_url": "http://127.0.0.1:9",
            "timeouts": {"first_token_s": 1, "idle_s": 1, "total_s": 2},
        }
    )

    async def go() -> list[Any]:
        upstream = build_upstream(config)
        stream = UpstreamStream(
            Scripted(pieces, decoder),  # type: ignore[arg-type]
            upstream.new_parser(None),
            0.0,
            config.timeouts,
            upstream.error,
        )
        stream.started = asyncio.get_running_loop().time()
        events: list[Any] = []
        try:
            async with asyncio.timeout(5):
                while (item := await stream.next_event()) is not None:
                    events.extend(item[1])
            assert stream.parser.is_done and isinstance(events[-1], Finish)  # ended only at a finish
        except UpstreamError as exc:
            events.append(exc)
        finally:
            await upstream.aclose()
        return events

    return asyncio.run(go())


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(
    st.lists(st.one_of(OPENAI_CHUNK.map(lambda c: _block(c, "openai")), RAW_NOISE), max_size=8),
    st.lists(st.integers(min_value=0), max_size=6),
)
def test_openai_streams_end_at_a_finish_or_fail_typed(blocks: list[bytes], cuts: list[int]) -> None:
    read_all("openai", _split(b"".join(blocks), cuts), None)


@FUZZ
@given(
    st.lists(st.one_of(ANTHROPIC_EVENT.map(lambda e: _block(e, "anthropic")), RAW_NOISE), max_size=8),
    st.lists(st.integers(min_value=0), max_size=6),
)
def test_anthropic_streams_end_at_a_finish_or_fail_typed(blocks: list[bytes], cuts: list[int]) -> None:
    read_all("anthropic", _split(b"".join(blocks), cuts), None)


@FUZZ
@given(st.binary(max_size=200), st.booleans(), st.lists(st.integers(min_value=0), max_size=4))
def test_corrupt_or_truncated_gzip_fails_typed(data: bytes, compress: bool, cuts: list[int]) -> None:
    body = zlib.compress(data) if compress else data
    body = body[: len(body) // 2] if cuts else body  # a truncated deflate stream, too
    read_all("openai", _split(body, cuts), ContentDecoder())
