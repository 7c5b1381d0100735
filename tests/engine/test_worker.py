"""The engine loop's message building (engine/worker.py): pure, no model."""

from __future__ import annotations

from hotspare.core.types import FinishReason
from hotspare.engine.protocol import Delta, Done, Failed, Reply
from hotspare.engine.worker import coalesce


def _done(request_id: int) -> Done:
    return Done(request_id, FinishReason.END_TURN, 10, 3, 0, None)


def test_one_requests_deltas_in_one_message_become_one() -> None:
    assert coalesce([Delta(1, "Hel"), Delta(1, "lo"), Delta(1, " you")]) == [Delta(1, "Hello you")]


def test_requests_are_joined_each_on_its_own() -> None:
    events = [Delta(1, "a"), Delta(2, "x"), Delta(1, "b"), Delta(2, "y"), Delta(3, "z")]
    assert coalesce(events) == [Delta(1, "ab"), Delta(2, "xy"), Delta(3, "z")]


def test_a_delta_is_never_moved_past_its_requests_end() -> None:
    events = [Delta(1, "a"), Delta(1, "b"), _done(1), Delta(2, "x"), Delta(2, "y")]
    assert coalesce(events) == [Delta(1, "ab"), _done(1), Delta(2, "xy")]


def test_other_events_end_a_run_of_deltas_of_their_request_only() -> None:
    events = [
        Delta(1, "a"),
        Reply(2, 7),
        Delta(1, "b"),
        Failed(3, "Overloaded", ("busy", 1.0)),
        Delta(1, "c"),
    ]
    assert coalesce(events) == [Delta(1, "abc"), Reply(2, 7), Failed(3, "Overloaded", ("busy", 1.0))]


def test_nothing_to_join() -> None:
    assert coalesce([]) == []
    assert coalesce([_done(4)]) == [_done(4)]
