"""The tool-call parser: text and calls out of the model's output, however it is split into pieces."""

from __future__ import annotations

import itertools

import pytest

from hotspare.agents.calls import ToolCallParser
from hotspare.core.types import StreamEvent, TextDelta, ToolCallDelta, ToolCallStart

TWO_CALLS = (
    'Let me look.<tool_call>\n{"name": "get_weather", '
    '"arguments": {"city": "Pa}ris", "days": [1, {"a": 2}]}}\n'
    '</tool_call>\n<tool_call>{"name":"now","arguments":{}}</tool_call>\n'
)


def parse(text: str, piece_chars: int) -> list[StreamEvent]:
    ids = itertools.count()
    parser = ToolCallParser(lambda: f"call_{next(ids)}")
    events: list[StreamEvent] = []
    for at in range(0, len(text), piece_chars):
        events += parser.push(text[at : at + piece_chars])
    return events + parser.close()


def summary(events: list[StreamEvent]) -> tuple[str, list[tuple[str, str, str]]]:
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    calls = [(e.id, e.name, "") for e in events if isinstance(e, ToolCallStart)]
    for event in events:
        if isinstance(event, ToolCallDelta):
            call_id, name, arguments = calls[event.index]
            calls[event.index] = (call_id, name, arguments + event.arguments)
    return text, calls


@pytest.mark.parametrize("piece_chars", [1, 2, 5, 13, 1000])
def test_text_then_two_calls_in_any_pieces(piece_chars: int) -> None:
    assert summary(parse(TWO_CALLS, piece_chars)) == (
        "Let me look.",
        [
            ("call_0", "get_weather", '{"city": "Pa}ris", "days": [1, {"a": 2}]}'),
            ("call_1", "now", "{}"),
        ],
    )


def test_a_start_is_sent_before_its_arguments() -> None:
    events = parse(TWO_CALLS, 3)
    kinds = [type(e).__name__ for e in events if not isinstance(e, TextDelta)]
    assert kinds[0] == "ToolCallStart" and kinds.index("ToolCallStart", 1) > kinds.index("ToolCallDelta")


def test_plain_text_passes_through_and_a_lookalike_is_given_back() -> None:
    assert summary(parse("a <tool_cat>b <b>", 2)) == ("a <tool_cat>b <b>", [])
    assert summary(parse("x<tool_call>not json", 4)) == ("x<tool_call>not json", [])


def test_a_call_cut_short_keeps_what_was_generated() -> None:
    assert summary(parse('<tool_call>{"name": "f", "arguments": {"q": "ab', 4)) == (
        "",
        [("call_0", "f", '{"q": "ab')],
    )


def test_escaped_quotes_in_arguments_do_not_end_them() -> None:
    text = '<tool_call>{"name": "f", "arguments": {"q": "say \\"}\\" now"}}</tool_call>'
    assert summary(parse(text, 1))[1] == [("call_0", "f", '{"q": "say \\"}\\" now"}')]
