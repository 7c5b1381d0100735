"""The conversation store of the Responses API: every response hotspare served or passed through,
kept in SQLite so that `previous_response_id` still resolves when the upstream that made it is gone.

A stored turn is what one `POST /v1/responses` added to a conversation: its `input` items (the
request's, without the earlier turns), its `output` items, the whole response object, who answered
(`backend`) and whether that was an upstream speaking the Responses format itself (`is_upstream`: the
upstream holds the conversation too, so a later request may keep referring to it by id). A
conversation is a chain of turns linked by `previous_id`; `history` walks it back.

Tenants: every turn is kept with its `owner`, an id of the key the client presented (`owner_id`: an
HMAC-SHA256 of the key under a random salt kept in the database, so the file holds no key and no
plain hash of one; "" for a client that sent no key). Every read, delete and chain walk takes the
owner and sees only that owner's turns: a key that learns another's response id can neither read,
list, delete nor continue it (`is_foreign` tells the caller such an id exists, so that it is not
then asked of an upstream with the operator's key). Turns stored before owners existed belong to "".

Bounds: turns older than `max_age_s`, then beyond `max_bytes_per_owner` of one owner's stored JSON
that owner's oldest turns, then beyond `max_bytes` in all the oldest turns, are deleted on every
insert: one key cannot evict everyone's history. A conversation that reaches a deleted turn no
longer resolves (NotFound), exactly as an expired response at the provider.

Files: the database is created 0600 in a 0700 directory (conversations are private); SQLite gives its
-wal and -shm files the database file's mode.

Thread safety: one connection guarded by a lock; every method is blocking (call it from a thread in
async code) and may raise `sqlite3.Error` only for a broken database file.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hotspare.core.errors import NotFound
from hotspare.home import PRIVATE_FILE_MODE, private_dir

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
    size_bytes  INTEGER NOT NULL,
    owner       TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS turns_by_age ON turns (created_at);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
"""
_COLUMNS = "id, created_at, previous_id, backend, is_upstream, input, response, owner"


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
    owner: str = ""  # ResponseStore.owner_id of the client's key

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
        max_bytes_per_owner: int | None = None,
    ) -> None:
        """`max_bytes_per_owner` defaults to an eighth of `max_bytes`."""
        if isinstance(path, Path):
            _make_private(path)
        self.max_bytes = max_bytes
        self.max_bytes_per_owner = max_bytes_per_owner or max(1, max_bytes // 8)
        self.max_age_s = max_age_s
        self._clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._add_owner_column()
        self._salt = self._owner_salt()

    def _add_owner_column(self) -> None:
        """A database made before turns had owners gets the column (its turns belong to "")."""
        columns = [row[1] for row in self._db.execute("PRAGMA table_info(turns)")]
        if "owner" not in columns:
            self._db.execute("ALTER TABLE turns ADD COLUMN owner TEXT NOT NULL DEFAULT ''")
        self._db.execute("CREATE INDEX IF NOT EXISTS turns_by_owner ON turns (owner, created_at)")

    def _owner_salt(self) -> bytes:
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('owner_salt', ?)", (secrets.token_bytes(32),))
        row = self._db.execute("SELECT value FROM meta WHERE name = 'owner_salt'").fetchone()
        return bytes(row[0])

    def owner_id(self, key: str | None) -> str:
        """The owner a client presenting `key` (None: no key) stores and reads as."""
        if not key:
            return ""
        return hmac.new(self._salt, key.encode(), hashlib.sha256).hexdigest()[:32]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def put(self, turn: StoredTurn) -> None:
        """Keep `turn` (replacing its owner's turn with the same id, never another owner's), then
        enforce the age and size bounds."""
        input_json = json.dumps(turn.input, separators=(",", ":"))
        response_json = json.dumps(turn.response, separators=(",", ":"))
        size = len(input_json) + len(response_json)
        with self._lock:
            self._db.execute("DELETE FROM turns WHERE id = ? AND owner = ?", (turn.id, turn.owner))
            self._db.execute(
                "INSERT OR IGNORE INTO turns VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    turn.id,
                    turn.created_at,
                    turn.previous_id,
                    turn.backend,
                    int(turn.is_upstream),
                    input_json,
                    response_json,
                    size,
                    turn.owner,
                ),
            )
            self._evict(turn.owner)

    def get(self, response_id: str, owner: str) -> StoredTurn | None:
        """`owner`'s turn stored under `response_id`, unless it is missing or older than `max_age_s`."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM turns WHERE id = ? AND owner = ? AND created_at >= ?",
                (response_id, owner, self._clock() - self.max_age_s),
            ).fetchone()
        if row is None:
            return None
        return StoredTurn(
            row[0], row[1], row[2], row[3], bool(row[4]), json.loads(row[5]), json.loads(row[6]), row[7]
        )

    def is_foreign(self, response_id: str, owner: str) -> bool:
        """Whether `response_id` is stored (and not expired) under an owner other than `owner`."""
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM turns WHERE id = ? AND owner != ? AND created_at >= ?",
                (response_id, owner, self._clock() - self.max_age_s),
            ).fetchone()
        return row is not None

    def delete(self, response_id: str, owner: str) -> bool:
        """Forget one of `owner`'s turns; False if there was none."""
        with self._lock:
            cursor = self._db.execute("DELETE FROM turns WHERE id = ? AND owner = ?", (response_id, owner))
        return cursor.rowcount > 0

    def chain(self, response_id: str, owner: str) -> list[StoredTurn]:
        """`owner`'s conversation ending with `response_id`, oldest turn first. Raises NotFound naming
        the first id that is not (or no longer) stored for `owner`."""
        turns: list[StoredTurn] = []
        current: str | None = response_id
        while current is not None and len(turns) < MAX_CHAIN_TURNS:
            turn = self.get(current, owner)
            if turn is None:
                raise NotFound(f"Previous response with id {current!r} not found.")
            turns.append(turn)
            current = turn.previous_id
        turns.reverse()
        return turns

    def history(self, response_id: str, owner: str) -> list[dict[str, Any]]:
        """Every item of `owner`'s conversation ending with `response_id`: each turn's input, then its
        output, oldest first (what the model sees before a request's own input). Raises NotFound."""
        items: list[dict[str, Any]] = []
        for turn in self.chain(response_id, owner):
            items.extend(turn.input)
            items.extend(turn.output)
        return items

    def size_bytes(self, owner: str | None = None) -> int:
        """Bytes of stored JSON: `owner`'s, or everyone's (None)."""
        with self._lock:
            return self._size(owner)

    def _size(self, owner: str | None) -> int:
        where, args = ("WHERE owner = ?", (owner,)) if owner is not None else ("", ())
        row = self._db.execute(f"SELECT COALESCE(SUM(size_bytes), 0) FROM turns {where}", args).fetchone()
        return int(row[0])

    def _evict(self, owner: str) -> None:
        """Delete expired turns, then `owner`'s oldest past its quota, then the oldest of all past
        `max_bytes`. Holds the lock."""
        self._db.execute("DELETE FROM turns WHERE created_at < ?", (self._clock() - self.max_age_s,))
        self._evict_oldest(self._size(owner) - self.max_bytes_per_owner, owner)
        self._evict_oldest(self._size(None) - self.max_bytes, None)

    def _evict_oldest(self, excess: int, owner: str | None) -> None:
        """Delete the oldest turns (of `owner`, or of all) until `excess` bytes are gone."""
        if excess <= 0:
            return
        where, args = ("WHERE owner = ?", (owner,)) if owner is not None else ("", ())
        doomed: list[str] = []
        query = f"SELECT id, size_bytes FROM turns {where} ORDER BY created_at, rowid"
        for turn_id, size in self._db.execute(query, args):
            if excess <= 0:
                break
            doomed.append(turn_id)
            excess -= size
        self._db.executemany("DELETE FROM turns WHERE id = ?", [(turn_id,) for turn_id in doomed])


def _make_private(path: Path) -> None:
    """Create the database file 0600 (its directory 0700) before SQLite opens it, and tighten the
    files of a store made before."""
    private_dir(path.parent)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE_MODE))
    for file in (path, path.with_name(f"{path.name}-wal"), path.with_name(f"{path.name}-shm")):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(file, PRIVATE_FILE_MODE)
