"""The conversation store: chains, bounds by size and age, with a fake clock and exact assertions."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from hotspare.api.responses.store import ResponseStore, StoredTurn
from hotspare.core.errors import NotFound


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def turn(
    turn_id: str, previous: str | None = None, at: float = 1000.0, text: str = "x", owner: str = ""
) -> StoredTurn:
    item = {"type": "message", "role": "user", "content": f"q-{turn_id}"}
    output = [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}]
    response = {"id": turn_id, "object": "response", "output": output}
    return StoredTurn(turn_id, at, previous, "local", False, [item], response, owner)


def store(clock: Clock, max_bytes: int = 1_000_000, max_age_s: float = 100.0) -> ResponseStore:
    return ResponseStore(":memory:", max_bytes, max_age_s, clock)


def test_history_walks_the_chain_oldest_first() -> None:
    s = store(Clock())
    s.put(turn("a"))
    s.put(turn("b", "a"))
    s.put(turn("c", "b"))
    assert [t.id for t in s.chain("c", "")] == ["a", "b", "c"]
    assert [item.get("content") for item in s.history("b", "")][::2] == ["q-a", "q-b"]
    assert len(s.history("c", "")) == 6


def test_a_missing_link_is_not_found_naming_it() -> None:
    s = store(Clock())
    s.put(turn("b", "a"))
    with pytest.raises(NotFound, match="'a'"):
        s.chain("b", "")
    assert s.delete("b", "") and not s.delete("b", "")
    assert s.get("b", "") is None


def test_turns_older_than_the_age_bound_are_gone() -> None:
    clock = Clock()
    s = store(clock, max_age_s=100.0)
    s.put(turn("old", at=clock.now))
    clock.now += 101
    assert s.get("old", "") is None
    s.put(turn("new", at=clock.now))  # an insert deletes expired rows
    assert s.size_bytes() == len_of(s, "new")


def test_the_oldest_turns_are_evicted_past_the_size_bound() -> None:
    clock = Clock()
    probe = store(clock)
    probe.put(turn("p", text="y" * 100))
    one = probe.size_bytes()
    s = ResponseStore(":memory:", 2 * one, 100.0, clock, max_bytes_per_owner=2 * one)
    for number, name in enumerate(["a", "b", "c"]):
        s.put(turn(name, at=clock.now + number, text="y" * 100))
    assert [name for name in "abc" if s.get(name, "") is not None] == ["b", "c"]
    assert s.size_bytes() <= 2 * one


def len_of(s: ResponseStore, turn_id: str) -> int:
    return s.size_bytes() if s.get(turn_id, "") is not None else -1


# --- tenants ---------------------------------------------------------------------------------------


def test_a_key_sees_only_its_own_turns() -> None:
    s = store(Clock())
    ada, bob = s.owner_id("sk-ada-key-0000001"), s.owner_id("sk-bob-key-0000002")
    assert ada != bob and "" not in (ada, bob) and s.owner_id(None) == ""
    s.put(turn("a1", owner=ada))
    s.put(turn("a2", "a1", owner=ada))
    assert s.get("a2", bob) is None and s.get("a2", "") is None
    assert s.is_foreign("a2", bob) and not s.is_foreign("a2", ada) and not s.is_foreign("nope", bob)
    with pytest.raises(NotFound, match="'a2'"):
        s.chain("a2", bob)
    assert not s.delete("a2", bob)
    s.put(turn("a1", text="overwritten", owner=bob))  # another key's id is never replaced
    assert [t.owner for t in s.chain("a2", ada)] == [ada, ada]
    assert s.get("a1", ada) is not None and s.get("a1", bob) is None
    assert s.delete("a2", ada)


def test_owner_ids_hold_no_key_and_persist_with_the_file(tmp_path: Path) -> None:
    path = tmp_path / "responses.sqlite3"
    first = ResponseStore(path, 1_000_000, 100.0, Clock())
    owner = first.owner_id("sk-ada-key-0000001")
    first.put(turn("a1", owner=owner))
    first.close()
    again = ResponseStore(path, 1_000_000, 100.0, Clock())
    assert again.owner_id("sk-ada-key-0000001") == owner
    assert again.get("a1", owner) is not None
    again.close()
    assert b"sk-ada-key" not in path.read_bytes()
    assert owner != hashlib.sha256(b"sk-ada-key-0000001").hexdigest()[:32]


def test_one_key_past_its_quota_evicts_only_its_own_turns() -> None:
    clock = Clock()
    probe = store(clock)
    probe.put(turn("p0", text="y" * 100))
    one = probe.size_bytes()
    s = store(clock, max_bytes=16 * one)  # a key's quota is an eighth: 2 turns
    assert s.max_bytes_per_owner == 2 * one
    s.put(turn("b1", at=clock.now, text="y" * 100, owner="bob"))
    for number in range(10):
        s.put(turn(f"a{number}", at=clock.now + 1 + number, text="y" * 100, owner="ada"))
    assert [t for t in (f"a{n}" for n in range(10)) if s.get(t, "ada")] == ["a8", "a9"]
    assert s.get("b1", "bob") is not None
    assert s.size_bytes("ada") == 2 * one and s.size_bytes() == 3 * one


def test_a_store_made_before_owners_gets_the_column(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE turns (id TEXT PRIMARY KEY, created_at REAL NOT NULL, previous_id TEXT, "
        "backend TEXT NOT NULL, is_upstream INTEGER NOT NULL, input TEXT NOT NULL, "
        "response TEXT NOT NULL, size_bytes INTEGER NOT NULL);"
        "INSERT INTO turns VALUES ('old', 1000.0, NULL, 'local', 0, '[]', '{}', 4);"
    )
    db.close()
    s = ResponseStore(path, 1_000_000, 100.0, Clock())
    assert s.get("old", "") is not None and s.is_foreign("old", s.owner_id("sk-any-key-0000001"))
    s.close()
