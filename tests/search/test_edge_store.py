"""The embedded store on qdrant-edge: the same behaviours as the qdrant-client engine (test_store.py's tests
run here against EdgeStore), plus what only this engine has: payload indexes, one owner per folder, the
background index build swapped in while searches and writes go on, and reopening after a restart."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading

import numpy as np
import pytest
import qdrant_edge as qe

from tests.search.helpers import wait_for
from tests.search.test_store import (  # noqa: F401 (collected here, against the EdgeStore fixture below)
    DIM,
    point,
    test_collection_is_created_once_and_checked,
    test_delete,
    test_fusion_pages_and_filters,
    test_upsert_is_idempotent_and_queries_each_vector,
    unit,
)
from visionrag.search.edge_schema import LAYOUT, PAYLOAD_INDEXES, edge_vectors
from visionrag.search.edge_store import META, EdgeStore
from visionrag.search.errors import StoreUnavailable
from visionrag.search.store import IMAGE, TEXT, Filters, Probe, open_store


@pytest.fixture
def store(settings):
    s = EdgeStore(settings, build_min_new=0)
    assert s.ensure_collection(DIM, DIM) is True
    yield s
    s.close()


def test_open_store_picks_edge_for_the_embedded_default(settings) -> None:
    s = open_store(settings)
    assert isinstance(s, EdgeStore) and s.embedded
    assert "edge" in s.where and not s.collection_exists()
    s.close()


def test_payload_indexes_exist(store: EdgeStore) -> None:
    with store._calling("info") as shard:
        schema = shard.info().payload_schema
    assert set(schema) == {"user", "tags", "created_ts"}


def test_one_owner_per_folder(store: EdgeStore, settings) -> None:
    other = EdgeStore(settings)
    with pytest.raises(StoreUnavailable, match="in use by another process"):
        other.count()
    # another process too (the flock is per open file description, so a thread test alone proves little)
    code = (
        "import sys; from visionrag.search.edge_store import EdgeStore; "
        "from visionrag.search.config import HistoryConfig; from pathlib import Path\n"
        f"s = EdgeStore(HistoryConfig(data_dir=Path({str(settings.data_dir)!r}), "
        f"collection_name={settings.collection_name!r}))\n"
        "try:\n    s.count()\nexcept Exception as e:\n    print(type(e).__name__, e)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert out.startswith("StoreUnavailable") and "in use by another process" in out
    store.close()
    again = EdgeStore(settings)  # released on close
    assert again.count() == 0
    again.close()


def test_points_survive_reopening(store: EdgeStore, settings) -> None:
    points = [point(i, chunks=2, user="ann") for i in range(20)]
    store.upsert(points)
    store.delete([points[0].id])
    store.close()
    reopened = EdgeStore(settings)
    assert reopened.ensure_collection(DIM, DIM) is False
    assert reopened.count() == 19
    hits = reopened.query([Probe(unit(5), IMAGE)], Filters(user="ann"), limit=1)
    assert hits[0][0] == points[5].id
    reopened.close()


def test_recreate_empties(store: EdgeStore) -> None:
    store.upsert([point(i) for i in range(5)])
    store.recreate(DIM, DIM)
    assert store.count() == 0
    assert len(list(store.root.glob("g[0-9]*"))) == 1


def test_background_build_swaps_in_without_losing_writes(settings) -> None:
    store = EdgeStore(settings, build_min_new=50)
    store.ensure_collection(DIM, DIM)
    points = [point(i, chunks=2, tags=["x"]) for i in range(300)]
    store.upsert(points[:200])
    assert store.builder.unindexed() == 200
    assert store.maintain() is not None  # started: the child builds on a copy
    first = store._current()
    # meanwhile: searches answer, writes and deletions land (and are replayed into the new generation)
    hits: list = []
    stop = threading.Event()

    def search() -> None:
        while not stop.is_set() and len(hits) < 10_000:
            hits.append(store.query([Probe(unit(3), IMAGE)], Filters(tags=["x"]), limit=1)[0][0])

    searcher = threading.Thread(target=search)
    searcher.start()
    try:
        store.upsert(points[200:])
        store.delete([points[7].id])
        wait_for(lambda: store.maintain() is None, timeout=120, interval=0.1, what="the build to finish")
    finally:
        stop.set()
        searcher.join(30)
    assert hits and set(hits) == {points[3].id}
    assert store._current() != first and not first.exists()
    assert store.builder.last is not None and store.builder.last["replayed"] == 101
    info = store.info()
    assert info["points"] == 299 and info["indexed_vectors"] >= 2 * 199
    assert store.retrieve([points[7].id, points[250].id]) == {points[250].id}
    last_window = points[250].text[1]
    assert store.query([Probe(last_window, TEXT)], None, limit=1)[0][0] == points[250].id
    store.close()
    reopened = EdgeStore(settings, build_min_new=0)  # CURRENT names the new generation
    assert reopened.count() == 299
    reopened.close()


def test_searches_after_a_build_rank_as_exact_cosine_and_max_sim(settings) -> None:
    """Both vectors are scanned on their int8 copies and rescored: the top 10 and their scores are the
    exact cosine (`image`) and MAX_SIM (`text`)."""
    store = EdgeStore(settings, build_min_new=0)
    store.ensure_collection(DIM, DIM)
    points = [point(i, chunks=1 + i % 5) for i in range(400)]
    store.upsert(points)
    store.builder.build_now()
    assert store.info()["indexed_vectors"] == 2 * 400  # both int8 copies built
    windows = [(p.id, np.asarray(w)) for p in points for w in p.text]
    for q in range(20):
        query = unit(50_000 + q)
        best: dict[str, float] = {}
        for pid, w in windows:
            best[pid] = max(best.get(pid, -2.0), float(w @ query))
        for using, exact_scores in (
            (TEXT, best),
            (IMAGE, {p.id: float(np.asarray(p.image) @ query) for p in points}),
        ):
            exact = sorted(exact_scores.items(), key=lambda kv: -kv[1])[:10]
            got = store.query([Probe(query, using)], None, limit=10)
            assert [i for i, _ in got] == [i for i, _ in exact]
            assert [s for _, s in got] == pytest.approx([s for _, s in exact], abs=1e-5)
    store.close()


def test_a_shard_of_the_older_layout_is_copied_on_open(settings, caplog) -> None:
    """Layout 1 (HNSW on both vectors, no int8 copies, sizes in `meta.json` beside the folders) is copied
    on open into a generation that carries its own META."""
    root = settings.data_dir / "edge" / settings.collection_name
    old = qe.EdgeConfig(
        vectors={
            IMAGE: qe.EdgeVectorParams(DIM, qe.Distance.Cosine),
            TEXT: qe.EdgeVectorParams(
                DIM,
                qe.Distance.Cosine,
                multivector_config=qe.MultiVectorConfig(qe.MultiVectorComparator.MaxSim),
            ),
        },
        hnsw_config=qe.HnswIndexConfig(m=16, ef_construct=100, full_scan_threshold=10_000),
        optimizers=qe.EdgeOptimizersConfig(indexing_threshold=1),
    )
    shard = qe.EdgeShard.create(str(root / "g000001"), old)
    for key, kind in PAYLOAD_INDEXES:
        shard.update(qe.UpdateOperation.create_field_index(key, kind))
    points = [point(i, chunks=1 + i % 3, user="ann" if i % 2 else "bob") for i in range(700)]
    shard.update(
        qe.UpdateOperation.upsert_points([qe.Point(p.id, edge_vectors(p), p.payload) for p in points])
    )
    shard.flush()
    shard.close()
    (root / "CURRENT").write_text("g000001\n")
    (root / "meta.json").write_text(json.dumps({IMAGE: DIM, TEXT: DIM}))

    store = EdgeStore(settings, build_min_new=0)
    with caplog.at_level(logging.WARNING, logger="visionrag.search.edge_store"):
        assert store.ensure_collection(DIM, DIM) is False
    assert "has layout 1; copying its 700 points into layout 2" in caplog.text
    assert store.count() == 700
    assert [p.name for p in root.glob("g[0-9]*")] == ["g000002"]
    assert json.loads((root / "g000002" / META).read_text()) == {IMAGE: DIM, TEXT: DIM, "layout": LAYOUT}
    assert not (root / "meta.json").exists()
    hits = store.query([Probe(points[9].text[0], TEXT)], Filters(user="ann"), limit=1)
    assert hits[0][0] == points[9].id and hits[0][1] == pytest.approx(1.0, abs=1e-5)
    store.close()
    reopened = EdgeStore(settings, build_min_new=0)  # copied once
    assert reopened.count() == 700 and reopened._current().name == "g000002"
    reopened.close()


def test_an_unreadable_meta_says_how_to_rebuild(store: EdgeStore, settings) -> None:
    store.upsert([point(1)])
    store.close()
    (store._current() / META).write_text('{"image": 8, "te')  # torn by a disk fault
    reopened = EdgeStore(settings)
    with pytest.raises(StoreUnavailable, match=r"unreadable .*visionrag reindex --recreate"):
        reopened.count()
    reopened.close()


def test_leftover_generation_is_removed_on_open(store: EdgeStore, settings) -> None:
    store.upsert([point(1)])
    store.close()
    stale = store.root / "g000099"
    stale.mkdir()
    reopened = EdgeStore(settings)
    assert reopened.count() == 1 and not stale.exists()
    reopened.close()


def test_idle_indexer_builds_the_index_and_searches_go_on(settings, shared_embedders) -> None:
    from tests.search.helpers import diagram, interaction
    from visionrag.search.history import History

    with History(settings, embedders=shared_embedders) as history:
        history.store.builder.min_new = 20
        history.indexer.idle_wait = 0.2  # the indexer looks at the store's maintenance this often when idle
        items = [interaction(f"answer {n}") for n in range(24)]
        for n, item in enumerate(items):
            history.record(item, diagram(n))
        builder = history.store.builder
        wait_for(lambda: "swap_s" in (builder.last or {}), timeout=180, what="the index build")
        assert history.store.info()["indexed_vectors"] >= 48
        assert history.search(None, diagram(5), limit=1, against="images")[0]["id"] == items[5].id
