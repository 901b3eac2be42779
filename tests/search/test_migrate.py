"""Start-up migration: a data dir made by the old local-mode store (qdrant-client `QdrantClient(path=...)`)
is rebuilt into qdrant-edge from the journal, with the old vectors reused, without losing anything."""

from __future__ import annotations

import logging

from tests.search.helpers import diagram, interaction, wait_for
from visionrag.search.edge_store import EdgeStore
from visionrag.search.history import History, make_thumbnail
from visionrag.search.indexer import payload_of
from visionrag.search.journal import BacklogEntry, Journal
from visionrag.search.server_store import ServerStore
from visionrag.search.store import Point


def old_data_dir(settings, embedders) -> list:
    """A journal of four rows, and a local-mode store holding points for rows 0-2 (row 3 never indexed)
    and for a row deleted from the journal since (its point must not come back)."""
    items = [
        interaction(f"answer number {n} about the gateway", user="ann" if n % 2 else None) for n in range(5)
    ]
    journal = Journal(settings.data_dir / "journal.db")
    for n, item in enumerate(items):
        journal.add(item, make_thumbnail(diagram(n))[0], "image/png")
    old = ServerStore(settings)
    assert old.embedded and old.where.endswith("qdrant")
    old.ensure_collection(embedders.image_dim, embedders.text_dim)
    indexed = [0, 1, 2, 4]
    images = embedders.embed_images([diagram(n) for n in indexed])
    texts = embedders.embed_answers([items[n].answer for n in indexed])
    old.upsert(
        [
            Point(items[n].id, image, text, payload_of(BacklogEntry(items[n], b"", 0)))
            for n, image, text in zip(indexed, images, texts, strict=True)
        ]
    )
    journal.mark_indexed([items[n].id for n in indexed])
    journal.delete(items[4].id)
    old.close()
    journal.close()
    return items


def test_old_local_store_is_rebuilt_from_the_journal(settings, shared_embedders, caplog) -> None:
    items = old_data_dir(settings, shared_embedders)
    caplog.set_level(logging.INFO, logger="visionrag.search.migrate")
    with History(settings, embedders=shared_embedders) as history:
        assert isinstance(history.store, EdgeStore)
        assert "rebuilding it from the journal, 4 interactions" in caplog.text
        assert "3 interactions copied" in caplog.text and "1 left for the indexer" in caplog.text
        assert history.store.retrieve([i.id for i in items]) >= {i.id for i in items[:3]}
        wait_for(
            lambda: history.status()["backlog"] == 0 and history.store.count() == 4, what="row 3 embedded"
        )
        assert history.store.retrieve([items[4].id]) == set()  # deleted in the journal: not carried over
        for n in range(4):  # copied vectors and the fresh one both answer
            assert history.search(None, diagram(n), limit=1, against="images")[0]["id"] == items[n].id
        assert history.search("x", None, user="ann", limit=10)[0]["user"] == "ann"  # payload indexes filter
    assert (settings.data_dir / "qdrant").is_dir()  # the old folder is left as it was
    caplog.clear()
    with History(settings, embedders=shared_embedders) as again:  # migrated once only
        assert "rebuilding" not in caplog.text and again.store.count() == 4


def test_points_lost_from_the_store_are_indexed_again_at_start(settings, shared_embedders, caplog) -> None:
    items = [interaction(f"answer {n}") for n in range(3)]
    with History(settings, embedders=shared_embedders) as history:
        for n, item in enumerate(items):
            history.record(item, diagram(n))
        wait_for(lambda: history.status()["backlog"] == 0 and history.store.count() == 3, what="3 indexed")
        history.store.delete([items[1].id])  # what a power loss before the WAL reached the disk looks like
    caplog.set_level(logging.WARNING, logger="visionrag.search.migrate")
    with History(settings, embedders=shared_embedders) as history:
        assert "1 journaled interactions were missing" in caplog.text
        wait_for(lambda: history.store.count() == 3, what="the lost point indexed again")
        assert history.search(None, diagram(1), limit=1, against="images")[0]["id"] == items[1].id
