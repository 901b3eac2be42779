"""The indexer: a background thread that moves journal rows into the vector store, off the request path.

It sleeps on an Event that `History.record()` sets, so a new interaction is embedded at once (not at the
next poll), and takes whatever has accumulated in one batch. When the store cannot be reached it backs off
exponentially (0.5 s doubling to 30 s) and picks the backlog up when the store answers again; a record
during an outage does not cut the backoff short (no busy loop). A row whose own content fails to embed is
retried a few times and then left aside (counted as `failed` in the stats); a store outage never counts
against a row.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from visionrag.search.embedders import Embedders
from visionrag.search.errors import StoreUnavailable
from visionrag.search.journal import BacklogEntry, Journal
from visionrag.search.store import CREATED_TS, IMAGE_COPY, IMAGE_TYPE, WRITER, Point, SchemaMismatch, Store

log = logging.getLogger(__name__)

STARTING, OK, UNAVAILABLE, ERROR = "starting", "ok", "unavailable", "error"


def payload_of(entry: BacklogEntry, writer: str | None = None, image_copy: bool = False) -> dict[str, Any]:
    """The interaction as the point's payload, plus `created_ts` (a number) for range filters and order,
    the replica that wrote it, and, for a shared store, the stored image copy (base64) so that every
    replica can serve it."""
    payload = entry.interaction.to_dict()
    payload.pop("image", None)
    payload[CREATED_TS] = entry.interaction.timestamp
    if writer is not None:
        payload[WRITER] = writer
    if image_copy:
        payload[IMAGE_COPY] = base64.b64encode(entry.image).decode("ascii")
        payload[IMAGE_TYPE] = entry.media_type
    return payload


class Indexer:
    def __init__(
        self,
        journal: Journal,
        store: Store,
        embedders: Embedders,
        batch_size: int = 32,
        max_attempts: int = 5,
        backoff: tuple[float, float] = (0.5, 30.0),
        idle_wait: float = 30.0,
        writer: str | None = None,
    ) -> None:
        """`writer` names this replica in each point's payload (reindex counts what others wrote)."""
        self.journal = journal
        self.store = store
        self.embedders = embedders
        self.batch_size = batch_size
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.idle_wait = idle_wait
        self.writer = writer
        self.state = STARTING
        self.last_error: str | None = None
        self.indexed_total = 0
        self.failed_total = 0
        self.last_delay_seconds: float | None = None  # creation -> searchable, for the last batch
        self._ready = False  # the collection is known to exist with the right sizes
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._batch_lock = threading.Lock()  # one batch at a time (the thread, or a reindex)
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="visionrag-indexer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the thread to finish its batch and stop (the journal keeps whatever is left)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def wake(self) -> None:
        self._wake.set()

    # -- one step ---------------------------------------------------------------------------------
    def ensure_ready(self) -> None:
        """Make sure the collection exists (creating it on first use); raises StoreUnavailable."""
        if not self._ready:
            self.store.ensure_collection(self.embedders.image_dim, self.embedders.text_dim)
            self._ready = True

    def run_once(self) -> int:
        """Apply pending deletions, then index one batch of the backlog; returns the rows indexed."""
        with self._batch_lock:
            self.ensure_ready()
            deletions = self.journal.pending_deletes()
            if deletions:
                self.store.delete(deletions)
                self.journal.clear_pending_deletes(deletions)
            entries = self.journal.backlog(self.batch_size, self.max_attempts)
            return self.index_entries(entries) if entries else 0

    def drain(self, on_batch: Callable[[int], None] | None = None) -> int:
        """Index the whole backlog in the calling thread (reindex); returns the rows indexed."""
        total = 0
        while True:
            done = self.run_once()
            waiting, _, _ = self.journal.backlog_stats(self.max_attempts)
            if on_batch is not None:
                on_batch(done)
            total += done
            if waiting == 0:
                return total

    def index_entries(self, entries: list[BacklogEntry]) -> int:
        """Embed and upsert these rows, then mark them indexed. StoreUnavailable propagates (nothing is
        marked); an embedding failure is retried row by row so that one bad row does not block the rest."""
        if not entries:
            return 0
        try:
            images = self.embedders.embed_images([e.image for e in entries])
            texts = self.embedders.embed_answers([e.interaction.answer for e in entries])
        except Exception as exc:
            if len(entries) > 1:
                return sum(self.index_entries([e]) for e in entries)
            log.warning("cannot embed interaction %s: %s", entries[0].interaction.id, exc)
            self.journal.mark_failed([entries[0].interaction.id], f"{type(exc).__name__}: {exc}")
            self.failed_total += 1
            return 0
        points = [
            Point(
                id=e.interaction.id,
                image=img,
                text=txt,
                payload=payload_of(e, self.writer, self.store.shared),
            )
            for e, img, txt in zip(entries, images, texts, strict=True)
        ]
        self.store.upsert(points)
        now = time.time()
        ids = [e.interaction.id for e in entries]
        present = self.journal.mark_indexed(ids, at=now)
        gone = [i for i in ids if i not in present]
        if gone:  # deleted while we were embedding: take the fresh points out again
            self.store.delete(gone)
        self.indexed_total += len(present)
        self.last_delay_seconds = max(now - e.interaction.timestamp for e in entries)
        return len(present)

    # -- the thread -------------------------------------------------------------------------------
    def _run(self) -> None:
        delay = self.backoff[0]
        while not self._stop.is_set():
            # Cleared before looking at the journal: a record committed after the look sets it again,
            # so the wait below returns at once and nothing is missed.
            self._wake.clear()
            try:
                done = self.run_once()
            except StoreUnavailable as exc:
                self._failed(UNAVAILABLE, exc, delay)
                delay = min(delay * 2, self.backoff[1])
                continue
            except SchemaMismatch as exc:
                self._failed(ERROR, exc, self.backoff[1])
                continue
            except Exception as exc:  # a bug or a broken model: keep the server up, say so in /health
                log.exception("indexer failed")
                self._failed(ERROR, exc, delay)
                delay = min(delay * 2, self.backoff[1])
                continue
            if self.state != OK:
                log.info("vector store %s is available", self.store.where)
            self.state, self.last_error, delay = OK, None, self.backoff[0]
            if done == 0:
                self._wake.wait(min(self.idle_wait, self._maintain() or self.idle_wait))

    def _maintain(self) -> float | None:
        """Idle time is the store's (the embedded engine's index build); its failure never stops indexing."""
        try:
            return self.store.maintain()
        except Exception:
            log.exception("store maintenance failed")
            return None

    def _failed(self, state: str, exc: Exception, wait: float) -> None:
        if self.state != state or self.last_error != str(exc):
            log.warning("indexer: %s; retrying in %.1f s", exc, wait)
        self.state, self.last_error = state, str(exc)
        self._ready = False
        self._stop.wait(wait)

    # -- numbers for /health and /metrics ---------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        waiting, oldest, failed = self.journal.backlog_stats(self.max_attempts)
        return {
            "index": self.state,
            "backlog": waiting,
            "lag_seconds": round(max(0.0, time.time() - oldest), 3) if oldest is not None else 0.0,
            "failed": failed,
            "indexed_total": self.indexed_total,
            "last_delay_seconds": self.last_delay_seconds,
            "last_error": self.last_error,
        }
