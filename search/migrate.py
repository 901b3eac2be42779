"""Start-up repair of the embedded store: the migration from the old embedded store (qdrant-client's local mode, `data_dir/qdrant`) to
qdrant-edge (`data_dir/edge`).

The journal is the truth: every journal row becomes a point again, with its payload made from the journal
row. Vectors are taken from the old store where it has them (so 100k interactions do not need hours of
CLIP on a CPU); a row the old store lacks (or with vectors of other sizes) stays in the backlog and the
indexer embeds it in the background. Rows deleted from the journal are not carried over. Nothing is asked;
a crash midway leaves the rest in the backlog. The old folder is left as it was (a previous version can
still read it); the log line says it can be deleted.

`repair_index` covers the other gap: the embedded engine writes its WAL without an fsync per batch (that
would stall searches ~100 ms each time), so after a power loss the store may lack points the journal marks
indexed; those rows go back to the backlog.
"""

from __future__ import annotations

import logging
from pathlib import Path

from visionrag.search.config import HistoryConfig
from visionrag.search.embedders import Embedders
from visionrag.search.indexer import payload_of
from visionrag.search.journal import BacklogEntry, Journal
from visionrag.search.store import IMAGE, TEXT, Point, Store

log = logging.getLogger(__name__)

LEGACY_DIR = "qdrant"
BATCH = 512


def legacy_store(settings: HistoryConfig) -> Path | None:
    """The old local-mode folder when it holds this collection."""
    path = settings.data_dir / LEGACY_DIR
    return path if (path / "collection" / settings.collection_name).is_dir() else None


def migrate_local_store(
    settings: HistoryConfig, journal: Journal, store: Store, embedders: Embedders, progress: bool = True
) -> int | None:
    """Rebuild the embedded store from the journal when only the old local-mode store exists; returns the
    points copied (None when there was nothing to migrate). Raises StoreUnavailable."""
    legacy = legacy_store(settings)
    if legacy is None or not store.embedded or store.where == str(legacy) or store.collection_exists():
        return None
    from tqdm import tqdm

    total = journal.count()
    log.warning(
        "the embedded history moves from qdrant-client's local mode (%s) to qdrant-edge (%s): rebuilding it "
        "from the journal, %d interactions",
        legacy,
        store.where,
        total,
    )
    journal.reset_index_state()  # from here on, whatever is not copied is embedded by the indexer
    store.ensure_collection(embedders.image_dim, embedders.text_dim)
    client = _open_legacy(legacy)
    copied = 0
    ids = journal.ids()
    with tqdm(total=total, unit="interaction", desc="migrate", disable=not progress) as bar:
        for at in range(0, len(ids), BATCH):
            batch = ids[at : at + BATCH]
            rows = journal.get_many(batch)
            vectors = _old_vectors(client, settings.collection_name, batch, embedders) if client else {}
            points = [
                Point(
                    id=i,
                    image=vectors[i][0],
                    text=vectors[i][1],
                    payload=payload_of(BacklogEntry(rows[i], b"", 0)),
                )
                for i in batch
                if i in vectors and i in rows
            ]
            store.upsert(points)
            copied += len(journal.mark_indexed([p.id for p in points]))
            bar.update(len(batch))
    if client is not None:
        client.close()
    log.warning(
        "history migrated: %d interactions copied to %s, %d left for the indexer to embed; the old folder %s "
        "was left untouched (delete it once you no longer need to go back to a version before qdrant-edge)",
        copied,
        store.where,
        total - copied,
        legacy,
    )
    return copied


def _open_legacy(path: Path):
    try:
        from qdrant_client import QdrantClient

        return QdrantClient(path=str(path))
    except Exception as exc:  # locked by another process, unreadable: re-embed instead
        log.warning("cannot read the old store %s (%s): every interaction will be embedded again", path, exc)
        return None


def _old_vectors(
    client, collection: str, ids: list[str], embedders: Embedders
) -> dict[str, tuple[list[float], list[list[float]]]]:
    """The old points' vectors by id, where their sizes match the current CLIP models."""
    out = {}
    for record in client.retrieve(collection, ids=ids, with_vectors=True, with_payload=False):
        vector = record.vector if isinstance(record.vector, dict) else {}
        image, text = vector.get(IMAGE), vector.get(TEXT)
        if (
            image is not None
            and text
            and len(image) == embedders.image_dim
            and all(len(v) == embedders.text_dim for v in text)
        ):
            out[str(record.id)] = (image, text)
    return out


def repair_index(journal: Journal, store: Store, max_attempts: int, batch: int = 1024) -> int:
    """Put rows marked indexed whose points are missing back into the backlog; returns how many. Cheap
    when the counts agree (one count); a full id check otherwise (an extra point, e.g. one that came
    back after a power loss, must not hide a lost one)."""
    waiting, _, failed = journal.backlog_stats(max_attempts)
    if store.count() == journal.count() - waiting - failed:
        return 0
    ids = journal.ids()
    missing: list[str] = []
    for at in range(0, len(ids), batch):
        part = ids[at : at + batch]
        present = store.retrieve(part)
        missing += [i for i in part if i not in present]
    journal.mark_unindexed(missing)  # rows not yet indexed are unchanged by this
    if missing:
        log.warning(
            "%d journaled interactions were missing from %s: indexing them again", len(missing), store.where
        )
    return len(missing)
