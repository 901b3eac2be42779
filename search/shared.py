"""Reads of a history whose collection many replicas share (a `SharedStore`: QDRANT_URL).

There the collection is the truth: every replica reads every other replica's interactions from it, and a
replica restarted on an empty data dir sees all of them. The local journal is each replica's outbox: it
makes an answer durable before it is acknowledged and indexes it when the store is reachable. So reads
add what this replica's journal holds but has not indexed yet (read-your-writes), hide what it deleted
while the store was down (`pending_deletes`), and fall back to the journal for its own rows when the store
cannot be reached (get, image, list; search needs the store and answers 503). A journal row that was indexed but has no point any more was deleted by another
replica (or dropped by `reindex --recreate`), and is not shown.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import uuid
from pathlib import Path
from typing import Any

from visionrag.search.errors import NotFound, StoreUnavailable
from visionrag.search.interaction import Interaction
from visionrag.search.journal import Journal
from visionrag.search.store import (
    CREATED_TS,
    IMAGE_COPY,
    IMAGE_TYPE,
    Filters,
    Probe,
    SharedStore,
    check_newest_offset,
)

log = logging.getLogger(__name__)

WRITER_FILE = "writer_id"
RESULT_FIELDS = ("id", "created_at", "image_url", "query", "answer", "model", "user", "tags", "image_sha256")


def writer_id(data_dir: Path) -> str:
    """This replica's name in the points it writes: a uuid kept in the data dir, made on first use (so a
    replica keeps its name across restarts and a fresh volume is a new writer)."""
    path = Path(data_dir) / WRITER_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError), path.open("x") as f:
        f.write(str(uuid.uuid4()) + "\n")
    return path.read_text().strip()


def result_of(payload: dict[str, Any]) -> dict[str, Any]:
    """A point's payload in the contract's shape. `image` links to the stored copy when the point has
    one; points written by earlier versions have none and give null."""
    out = {key: payload.get(key) for key in RESULT_FIELDS}
    out["tags"] = list(payload.get("tags") or [])
    out["context"] = list(payload.get("context") or [])  # points written before answers had context: []
    out["image"] = f"/history/{out['id']}/image" if payload.get(IMAGE_TYPE) else None
    return out


class SharedReads:
    """get / image / list / search / delete over the shared collection, with the journal as described above."""

    def __init__(self, journal: Journal, store: SharedStore) -> None:
        self.journal = journal
        self.store = store

    def _own(self, id: str, point_exists: bool | None) -> Interaction | None:
        """This replica's journal row, when it is the answer: not indexed yet, or the store is down (None)."""
        indexed = self.journal.is_indexed(id)
        if indexed is None or (indexed and point_exists is False):
            return None
        return self.journal.get(id)

    def get(self, id: str) -> dict[str, Any]:
        if self.journal.deleting([id]):
            raise NotFound(f"no interaction with id {id!r}")
        try:
            found = self.store.payloads([id]).get(id)
        except StoreUnavailable:
            if (row := self._own(id, None)) is not None:
                return row.to_dict()
            raise
        if found is not None:
            return result_of(found)
        if (row := self._own(id, False)) is not None:
            return row.to_dict()
        raise NotFound(f"no interaction with id {id!r}")

    def image(self, id: str) -> tuple[bytes, str]:
        if self.journal.deleting([id]):
            raise NotFound(f"no interaction with id {id!r}")
        try:
            found = self.store.payloads([id], image=True).get(id)
        except StoreUnavailable:
            if self._own(id, None) is not None and (local := self.journal.image(id)) is not None:
                return local
            raise
        if found is not None and found.get(IMAGE_COPY):
            try:
                return base64.b64decode(found[IMAGE_COPY], validate=True), str(found.get(IMAGE_TYPE))
            except (binascii.Error, ValueError):
                log.warning("point %s carries an unreadable image copy", id)
        # an own row not indexed yet, or an old point without a copy whose row this replica journals
        if self._own(id, found is not None) is not None and (local := self.journal.image(id)) is not None:
            return local
        if found is not None:
            raise NotFound(f"interaction {id!r} was stored by an earlier version without an image copy")
        raise NotFound(f"no interaction with id {id!r}")

    def list(self, limit: int, offset: int, user: str | None) -> list[dict[str, Any]]:
        """Newest first: the collection's, merged with this replica's rows that wait for the index. While
        the store cannot be reached, this replica's journal alone (better a partial page than none)."""
        check_newest_offset(offset)
        try:
            return self._list(limit, offset, user)
        except StoreUnavailable as exc:
            log.warning("listing this replica's journal only: %s", exc)
            return [row.to_dict() for row in self.journal.list(limit, offset, user)]

    def _list(self, limit: int, offset: int, user: str | None) -> list[dict[str, Any]]:
        waiting = self.journal.unindexed(offset + limit, user)
        if not waiting:
            page = [result_of(p) for p in self.store.newest(limit, offset, user)]
        else:  # the first offset+limit of the union lie within the first offset+limit of each list
            merged: dict[str, tuple[float, dict[str, Any]]] = {
                p["id"]: (float(p.get(CREATED_TS) or 0.0), result_of(p))
                for p in self.store.newest(offset + limit, 0, user)
            }
            for row in waiting:
                merged.setdefault(row.id, (row.timestamp, row.to_dict()))
            ordered = sorted(merged.values(), key=lambda item: item[0], reverse=True)
            page = [result for _, result in ordered[offset : offset + limit]]
        gone = self.journal.deleting([r["id"] for r in page])
        return [r for r in page if r["id"] not in gone]

    def search(self, probes: list[Probe], filters: Filters, limit: int, offset: int) -> list[dict[str, Any]]:
        hits = self.store.search(probes, filters, limit, offset)
        gone = self.journal.deleting([p["id"] for p, _ in hits])
        return [{**result_of(p), "score": score} for p, score in hits if p["id"] not in gone]

    def delete(self, id: str) -> None:
        """Any replica's interaction. This replica's own row leaves the journal first (and the index now or
        when the store is back); another replica's point needs the store now."""
        if self.journal.delete(id):
            try:
                self.store.delete([id])
                self.journal.clear_pending_deletes([id])
            except StoreUnavailable as exc:
                log.warning("deleting %s from the index later: %s", id, exc)
            return
        if not self.store.retrieve([id]):  # ids only: no payload fetched to test existence
            raise NotFound(f"no interaction with id {id!r}")
        self.store.delete([id])
