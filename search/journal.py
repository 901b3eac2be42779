"""The durable journal: the source of truth of the history. The vector index is derived from it and can be
rebuilt from it (`visionrag reindex`), so an interaction is acknowledged only once its row is committed here.

SQLite in WAL mode with `synchronous=FULL`: a committed transaction is fsynced to the WAL before `COMMIT`
returns, so it survives kill -9 and power loss. The stored image copy lives in the same row, written in
the same transaction, so a row never exists without its image. Indexing state (indexed_at, attempts,
last_error) is kept per row so the indexer finds its backlog with one indexed query, and index deletions
that could not reach the store wait in `pending_deletes` until they can.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from visionrag.search.interaction import Interaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS interactions (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT NOT NULL UNIQUE,
    created_at     TEXT NOT NULL,
    created_ts     REAL NOT NULL,
    image_url      TEXT NOT NULL,
    query          TEXT NOT NULL,
    answer         TEXT NOT NULL,
    model          TEXT NOT NULL,
    user           TEXT,
    tags           TEXT NOT NULL,
    image_sha256   TEXT NOT NULL,
    image          BLOB NOT NULL,
    image_type     TEXT NOT NULL,
    indexed_at     REAL,
    attempts       INTEGER NOT NULL DEFAULT 0,
    last_error     TEXT,
    context        TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS interactions_newest ON interactions (created_ts DESC, seq DESC);
CREATE INDEX IF NOT EXISTS interactions_user ON interactions (user, created_ts DESC);
CREATE INDEX IF NOT EXISTS interactions_backlog ON interactions (seq) WHERE indexed_at IS NULL;
CREATE INDEX IF NOT EXISTS interactions_image ON interactions (image_sha256);
CREATE TABLE IF NOT EXISTS pending_deletes (
    id          TEXT PRIMARY KEY,
    deleted_at  REAL NOT NULL
);
"""

# Columns added after the first release, with their definitions: a journal written by an older version
# gets them by ALTER TABLE when it is opened (SQLite adds a column with a constant default in place).
_ADDED_COLUMNS = {"context": "TEXT NOT NULL DEFAULT '[]'"}

# Every column but the image: listings and searches never need the bytes.
_COLUMNS = "id, created_at, image_url, query, answer, model, user, tags, image_sha256, context"


@dataclass(frozen=True)
class BacklogEntry:
    """A row waiting to be indexed, with its stored image copy."""

    interaction: Interaction
    image: bytes
    attempts: int
    media_type: str = "image/png"


