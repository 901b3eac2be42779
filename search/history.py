"""`History`: the one seam between the server and the history package.

The journal (SQLite, durable) is the truth; the vector store is an index derived from it. `record()`
returns once the row is committed, then wakes the indexer, so the request path never waits for CLIP or
Qdrant. Search results are re-read from the journal, so an interaction deleted while the store was down
never comes back from a stale point.

With a shared store (QDRANT_URL: many replicas, one collection) the collection is the truth for reads
instead and the journal is this replica's outbox: see shared.py.
"""

from __future__ import annotations

import io
import logging
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from PIL import Image

from visionrag.search.config import HistoryConfig
from visionrag.search.embedders import Embedders
from visionrag.search.errors import InvalidQuery, NotFound, StoreUnavailable
from visionrag.search.indexer import ERROR, OK, UNAVAILABLE, Indexer
from visionrag.search.interaction import Interaction
from visionrag.search.journal import Journal
from visionrag.search.migrate import migrate_local_store, repair_index
from visionrag.search.shared import SharedReads, writer_id
from visionrag.search.store import (
    IMAGE,
    TARGETS,
    TEXT,
    Filters,
    Probe,
    SchemaMismatch,
    SharedStore,
    open_store,
)

log = logging.getLogger(__name__)

THUMBNAIL_SIDE = 512
MAX_LIMIT = 100
MAX_OFFSET = 1_000_000_000  # SQLite and Qdrant take 64-bit offsets; a larger one would be a 500
AGAINST = ("images", "answers", "both")
# In a fusion, a cross-modal list (text query vs images, image query vs answers) counts this much against a
# same-modality list. CLIP's cross-modal cosines are lower and noisier than same-modality ones (the modality
# gap); below 0.2, with RRF's k=2, a same-modality top hit can never be pushed off first place by one list.
CROSS_MODAL_WEIGHT = 0.15
PNG_MAX_COLORS = 4096  # diagrams (few colours) stay lossless PNG; photos become JPEG


