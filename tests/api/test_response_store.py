"""The conversation store: chains, bounds by size and age, with a fake clock and exact assertions."""

from __future__ import annotations

import pytest

from hotspare.api.response_store import ResponseStore, StoredTurn
from hotspare.core.errors import NotFound


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def turn(turn_id: str, previous: str | None = None, at: float = 1000.0, text: str = "x") -> StoredTurn:
    item = {"type": "message", "role": "user", "content": f"q-{turn_id}"}
    output = [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}]
    response = {"id": turn_id, "object": "response", "output": output}
    return StoredTurn(turn_id, at, previous, "local", False, [item], response)


def store(clock: Clock, max_bytes: int = 1_000_000, max_age_s: float = 100.0) -> ResponseStore:
    return ResponseStore(":memory:", max_bytes, max_age_s, clock)


def test_history_walks_the_chain_oldest_first() -> None:
    s = store(Clock())
    s.put(turn("a"))
    s.put(turn("b", "a"))
    s.put(turn("c", "b"))
    assert [t.id for t in s.chain("c")] == ["a", "b", "c"]
    assert [item.get("content") for item in s.history("b")][::2] == ["q-a", "q-b"]
    assert len(s.history("c")) == 6


def test_a_missing_link_is_not_found_naming_it() -> None:
    s = store(Clock())
    s.put(turn("b", "a"))
    with pytest.raises(NotFound, match="'a'"):
        s.chain("b")
    assert s.delete("b") and not s.delete("b")
    assert s.get("b") is None


def test_turns_older_than_the_age_bound_are_gone() -> None:
    clock = Clock()
    s = store(clock, max_age_s=100.0)
    s.put(turn("old", at=clock.now))
    clock.now += 101
    assert s.get("old") is None
    s.put(turn("new", at=clock.now))  # an insert deletes expired rows
    assert s.size_bytes() == len_of(s, "new")


def test_the_oldest_turns_are_evicted_past_the_size_bound() -> None:
    clock = Clock()
    probe = store(clock)
    probe.put(turn("p", text="y" * 100))
    one = probe.size_bytes()
    s = store(clock, max_bytes=2 * one)
    for number, name in enumerate(["a", "b", "c"]):
        s.put(turn(name, at=clock.now + number, text="y" * 100))
    assert [name for name in "abc" if s.get(name) is not None] == ["b", "c"]
    assert s.size_bytes() <= 2 * one


def len_of(s: ResponseStore, turn_id: str) -> int:
    return s.size_bytes() if s.get(turn_id) is not None else -1