def _to_interaction(row: Sequence) -> Interaction:
    return Interaction(
        id=row[0],
        created_at=datetime.fromisoformat(row[1]),
        image_url=row[2],
        query=row[3],
        answer=row[4],
        model=row[5],
        user=row[6],
        tags=tuple(json.loads(row[7])),
        image_sha256=row[8],
        context=tuple(json.loads(row[9])),
    )


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a journal written by an older version up to this schema, in place (no row is rewritten)."""
    present = {row[1] for row in conn.execute("PRAGMA table_info(interactions)")}
    if not present:
        return  # a new journal: _SCHEMA creates the table with every column
    for name, definition in _ADDED_COLUMNS.items():
        if name not in present:
            conn.execute(f"ALTER TABLE interactions ADD COLUMN {name} {definition}")


class Journal:
    """Thread-safe: each thread gets its own connection (SQLite serialises writers; WAL lets readers run
    beside a writer)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._closed = False
        conn = self._conn()
        conn.execute("PRAGMA journal_mode=WAL")
        _migrate(conn)
        conn.executescript(_SCHEMA)

    # -- connections -------------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        if self._closed:
            raise RuntimeError("journal is closed")
        # isolation_level=None: autocommit, transactions are explicit (BEGIN IMMEDIATE ... COMMIT).
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute("PRAGMA foreign_keys=ON")
        self._local.conn = conn
        with self._lock:
            self._connections.append(conn)
        return conn

    def _write(self, sql: str, params: Iterable = ()) -> sqlite3.Cursor:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            cur = conn.execute(sql, tuple(params))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return cur

    def close(self) -> None:
        """Close every thread's connection (a WAL checkpoint happens on the last close)."""
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for conn in connections:
            with contextlib.suppress(sqlite3.ProgrammingError):  # closed from its own thread already
                conn.close()
        self._local = threading.local()

    # -- write path -------------------------------------------------------------------------------
    def add(self, interaction: Interaction, image: bytes, media_type: str) -> bool:
        """Commit the interaction and its image copy durably; False if that id is already recorded
        (recording is idempotent, a retried write does not make a second row)."""
        cur = self._write(
            "INSERT OR IGNORE INTO interactions (id, created_at, created_ts, image_url, query, answer, model,"
            " user, tags, image_sha256, image, image_type, context) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                interaction.id,
                interaction.created_at.isoformat(),
                interaction.timestamp,
                interaction.image_url,
                interaction.query,
                interaction.answer,
                interaction.model,
                interaction.user,
                json.dumps(list(interaction.tags)),
                interaction.image_sha256,
                sqlite3.Binary(image),
                media_type,
                json.dumps(list(interaction.context)),
            ),
        )
        return cur.rowcount == 1

    def delete(self, id: str) -> bool:
        """Remove the row and, in the same transaction, remember that its point must leave the index."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            cur = conn.execute("DELETE FROM interactions WHERE id = ?", (id,))
            found = cur.rowcount == 1
            if found:
                conn.execute(
                    "INSERT OR REPLACE INTO pending_deletes (id, deleted_at) VALUES (?, ?)", (id, time.time())
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return found

    # -- read path --------------------------------------------------------------------------------
    def get(self, id: str) -> Interaction | None:
        row = self._conn().execute(f"SELECT {_COLUMNS} FROM interactions WHERE id = ?", (id,)).fetchone()
        return _to_interaction(row) if row else None

    def get_many(self, ids: Sequence[str]) -> dict[str, Interaction]:
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = self._conn().execute(f"SELECT {_COLUMNS} FROM interactions WHERE id IN ({marks})", tuple(ids))
        return {row[0]: _to_interaction(row) for row in rows}

    def image(self, id: str) -> tuple[bytes, str] | None:
        row = (
            self._conn().execute("SELECT image, image_type FROM interactions WHERE id = ?", (id,)).fetchone()
        )
        return (bytes(row[0]), row[1]) if row else None

    def list(self, limit: int, offset: int = 0, user: str | None = None) -> list[Interaction]:
        """Newest first."""
        where, params = ("WHERE user = ?", [user]) if user is not None else ("", [])
        rows = self._conn().execute(
            f"SELECT {_COLUMNS} FROM interactions {where} ORDER BY created_ts DESC, seq DESC LIMIT ? OFFSET ?",
            (*params, limit, offset),
        )
        return [_to_interaction(row) for row in rows]

    def unindexed(self, limit: int, user: str | None = None) -> list[Interaction]:
        """Newest first, rows not in the index yet (a shared store's listing adds them to its own)."""
        where = "WHERE indexed_at IS NULL" + (" AND user = ?" if user is not None else "")
        rows = self._conn().execute(
            f"SELECT {_COLUMNS} FROM interactions {where} ORDER BY created_ts DESC, seq DESC LIMIT ?",
            (*([user] if user is not None else []), limit),
        )
        return [_to_interaction(row) for row in rows]

    def is_indexed(self, id: str) -> bool | None:
        """None when there is no such row."""
        row = self._conn().execute("SELECT indexed_at FROM interactions WHERE id = ?", (id,)).fetchone()
        return None if row is None else row[0] is not None

    def deleting(self, ids: Sequence[str]) -> set[str]:
        """Which of these ids were deleted here and still wait to leave the index."""
        if not ids:
            return set()
        marks = ",".join("?" * len(ids))
        rows = self._conn().execute(f"SELECT id FROM pending_deletes WHERE id IN ({marks})", tuple(ids))
        return {row[0] for row in rows}

    def same_image(self, image_sha256: str, limit: int, user: str | None = None) -> list[Interaction]:
        """Rows whose image has exactly these bytes (same sha256), newest first."""
        where, params = ("AND user = ?", [user]) if user is not None else ("", [])
        rows = self._conn().execute(
            f"SELECT {_COLUMNS} FROM interactions WHERE image_sha256 = ? {where}"
            " ORDER BY created_ts DESC, seq DESC LIMIT ?",
            (image_sha256, *params, limit),
        )
        return [_to_interaction(row) for row in rows]

    def count(self) -> int:
        return self._conn().execute("SELECT count(*) FROM interactions").fetchone()[0]

    def ids(self) -> list[str]:
        return [row[0] for row in self._conn().execute("SELECT id FROM interactions ORDER BY seq")]

    # -- indexing state ---------------------------------------------------------------------------
    def backlog(self, limit: int, max_attempts: int) -> list[BacklogEntry]:
        """Oldest unindexed rows first, skipping rows that failed `max_attempts` times (poison rows)."""
        rows = self._conn().execute(
            f"SELECT {_COLUMNS}, image, attempts, image_type FROM interactions"
            " WHERE indexed_at IS NULL AND attempts < ? ORDER BY seq LIMIT ?",
            (max_attempts, limit),
        )
        return [BacklogEntry(_to_interaction(row), bytes(row[10]), row[11], row[12]) for row in rows]

    def backlog_stats(self, max_attempts: int) -> tuple[int, float | None, int]:
        """(rows waiting, created_ts of the oldest waiting row, rows given up on)."""
        waiting, oldest = (
            self._conn()
            .execute(
                "SELECT count(*), min(created_ts) FROM interactions WHERE indexed_at IS NULL AND attempts < ?",
                (max_attempts,),
            )
            .fetchone()
        )
        failed = (
            self._conn()
            .execute(
                "SELECT count(*) FROM interactions WHERE indexed_at IS NULL AND attempts >= ?",
                (max_attempts,),
            )
            .fetchone()[0]
        )
        return waiting, oldest, failed

    def mark_indexed(self, ids: Sequence[str], at: float | None = None) -> set[str]:
        """Mark rows indexed; returns the ids that still exist (a row deleted meanwhile is not marked,
        and its point must be removed again by the caller)."""
        if not ids:
            return set()
        at = time.time() if at is None else at
        conn = self._conn()
        marks = ",".join("?" * len(ids))
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                f"UPDATE interactions SET indexed_at = ?, attempts = 0, last_error = NULL WHERE id IN ({marks})",
                (at, *ids),
            )
            present = {
                r[0] for r in conn.execute(f"SELECT id FROM interactions WHERE id IN ({marks})", tuple(ids))
            }
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return present

    def mark_failed(self, ids: Sequence[str], error: str) -> None:
        """Count a failed attempt for rows whose own content failed to embed (not for store outages)."""
        if not ids:
            return
        marks = ",".join("?" * len(ids))
        self._write(
            f"UPDATE interactions SET attempts = attempts + 1, last_error = ? WHERE id IN ({marks})",
            (error[:1000], *ids),
        )

    def mark_unindexed(self, ids: Sequence[str]) -> None:
        """These rows' points are missing from the store (lost in a crash): index them again."""
        if ids:
            marks = ",".join("?" * len(ids))
            self._write(f"UPDATE interactions SET indexed_at = NULL WHERE id IN ({marks})", tuple(ids))

    def reset_index_state(self) -> None:
        """Everything becomes backlog again (reindex, or a new collection)."""
        self._write("UPDATE interactions SET indexed_at = NULL, attempts = 0, last_error = NULL")

    def pending_deletes(self, limit: int = 256) -> list[str]:
        return [
            row[0]
            for row in self._conn().execute(
                "SELECT id FROM pending_deletes ORDER BY deleted_at LIMIT ?", (limit,)
            )
        ]

    def clear_pending_deletes(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        marks = ",".join("?" * len(ids))
        self._write(f"DELETE FROM pending_deletes WHERE id IN ({marks})", tuple(ids))