def make_thumbnail(image: Image.Image, side: int = THUMBNAIL_SIDE) -> tuple[bytes, str]:
    """The stored copy: longest side <= `side`, PNG for drawings (sharp lines survive), JPEG for photos."""
    copy = image.copy()
    if copy.mode not in ("RGB", "RGBA", "L"):
        copy = copy.convert("RGBA" if "transparency" in copy.info or copy.mode in ("LA", "PA") else "RGB")
    copy.thumbnail((side, side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if copy.mode == "RGBA" or copy.getcolors(PNG_MAX_COLORS) is not None:
        copy.save(out, format="PNG")
        return out.getvalue(), "image/png"
    copy.convert("RGB").save(out, format="JPEG", quality=90)
    return out.getvalue(), "image/jpeg"


def parse_time(value: datetime | str | float | None, name: str) -> float | None:
    """ISO 8601 text (or a datetime, or epoch seconds) as epoch seconds; naive times are UTC."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise InvalidQuery(f"{name} must be an ISO 8601 date, not {value!r}")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise InvalidQuery(f"{name} is not an ISO 8601 date or time: {value!r}") from None
    if not isinstance(value, datetime):
        raise InvalidQuery(f"{name} must be an ISO 8601 date, not {type(value).__name__}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def _check_page(limit: Any, offset: Any) -> tuple[int, int]:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidQuery(f"limit must be an integer from 1 to {MAX_LIMIT}, not {limit!r}")
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= MAX_OFFSET:
        raise InvalidQuery(f"offset must be an integer from 0 to {MAX_OFFSET}, not {offset!r}")
    return limit, offset


def _valid_id(id: str) -> bool:
    try:
        return str(uuid.UUID(str(id))) == str(id).lower()
    except ValueError:
        return False


class History:
    """Owns the journal, the store, the embedders and the indexer thread of one server process."""

    def __init__(self, settings: HistoryConfig, embedders: Embedders | None = None) -> None:
        self.settings = settings
        self.journal = Journal(settings.data_dir / "journal.db")
        self.store = open_store(settings)
        self.embedders = embedders or Embedders(settings)
        self.writer = writer_id(settings.data_dir)
        self.indexer = Indexer(self.journal, self.store, self.embedders, writer=self.writer)
        # the collection is the truth for reads when other replicas write to it too
        self.shared = (
            SharedReads(self.journal, self.store)
            if isinstance(self.store, SharedStore) and self.store.shared
            else None
        )
        self._started = False

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        """Load the CLIP models (a wrong model path fails here, at start-up), try the store once, and
        start the indexer. An unreachable store does not raise: the index reads "unavailable" and the
        indexer keeps retrying."""
        self.embedders.load()
        try:
            migrate_local_store(self.settings, self.journal, self.store, self.embedders)
            self.indexer.ensure_ready()
            if self.store.embedded:
                repair_index(self.journal, self.store, self.indexer.max_attempts)
            self.indexer.state = OK
        except (StoreUnavailable, SchemaMismatch) as exc:
            log.warning("history index not ready: %s (answers are journaled and indexed later)", exc)
            self.indexer.state = UNAVAILABLE if isinstance(exc, StoreUnavailable) else ERROR
            self.indexer.last_error = str(exc)
        self.indexer.start()
        self._started = True

    def close(self) -> None:
        """Stop the indexer (after its current batch), then close the store and the journal."""
        self.indexer.stop()
        self.store.close()
        self.journal.close()
        self._started = False

    def __enter__(self) -> History:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- write ------------------------------------------------------------------------------------
    def record(self, interaction: Interaction, image: Image.Image) -> bool:
        """Durable when it returns (the row and the image copy are committed and fsynced); indexing
        happens afterwards in the indexer thread. Recording the same id twice keeps the first: the
        result says whether this call added the row (False: that id was already recorded)."""
        data, media_type = make_thumbnail(image)
        added = self.journal.add(interaction, data, media_type)
        self.indexer.wake()
        return added

    def delete(self, id: str) -> None:
        """Remove from the journal now and from the index now or, if the store is down, as soon as it
        is back (the deletion is queued in the same transaction)."""
        if not _valid_id(id):
            raise NotFound(f"no interaction with id {id!r}")
        if self.shared is not None:
            self.shared.delete(id)
            self.indexer.wake()  # a deletion the store missed waits in the journal
            return
        if not self.journal.delete(id):
            raise NotFound(f"no interaction with id {id!r}")
        try:
            self.store.delete([id])
            self.journal.clear_pending_deletes([id])
        except StoreUnavailable as exc:
            log.warning("deleting %s from the index later: %s", id, exc)
            self.indexer.wake()

    # -- read -------------------------------------------------------------------------------------
    def get(self, id: str) -> dict[str, Any]:
        if self.shared is not None and _valid_id(id):
            return self.shared.get(id)
        found = self.journal.get(id) if _valid_id(id) else None
        if found is None:
            raise NotFound(f"no interaction with id {id!r}")
        return found.to_dict()

    def image(self, id: str) -> tuple[bytes, str]:
        if self.shared is not None and _valid_id(id):
            return self.shared.image(id)
        found = self.journal.image(id) if _valid_id(id) else None
        if found is None:
            raise NotFound(f"no interaction with id {id!r}")
        return found

    def same_image(
        self, image_sha256: str, limit: int = 10, user: str | None = None, tags: Sequence[str] = ()
    ) -> list[dict[str, Any]]:
        """Interactions about exactly this image (same bytes), newest first, from this server's journal;
        with `tags`, only those carrying every one. Context retrieval ranks these first."""
        rows = self.journal.same_image(image_sha256, MAX_LIMIT, user)
        wanted = set(tags or ())
        return [r.to_dict() for r in rows if wanted <= set(r.tags)][:limit]

    def list(self, limit: int = 20, offset: int = 0, user: str | None = None) -> list[dict[str, Any]]:
        """Newest first, from the journal (so it includes what is not indexed yet); with a shared store
        from the collection, plus this replica's rows not indexed yet."""
        limit, offset = _check_page(limit, offset)
        if self.shared is not None:
            return self.shared.list(limit, offset, user)
        return [i.to_dict() for i in self.journal.list(limit, offset, user)]

    def search(
        self,
        text: str | None,
        image: Image.Image | None,
        limit: int = 10,
        offset: int = 0,
        against: str = "both",
        since: datetime | str | float | None = None,
        until: datetime | str | float | None = None,
        user: str | None = None,
        tags: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Interactions nearest to the query text and/or image, best first, each with a `score`.

        Each query vector (text, image) is compared with the stored image vectors (`images`), answer
        vectors (`answers`) or both; with more than one comparison the ranked lists are fused with RRF,
        cross-modal lists weighted CROSS_MODAL_WEIGHT.
        Filters: created since/until (inclusive), user, and every one of `tags`."""
        if text is not None and not isinstance(text, str):
            raise InvalidQuery("text must be a string")
        text = text.strip() if text else None
        if not text and image is None:
            raise InvalidQuery("give a text or an image (or both) to search with")
        limit, offset = _check_page(limit, offset)
        if against not in AGAINST:
            raise InvalidQuery(f"against must be one of {', '.join(AGAINST)}, not {against!r}")
        since_ts, until_ts = parse_time(since, "since"), parse_time(until, "until")
        if since_ts is not None and until_ts is not None and since_ts > until_ts:
            raise InvalidQuery("since is after until")
        if isinstance(tags, str):
            tags = [tags]
        tags = list(tags or ())
        if not all(isinstance(t, str) for t in tags):
            raise InvalidQuery("tags must be strings")
        if user is not None and not isinstance(user, str):
            raise InvalidQuery("user must be a string")

        targets = [IMAGE, TEXT] if against == "both" else [TARGETS[against]]
        vectors = []  # (vector, the named vector of the same modality)
        if text:
            vectors.append((self.embedders.embed_texts([text], query=True)[0], TEXT))
        if image is not None:
            vectors.append((self.embedders.embed_images([image.convert("RGB")], query=True)[0], IMAGE))
        probes = [
            Probe(vector=v, using=t, weight=1.0 if t == same else CROSS_MODAL_WEIGHT)
            for v, same in vectors
            for t in targets
        ]
        filters = Filters(since_ts, until_ts, user, tuple(tags))
        if self.shared is not None:
            return self.shared.search(probes, filters, limit, offset)
        hits = self.store.query(probes, filters, limit, offset)
        rows = self.journal.get_many([id for id, _ in hits])
        return [{**rows[id].to_dict(), "score": score} for id, score in hits if id in rows]

    # -- operations -------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """For /health and /metrics: journal "ok"/"error"; index "ok", "unavailable", "starting" or
        "error"; backlog (rows waiting), lag_seconds (age of the oldest waiting row), and counters."""
        try:
            stats = self.indexer.stats()
            journal = "ok"
        except Exception as exc:
            log.error("journal unreadable: %s", exc)
            stats = {"index": self.indexer.state, "backlog": None, "lag_seconds": None, "failed": None}
            journal = "error"
        return {"journal": journal, **stats, "store": "embedded" if self.store.embedded else "remote"}

    def reindex(
        self,
        progress: bool = True,
        on_progress: Callable[[int, int], None] | None = None,
        recreate: bool = False,
    ) -> int:
        """Embed every journal row again and upsert it (point id = interaction id, so it is idempotent and
        never touches points this replica did not write); returns the number indexed. With `recreate`, drop
        and create the collection first (after a CLIP model change: the vector sizes differ), which on a
        shared store deletes every other replica's points too. Raises StoreUnavailable, SchemaMismatch."""
        from tqdm import tqdm

        total = self.journal.count()
        self.embedders.load()
        with self.indexer._batch_lock:
            if recreate:
                self.store.recreate(self.embedders.image_dim, self.embedders.text_dim)
                self.journal.clear_pending_deletes(self.journal.pending_deletes(limit=1_000_000))
            else:
                self.store.ensure_collection(self.embedders.image_dim, self.embedders.text_dim)
            self.journal.reset_index_state()
        done = 0
        with tqdm(total=total, unit="interaction", desc="reindex", disable=not progress) as bar:

            def advance(n: int) -> None:
                nonlocal done
                done += n
                bar.update(n)
                if on_progress is not None:
                    on_progress(done, total)

            indexed = self.indexer.drain(advance)
        self.indexer.state = OK
        return indexed
