"""`ServerStore` with a Qdrant server (`QdrantClient(url=...)`), against the REST test double: collection
creation with the distribution settings, the shared reads (payloads, newest first, search with payload,
count of other writers), the image copy kept out of reads, and an outage."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator

import numpy as np
import pytest

from tests.search.qdrant_double import QdrantDouble
from visionrag.search.config import HistoryConfig
from visionrag.search.errors import InvalidQuery, StoreUnavailable
from visionrag.search.server_store import ServerStore
from visionrag.search.store import IMAGE, IMAGE_COPY, TEXT, Filters, Point, Probe, SchemaMismatch

DIM = 8


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=DIM)
    return v / np.linalg.norm(v)


def point(seed: int, writer: str | None = "w1", user: str | None = None, copy: bool = True) -> Point:
    payload = {
        "id": str(uuid.UUID(int=seed + 1, version=4)),
        "created_at": f"2026-01-01T00:00:{seed:02d}+00:00",
        "created_ts": float(seed),
        "answer": f"answer {seed}",
        "user": user,
        "tags": [],
    }
    if writer is not None:
        payload["writer"] = writer
    if copy:
        payload |= {
            IMAGE_COPY: base64.b64encode(b"\x89PNG" + bytes([seed]) * 3000).decode(),
            "image_type": "image/png",
        }
    return Point(id=payload["id"], image=unit(seed), text=[unit(100 + seed)], payload=payload)


@pytest.fixture
def double() -> Iterator[QdrantDouble]:
    d = QdrantDouble(api_key="secret")
    yield d
    d.close()
    assert d.errors == [], d.errors  # every call the store made was well-formed


@pytest.fixture
def config(tmp_path, double: QdrantDouble) -> HistoryConfig:
    return HistoryConfig(
        data_dir=tmp_path,
        collection_name="shared",
        qdrant_url=double.url,
        qdrant_api_key="secret",
        shard_number=3,
        replication_factor=2,
        write_consistency_factor=2,
    )


@pytest.fixture
def store(config: HistoryConfig) -> Iterator[ServerStore]:
    s = ServerStore(config)
    assert s.shared and not s.embedded
    assert s.ensure_collection(DIM, DIM) is True
    yield s
    s.close()


def test_creation_takes_the_distribution_settings_and_indexes(
    store: ServerStore, double: QdrantDouble
) -> None:
    created = double.created["shared"]
    assert (created.shard_number, created.replication_factor, created.write_consistency_factor) == (3, 2, 2)
    assert created.on_disk_payload is True
    indexed = {body.field_name: body.field_schema for _, name, body in double.calls if name == "index"}
    assert indexed == {"user": "keyword", "tags": "keyword", "writer": "keyword", "created_ts": "float"}
    assert store.ensure_collection(DIM, DIM) is False and "shared" in double.created
    with pytest.raises(SchemaMismatch, match="--recreate"):
        store.ensure_collection(DIM, DIM * 2)


def test_shared_reads_never_carry_the_image_copy_unless_asked(
    store: ServerStore, double: QdrantDouble
) -> None:
    points = [point(i, writer="w1" if i < 4 else "w2", user="ann" if i % 2 else None) for i in range(6)]
    points.append(point(6, writer=None, copy=False))  # written by an earlier version
    store.upsert(points)
    hits = store.search([Probe(unit(2), IMAGE), Probe(unit(102), TEXT)], None, limit=3)
    assert hits[0][0]["id"] == points[2].id and hits[0][0]["answer"] == "answer 2"
    assert all(IMAGE_COPY not in payload for payload, _ in hits)
    got = store.payloads([points[1].id, points[6].id, str(uuid.uuid4())])
    assert set(got) == {points[1].id, points[6].id} and IMAGE_COPY not in got[points[1].id]
    with_image = store.payloads([points[1].id, points[6].id], image=True)
    assert with_image[points[1].id][IMAGE_COPY] == points[1].payload[IMAGE_COPY]
    assert IMAGE_COPY not in with_image[points[6].id]  # old point: no copy, no error
    # newest first (order_by created_ts), by user, and pages further on
    assert [p["id"] for p in store.newest(3)] == [points[i].id for i in (6, 5, 4)]
    assert [p["id"] for p in store.newest(2, offset=3)] == [points[i].id for i in (3, 2)]
    assert [p["id"] for p in store.newest(5, user="ann")] == [points[i].id for i in (5, 3, 1)]
    assert [p["id"] for p in store.newest(5, offset=1, user="ann")] == [points[i].id for i in (3, 1)]
    assert all(IMAGE_COPY not in p for p in store.newest(10))
    with pytest.raises(InvalidQuery, match="offset"):
        store.newest(10, offset=1_000_000)
    for _, name, body in double.calls:
        if name in ("query", "scroll"):
            assert body.with_payload is not False and IMAGE_COPY not in (body.with_payload or [])
    # the query itself filters and pages like the embedded engine
    assert {p["id"] for p, _ in store.search([Probe(unit(1), IMAGE)], Filters(user="ann"), 10)} == {
        points[i].id for i in (1, 3, 5)
    }
    assert store.count() == 7 and store.count_other_writers("w1") == 3  # two of w2, one without a writer
    store.delete([points[0].id])
    assert store.count_other_writers("w2") == 4 and store.count() == 6


def test_outage_raises_store_unavailable_and_recovers(store: ServerStore, double: QdrantDouble) -> None:
    store.upsert([point(1)])
    double.down()
    for call in (
        lambda: store.upsert([point(2)]),
        lambda: store.payloads([point(1).id]),
        lambda: store.newest(5),
        lambda: store.search([Probe(unit(1), IMAGE)], None, 5),
        store.count,
    ):
        with pytest.raises(StoreUnavailable, match="unreachable"):
            call()
    double.up()
    store.upsert([point(2)])
    assert store.count() == 2 and store.payloads([point(1).id])


def test_a_wrong_api_key_is_a_clear_store_error(config: HistoryConfig, double: QdrantDouble) -> None:
    s = ServerStore(config.replace(qdrant_api_key="wrong"))
    with pytest.raises(StoreUnavailable, match="401"):
        s.ensure_collection(DIM, DIM)
    s.close()
    double.errors.clear()  # the double recorded the refused call, as it should


def test_the_double_refuses_what_a_qdrant_server_would(store: ServerStore, double: QdrantDouble) -> None:
    """The double is only worth its tests if a malformed call fails: bodies go through the client's schema."""
    import requests

    headers = {"api-key": "secret"}
    bad = requests.post(f"{double.url}/collections/shared/points/query", json={"bogus": 1}, headers=headers)
    assert bad.status_code == 422 and "QueryRequest" in bad.json()["status"]["error"]
    ordered = {"order_by": {"key": "created_ts"}, "offset": str(uuid.uuid4())}
    skip = requests.post(f"{double.url}/collections/shared/points/scroll", json=ordered, headers=headers)
    assert skip.status_code == 400 and "offset with order_by" in skip.text
    unknown = requests.post(f"{double.url}/collections/shared/points/search", json={}, headers=headers)
    assert unknown.status_code == 404
    assert len(double.errors) == 3
    double.errors.clear()
