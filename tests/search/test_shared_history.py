"""`History` of replicas sharing one collection on a Qdrant server (the REST test double): each replica
reads what every other wrote, the journal is only its outbox, and reindex leaves others' points alone."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.search.helpers import diagram, interaction, wait_for
from tests.search.qdrant_double import QdrantDouble
from visionrag.search.config import HistoryConfig
from visionrag.search.errors import InvalidQuery, NotFound, StoreUnavailable
from visionrag.search.history import History
from visionrag.search.store import Point


@pytest.fixture
def double() -> Iterator[QdrantDouble]:
    d = QdrantDouble()
    yield d
    d.close()
    assert d.errors == [], d.errors


@pytest.fixture
def replica(
    tiny_clip: tuple[Path, Path], tmp_path: Path, double: QdrantDouble, shared_embedders
) -> Iterator[Callable[..., History]]:
    made: list[History] = []

    def make(name: str, start: bool = True) -> History:
        text_dir, vision_dir = tiny_clip
        config = HistoryConfig(
            text_model_path=text_dir,
            image_model_path=vision_dir,
            data_dir=tmp_path / name,
            collection_name="shared",
            qdrant_url=double.url,
        )
        h = History(config, embedders=shared_embedders)
        if start:
            h.start()
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def settled(*replicas: History) -> None:
    wait_for(lambda: all(r.status()["backlog"] == 0 for r in replicas), what="indexing")


def test_every_replica_reads_and_deletes_what_any_wrote(replica, double: QdrantDouble) -> None:
    a, b = replica("a"), replica("b")
    assert a.writer != b.writer and a.status()["store"] == "remote"
    mine, theirs = (
        interaction("a pump and two valves", user="ann"),
        interaction("a load balancer", user="bob"),
    )
    a.record(mine, diagram(1))
    b.record(theirs, diagram(2))
    settled(a, b)
    hit = b.search(None, diagram(1), limit=1, against="images")[0]
    assert (
        hit["id"] == mine.id and hit["answer"] == mine.answer and hit["image"] == f"/history/{mine.id}/image"
    )
    assert b.get(mine.id) == a.get(mine.id) == mine.to_dict()
    assert b.image(mine.id) == a.journal.image(mine.id)
    assert [r["id"] for r in b.list(10)] == [theirs.id, mine.id] == [r["id"] for r in a.list(10)]
    assert [r["id"] for r in b.list(10, user="ann")] == [mine.id]
    assert [r["id"] for r in a.list(1, offset=1)] == [mine.id]
    with pytest.raises(InvalidQuery, match="offset past 10000"):
        a.list(10, offset=20_000)
    fresh = replica("fresh")  # an empty data dir sees everything
    assert {r["id"] for r in fresh.list(10)} == {mine.id, theirs.id}
    b.delete(mine.id)  # another replica's interaction
    for r in (a, b, fresh):
        with pytest.raises(NotFound):
            r.get(mine.id)
        with pytest.raises(NotFound):
            r.image(mine.id)
        assert [x["id"] for x in r.list(10)] == [theirs.id]
    with pytest.raises(NotFound):
        fresh.delete(mine.id)
    assert a.journal.get(mine.id) is not None  # a's outbox row stays, but it is not shown
    a.delete(theirs.id)
    assert fresh.list(10) == [] and double.engine.count("shared").count == 0


def test_own_rows_are_read_before_they_are_indexed_and_during_an_outage(
    replica, double: QdrantDouble
) -> None:
    a, b = replica("a"), replica("b")
    old = interaction("indexed first")
    a.record(old, diagram(3))
    settled(a)
    waiting = replica("w", start=False)  # no indexer: its rows stay in the outbox
    later = interaction("waiting in the outbox")
    waiting.record(later, diagram(4))
    assert [r["id"] for r in waiting.list(10)] == [later.id, old.id]
    assert waiting.get(later.id)["answer"] == later.answer and waiting.image(later.id)[0]
    double.down()
    during = interaction("answered while Qdrant is down")
    a.record(during, diagram(5))
    assert a.get(old.id)["id"] == old.id  # its own rows, from the journal
    assert [r["id"] for r in a.list(10)] == [during.id, old.id]
    with pytest.raises(StoreUnavailable):
        b.get(old.id)  # not b's: it cannot answer without the store (503, not 404)
    with pytest.raises(StoreUnavailable):
        a.search("anything", None)
    a.delete(old.id)  # queued
    double.up()
    settled(a)
    wait_for(
        lambda: [r["id"] for r in b.list(10)] == [during.id],
        what="the outage's answer and deletion to reach the collection",
    )
    assert b.get(during.id)["answer"] == during.answer and b.image(during.id) == a.journal.image(during.id)
    with pytest.raises(NotFound):
        b.get(old.id)


def test_old_points_without_an_image_copy_come_back_with_image_null(replica) -> None:
    a = replica("a")
    item = interaction("written by an earlier version")
    vector = a.embedders.embed_images([diagram(6)])[0]
    payload = {**item.to_dict(), "created_ts": item.timestamp}
    payload.pop("image")
    a.store.upsert([Point(item.id, vector, a.embedders.embed_answers([item.answer])[0], payload)])
    hit = a.search(None, diagram(6), limit=1, against="images")[0]
    assert hit["id"] == item.id and hit["image"] is None
    assert a.get(item.id)["image"] is None and a.list(5)[0]["image"] is None
    with pytest.raises(NotFound, match="earlier version"):
        a.image(item.id)


def test_reindex_keeps_other_writers_points_unless_recreated(replica, double: QdrantDouble) -> None:
    a, b = replica("a"), replica("b")
    a.record(interaction("from a"), diagram(7))
    for i in range(2):
        b.record(interaction(f"from b {i}"), diagram(8 + i))
    settled(a, b)
    assert a.store.count_other_writers(a.writer) == 2 and b.store.count_other_writers(b.writer) == 1
    assert a.reindex(progress=False) == 1
    assert a.store.count() == 3
    assert a.reindex(progress=False, recreate=True) == 1
    assert a.store.count() == 1 and a.store.count_other_writers(a.writer) == 0
    assert b.reindex(progress=False) == 2 and a.store.count() == 3


def test_the_image_copy_in_the_payload_is_small_and_stays_out_of_search(
    replica, double: QdrantDouble
) -> None:
    import io

    from PIL import Image

    a = replica("a")
    big = interaction("a large blueprint")
    a.record(big, diagram(11, size=(2400, 1600)))
    settled(a)
    data, media_type = a.image(big.id)
    with Image.open(io.BytesIO(data)) as copy:
        assert max(copy.size) == 512 and media_type in ("image/png", "image/jpeg")
    (record,) = double.engine.retrieve("shared", [big.id], with_payload=True)
    assert record.payload["writer"] == a.writer and len(record.payload["image_copy"]) < 200_000
    double.calls.clear()
    a.search("blueprint", diagram(11, size=(2400, 1600)), limit=5)
    a.list(5)
    reads = [body for _, name, body in double.calls if name in ("query", "scroll", "retrieve")]
    assert reads and all("image_copy" not in body.with_payload for body in reads)
