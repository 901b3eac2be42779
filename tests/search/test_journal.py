"""The journal: durable rows with their image, newest-first listing, indexing state, deletions, and
survival of kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.search.helpers import interaction, wait_for
from visionrag.search.journal import Journal

ROOT = Path(__file__).resolve().parents[2]


def test_add_get_image_and_idempotent(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db")
    item = interaction("the answer", user="ann", tags=("er", "db"))
    assert journal.add(item, b"png-bytes", "image/png")
    assert not journal.add(item, b"other", "image/png")  # same id: kept once
    got = journal.get(item.id)
    assert got == item
    assert got.created_at.tzinfo is not None
    assert journal.image(item.id) == (b"png-bytes", "image/png")
    assert journal.count() == 1
    assert journal.get("00000000-0000-4000-8000-000000000000") is None
    journal.close()


def test_wal_and_full_sync(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db")
    conn = journal._conn()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    journal.close()


def test_list_newest_first_pages_and_user(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db")
    base = datetime(2025, 1, 1, tzinfo=UTC)
    items = [
        interaction(f"answer {i}", user="ann" if i % 2 else "bob", created_at=base + timedelta(minutes=i))
        for i in range(7)
    ]
    for item in reversed(items):  # insertion order must not matter
        journal.add(item, b"x", "image/png")
    newest = [i.id for i in reversed(items)]
    assert [i.id for i in journal.list(3)] == newest[:3]
    assert [i.id for i in journal.list(3, offset=3)] == newest[3:6]
    assert [i.id for i in journal.list(10, offset=6)] == newest[6:]
    assert [i.user for i in journal.list(10, user="ann")] == ["ann"] * 3
    journal.close()


def test_backlog_marks_failures_and_deletions(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db")
    items = [interaction(f"a{i}") for i in range(4)]
    for item in items:
        journal.add(item, b"x", "image/png")
    assert [e.interaction.id for e in journal.backlog(10, max_attempts=3)] == [i.id for i in items]
    assert journal.mark_indexed([items[0].id]) == {items[0].id}
    for _ in range(3):
        journal.mark_failed([items[1].id], "bad image")
    waiting, oldest, failed = journal.backlog_stats(max_attempts=3)
    assert (waiting, failed) == (2, 1)
    assert oldest == items[2].timestamp
    assert [e.interaction.id for e in journal.backlog(10, max_attempts=3)] == [items[2].id, items[3].id]

    assert journal.delete(items[2].id)
    assert not journal.delete(items[2].id)
    assert journal.pending_deletes() == [items[2].id]
    assert journal.mark_indexed([items[2].id, items[3].id]) == {items[3].id}  # deleted meanwhile
    journal.clear_pending_deletes([items[2].id])
    assert journal.pending_deletes() == []

    journal.reset_index_state()
    assert journal.backlog_stats(max_attempts=3)[0] == 3
    journal.close()


def test_concurrent_adds_each_land_once(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db")
    items = [interaction(f"answer {i}") for i in range(120)]
    errors: list[BaseException] = []

    def writer(part: list) -> None:
        try:
            for item in part:
                journal.add(item, b"x", "image/png")
                journal.add(item, b"x", "image/png")  # a retry must not duplicate
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(items[k::6],)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(journal.ids()) == sorted(i.id for i in items)
    journal.close()


WRITER = """
import sys
from pathlib import Path
from visionrag.search.journal import Journal
from tests.search.helpers import interaction
journal = Journal(Path(sys.argv[1]))
n = 0
while True:
    item = interaction(f"answer {n}")
    journal.add(item, b"img" * 1000, "image/png")
    print(item.id, flush=True)  # acknowledged only after the commit returned
    n += 1
"""


def test_acknowledged_rows_survive_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    acked: list[str] = []
    assert proc.stdout is not None
    wait_for(lambda: acked.append(proc.stdout.readline().strip()) or len(acked) >= 50, what="50 acks")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    acked += [line.strip() for line in proc.stdout.read().splitlines() if line.strip()]
    journal = Journal(path)
    stored = set(journal.ids())
    assert set(acked) <= stored
    assert len(stored) - len(acked) <= 1  # at most the one committed but not yet printed
    journal.close()


# The interactions table as the first release wrote it (before the `context` column).
_OLD_SCHEMA = """
CREATE TABLE interactions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, created_at TEXT NOT NULL,
    created_ts REAL NOT NULL, image_url TEXT NOT NULL, query TEXT NOT NULL, answer TEXT NOT NULL,
    model TEXT NOT NULL, user TEXT, tags TEXT NOT NULL, image_sha256 TEXT NOT NULL, image BLOB NOT NULL,
    image_type TEXT NOT NULL, indexed_at REAL, attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT
);
CREATE TABLE pending_deletes (id TEXT PRIMARY KEY, deleted_at REAL NOT NULL);
"""


def test_an_older_journal_gains_the_context_column_in_place(tmp_path: Path) -> None:
    import dataclasses
    import sqlite3

    path = tmp_path / "journal.db"
    old = interaction("written by the first release")
    conn = sqlite3.connect(path)
    conn.executescript(_OLD_SCHEMA)
    conn.execute(
        "INSERT INTO interactions (id, created_at, created_ts, image_url, query, answer, model, user, tags,"
        " image_sha256, image, image_type) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            old.id,
            old.created_at.isoformat(),
            old.timestamp,
            old.image_url,
            old.query,
            old.answer,
            old.model,
            old.user,
            "[]",
            old.image_sha256,
            b"png",
            "image/png",
        ),
    )
    conn.commit()
    conn.close()

    journal = Journal(path)  # migrates
    got = journal.get(old.id)
    assert got is not None and got.answer == old.answer and got.context == ()
    assert [e.interaction.id for e in journal.backlog(10, 5)] == [old.id]  # the old row is still backlog
    new = dataclasses.replace(interaction("built on the old one"), context=(old.id,))
    assert journal.add(new, b"png", "image/png")
    assert journal.get(new.id).context == (old.id,)
    assert [i.id for i in journal.same_image(old.image_sha256, 10)] == [old.id]
    journal.close()
    journal = Journal(path)  # opening a migrated journal again changes nothing
    columns = [row[1] for row in journal._conn().execute("PRAGMA table_info(interactions)")]
    assert columns.count("context") == 1
    assert journal.get(new.id).context == (old.id,)
    journal.close()
