"""The error event that ends a passthrough stream no backend could finish: the same bytes the API
layer sends for that error in that format (both come from hotspare/formats/), pinned exactly."""

from __future__ import annotations

from hotspare.core.errors import BackendUnavailable, FailureClass, Overloaded, UpstreamError
from hotspare.formats import anthropic, openai_chat
from hotspare.formats.sse import encode_event
from hotspare.router.takeover import NO_CONTINUATION
from hotspare.upstream.anthropic import AnthropicParser
from hotspare.upstream.openai import OpenAIParser
from hotspare.upstream.openai_responses import ResponsesParser

CUT = UpstreamError(FailureClass.STREAM_CUT, "stream broke", upstream="u")
BUSY = UpstreamError(FailureClass.OVERLOADED, "error event (overloaded_error)", upstream="u")


def test_anthropic_overload_keeps_its_own_error_type() -> None:
    parser = AnthropicParser("u")
    assert parser.render_error(CUT, NO_CONTINUATION) == (
        b'event: error\ndata: {"type":"error","error":{"type":"api_error","message":"'
        + NO_CONTINUATION.encode()
        + b'"}}\n\n'
    )
    assert parser.render_error(BUSY, NO_CONTINUATION) == (
        b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"'
        + NO_CONTINUATION.encode()
        + b'"}}\n\n'
    )
    assert parser.render_error(BUSY, NO_CONTINUATION) == anthropic.error_event(Overloaded(NO_CONTINUATION))
    assert parser.render_error(None, NO_CONTINUATION) == anthropic.error_event(
        BackendUnavailable(NO_CONTINUATION)
    )


def test_openai_chat_error_chunk() -> None:
    parser = OpenAIParser("u", include_usage=False)
    expected = (
        b'data: {"error":{"message":"'
        + NO_CONTINUATION.encode()
        + b'","type":"server_error","param":null,"code":null}}\n\n'
    )
    assert parser.render_error(BUSY, NO_CONTINUATION) == expected
    assert parser.render_error(None, NO_CONTINUATION) == openai_chat.error_event(
        BackendUnavailable(NO_CONTINUATION)
    )


def test_a_takeover_tail_is_framed_as_the_api_frames_its_events() -> None:
    """Text that continues a broken answer goes out as the api's renderers send text: compact JSON,
    non-ASCII as UTF-8 (formats/sse.py), not as \\u escapes."""
    text = "h\u00e9llo \u2713"
    anthropic_tail = AnthropicParser("u").render_delta(text)
    assert text.encode() in anthropic_tail
    assert b"\\u" not in anthropic_tail
    assert anthropic_tail.endswith(
        encode_event(
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
            "content_block_delta",
        )
    )
    openai_tail = OpenAIParser("u", include_usage=False).render_delta(text)
    assert text.encode() in openai_tail
    assert b"\\u" not in openai_tail
    responses_tail = ResponsesParser("u").render_delta(text)
    assert text.encode() in responses_tail
    assert b"\\u" not in responses_tail
