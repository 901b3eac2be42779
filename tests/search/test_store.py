"""The Qdrant store, embedded (the real local engine) and unreachable (a closed loopback port)."""

from __future__ import annotations

import socket
import uuid

import numpy as np
import pytest

from visionrag.search.errors import StoreUnavailable
from visionrag.search.server_store import ServerStore as Store
from visionrag.search.store import IMAGE, TEXT, Filters, Point, Probe, SchemaMismatch

DIM = 8


def unit(seed: int, dim: int = DIM) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=dim)
    return v / np.linalg.norm(v)


def point(seed: int, chunks: int = 1, **payload) -> Point:
    return Point(
        id=str(uuid.UUID(int=seed + 1, version=4)),
        image=unit(seed),
        text=[unit(1000 + seed * 10 + k) for k in range(chunks)],
        payload={"created_ts": float(seed), "user": payload.get("user"), "tags": payload.get("tags", [])},
    )


@pytest.fixture
def store(settings):
    s = Store(settings)
    assert s.ensure_collection(DIM, DIM) is True
    yield s
    s.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_collection_is_created_once_and_checked(store: Store) -> None:
    assert store.ensure_collection(DIM, DIM) is False
    with pytest.raises(SchemaMismatch):
        store.ensure_collection(DIM, DIM * 2)


def test_upsert_is_idempotent_and_queries_each_vector(store: Store) -> None:
    points = [point(i, chunks=3) for i in range(10)]
    store.upsert(points)
    store.upsert(points[:4])  # same ids again: overwritten, not added
    assert store.count() == 10
    hits = store.query([Probe(unit(3), IMAGE)], None, limit=3)
    assert hits[0][0] == points[3].id and hits[0][1] == pytest.approx(1.0, abs=1e-5)
    # MAX_SIM: one query vector equal to the LAST window of point 6 finds point 6 with score 1
    last_window = points[6].text[2]
    hits = store.query([Probe(last_window, TEXT)], None, limit=3)
    assert hits[0][0] == points[6].id and hits[0][1] == pytest.approx(1.0, abs=1e-5)


def test_fusion_pages_and_filters(store: Store) -> None:
    points = [
        point(i, user="ann" if i % 2 else "bob", tags=["x"] if i < 5 else ["x", "y"]) for i in range(10)
    ]
    store.upsert(points)
    probes = [Probe(unit(4), IMAGE), Probe(points[4].text[0], TEXT)]
    fused = store.query(probes, None, limit=10)
    assert fused[0][0] == points[4].id
    assert len({i for i, _ in fused}) == 10
    page = store.query(probes, None, limit=3, offset=3)
    assert [i for i, _ in page] == [i for i, _ in fused[3:6]]
    ids = lambda hits: {i for i, _ in hits}  # noqa: E731
    by = {p.id: p for p in points}
    assert all(by[i].payload["user"] == "ann" for i in ids(store.query(probes, Filters(user="ann"), 10)))
    assert ids(store.query(probes, Filters(tags=["x", "y"]), 10)) == {p.id for p in points[5:]}
    assert ids(store.query(probes, Filters(since=2, until=4), 10)) == {p.id for p in points[2:5]}


def test_delete(store: Store) -> None:
    points = [point(i) for i in range(3)]
    store.upsert(points)
    store.delete([points[1].id])
    assert store.retrieve([p.id for p in points]) == {points[0].id, points[2].id}
    assert points[1].id not in {i for i, _ in store.query([Probe(unit(1), IMAGE)], None, limit=10)}


def test_unreachable_url_is_store_unavailable(settings) -> None:
    s = Store(settings.replace(qdrant_url=f"http://127.0.0.1:{closed_port()}"))
    assert not s.embedded
    with pytest.raises(StoreUnavailable, match="unreachable"):
        s.ensure_collection(DIM, DIM)
    with pytest.raises(StoreUnavailable):
        s.query([Probe(unit(0), IMAGE)], None, limit=1)
    s.close()


def test_embedded_store_has_one_owner(store: Store, settings) -> None:
    other = Store(settings)
    with pytest.raises(StoreUnavailable, match="in use by another process"):
        other.count()
