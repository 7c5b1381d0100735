"""The conversation store of the Responses API: every response hotspare served or passed through,
kept in SQLite so that `previous_response_id` still resolves when the upstream that made it is gone.

A stored turn is what one `POST /v1/responses` added to a conversation: its `input` items (the
request's, without the earlier turns), its `output` items, the whole response object, who answered
(`backend`) and whether that was an upstream speaking the Responses format itself (`is_upstream`: the
upstream holds the conversation too, so a later request may keep referring to it by id). A
conversation is a chain of turns linked by `previous_id`; `history` walks it back.

Bounds: turns older than `max_age_s` and, beyond `max_bytes` of stored JSON, the oldest turns are
deleted on every insert. A conversation that reaches a deleted turn no longer resolves (NotFound),
exactly as an expired response at the provider.

Thread safety: one connection guarded by a lock; every method is blocking (call it from a thread in
async code) and may raise `sqlite3.Error` only for a broken database file.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hotspare.core.errors import NotFound

MAX_CHAIN_TURNS = 10_000
"""A guard against a cycle of ids in a damaged database: no real conversation is this long."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS turns (
    id          TEXT PRIMARY KEY,
    created_at  REAL NOT NULL,
    previous_id TEXT,
    backend     TEXT NOT NULL,
    is_upstream INTEGER NOT NULL,
    input       TEXT NOT NULL,
    response    TEXT NOT NULL,
    size_bytes  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS turns_by_age ON turns (created_at);
"""


@dataclass(frozen=True, slots=True)
class StoredTurn:
    """One response and the input items that produced it. `response["output"]` holds its items."""

    id: str
    created_at: float
    previous_id: str | None
    backend: str
    is_upstream: bool
    input: list[dict[str, Any]]
    response: dict[str, Any]

    @property
    def output(self) -> list[dict[str, Any]]:
        output = self.response.get("output")
        return [item for item in output if isinstance(item, dict)] if isinstance(output, list) else []


class ResponseStore:
    """SQLite at `path` (":memory:" for a private in-memory store). Close it with `close()`."""

    def __init__(
        self,
        path: Path | str,
        max_bytes: int,
        max_age_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if isinstance(path, Path):
            path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self._clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def put(self, turn: StoredTurn) -> None:
        """Keep `turn` (replacing one with the same id), then enforce the age and size bounds."""
        input_json = json.dumps(turn.input, separators=(",", ":"))
        response_json = json.dumps(turn.response, separators=(",", ":"))
        size = len(input_json) + len(response_json)
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO turns VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    turn.id,
                    turn.created_at,
                    turn.previous_id,
                    turn.backend,
                    int(turn.is_upstream),
                    input_json,
                    response_json,
                    size,
                ),
            )
            self._evict()

    def get(self, response_id: str) -> StoredTurn | None:
        """The turn stored under `response_id`, unless it is missing or older than `max_age_s`."""
        with self._lock:
            row = self._db.execute(
                "SELECT id, created_at, previous_id, backend, is_upstream, input, response FROM turns "
                "WHERE id = ? AND created_at >= ?",
                (response_id, self._clock() - self.max_age_s),
            ).fetchone()
        if row is None:
            return None
        return StoredTurn(
            row[0], row[1], row[2], row[3], bool(row[4]), json.loads(row[5]), json.loads(row[6])
        )

    def delete(self, response_id: str) -> bool:
        """Forget one turn; False if there was none."""
        with self._lock:
            cursor = self._db.execute("DELETE FROM turns WHERE id = ?", (response_id,))
        return cursor.rowcount > 0

    def chain(self, response_id: str) -> list[StoredTurn]:
        """The conversation ending with `response_id`, oldest turn first. Raises NotFound naming the
        first id that is not (or no longer) stored."""
        turns: list[StoredTurn] = []
        current: str | None = response_id
        while current is not None and len(turns) < MAX_CHAIN_TURNS:
            turn = self.get(current)
            if turn is None:
                raise NotFound(f"Previous response with id {current!r} not found.")
            turns.append(turn)
            current = turn.previous_id
        turns.reverse()
        return turns

    def history(self, response_id: str) -> list[dict[str, Any]]:
        """Every item of the conversation ending with `response_id`: each turn's input, then its
        output, oldest first (what the model sees before a request's own input). Raises NotFound."""
        items: list[dict[str, Any]] = []
        for turn in self.chain(response_id):
            items.extend(turn.input)
            items.extend(turn.output)
        return items

    def size_bytes(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT COALESCE(SUM(size_bytes), 0) FROM turns").fetchone()
        return int(row[0])

    def _evict(self) -> None:
        """Delete expired turns, then the oldest until the total fits `max_bytes`. Holds the lock."""
        self._db.execute("DELETE FROM turns WHERE created_at < ?", (self._clock() - self.max_age_s,))
        total = int(self._db.execute("SELECT COALESCE(SUM(size_bytes), 0) FROM turns").fetchone()[0])
        if total <= self.max_bytes:
            return
        excess = total - self.max_bytes
        doomed: list[str] = []
        for turn_id, size in self._db.execute("SELECT id, size_bytes FROM turns ORDER BY created_at, rowid"):
            if excess <= 0:
                break
            doomed.append(turn_id)
            excess -= size
        self._db.executemany("DELETE FROM turns WHERE id = ?", [(turn_id,) for turn_id in doomed])
