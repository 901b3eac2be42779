"""The qdrant-client engine of the history's collection (`Store`): a Qdrant server or Qdrant Cloud
(QDRANT_URL), or qdrant-client's local mode (`QdrantClient(path=data_dir/qdrant)`, one process only,
brute-force NumPy: kept for comparison and for reading data dirs of earlier versions).

With QDRANT_URL it is a `SharedStore`: any number of replicas write to one collection and read everything
from it. Reads select payload fields (`READ_FIELDS`), so the image copy each point carries travels only
when `GET /history/{id}/image` asks for it. A new collection takes the distribution settings of the config
(shards, replication, write consistency, on-disk payload) and payload indexes on the filtered fields.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ApiException, UnexpectedResponse

from visionrag.search.config import HistoryConfig
from visionrag.search.errors import StoreUnavailable
from visionrag.search.store import (
    CREATED_TS,
    IMAGE,
    IMAGE_COPY,
    READ_FIELDS,
    RRF_K,
    TEXT,
    WRITER,
    Filters,
    Point,
    Probe,
    SchemaMismatch,
    SharedStore,
    check_newest_offset,
)

log = logging.getLogger(__name__)


def build_filter(filters: Filters | None) -> models.Filter | None:
    """Qdrant's form of the engine-neutral filters."""
    if not filters:
        return None
    must: list[models.Condition] = []
    if filters.since is not None or filters.until is not None:
        must.append(
            models.FieldCondition(key="created_ts", range=models.Range(gte=filters.since, lte=filters.until))
        )
    if filters.user is not None:
        must.append(models.FieldCondition(key="user", match=models.MatchValue(value=filters.user)))
    for tag in filters.tags:
        must.append(models.FieldCondition(key="tags", match=models.MatchValue(value=tag)))
    return models.Filter(must=must)


# Payload indexes of a new collection on a server: the filtered fields, and `writer` for reindex's count.
PAYLOAD_INDEXES = (
    ("user", models.PayloadSchemaType.KEYWORD),
    ("tags", models.PayloadSchemaType.KEYWORD),
    (WRITER, models.PayloadSchemaType.KEYWORD),
    (CREATED_TS, models.PayloadSchemaType.FLOAT),  # range filters and newest-first order (order_by)
)


class ServerStore(SharedStore):
    """A thin, thread-safe wrapper over the client. In embedded mode calls are serialised (the local
    engine is plain Python over NumPy and SQLite, not built for concurrent writers)."""

    def __init__(self, settings: HistoryConfig) -> None:
        self.settings = settings
        self.collection = settings.collection_name
        self.embedded = settings.embedded_store
        self.shared = not self.embedded
        self._client: QdrantClient | None = None
        self._connect_lock = threading.Lock()
        self._lock: contextlib.AbstractContextManager = (
            threading.RLock() if self.embedded else contextlib.nullcontext()
        )

    @property
    def where(self) -> str:
        return str(self.settings.data_dir / "qdrant") if self.embedded else str(self.settings.qdrant_url)

    # -- connection -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _calling(self, what: str) -> Iterator[QdrantClient]:
        """Run a client call, translating transport failures into StoreUnavailable."""
        with self._lock:
            try:
                yield self._connect()
            except (StoreUnavailable, SchemaMismatch):
                raise
            except UnexpectedResponse as exc:
                raise StoreUnavailable(
                    f"vector store at {self.where} answered {exc.status_code} to {what}: {exc.reason_phrase}"
                ) from exc
            except (ApiException, httpx.HTTPError, OSError, TimeoutError) as exc:
                raise StoreUnavailable(f"vector store at {self.where} unreachable ({what}): {exc}") from exc

    def _connect(self) -> QdrantClient:
        if self._client is not None:
            return self._client
        with self._connect_lock:
            if self._client is None:
                self._client = self._new_client()
        return self._client

    def _new_client(self) -> QdrantClient:
        if self.embedded:
            path = self.settings.data_dir / "qdrant"
            path.mkdir(parents=True, exist_ok=True)
            try:
                return QdrantClient(path=str(path))
            except RuntimeError as exc:  # the folder lock: another process owns the embedded store
                raise StoreUnavailable(
                    f"the embedded store {path} is in use by another process; stop it (the server) or set "
                    f"QDRANT_URL: {exc}"
                ) from exc
        return QdrantClient(
            url=self.settings.qdrant_url,
            api_key=self.settings.qdrant_api_key,
            timeout=10,
            check_compatibility=False,  # it would make a request in the constructor
        )

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                with contextlib.suppress(Exception):
                    self._client.close()
                self._client = None

    # -- collection -------------------------------------------------------------------------------
    def _vectors_config(self, image_dim: int, text_dim: int) -> dict[str, models.VectorParams]:
        return {
            IMAGE: models.VectorParams(size=image_dim, distance=models.Distance.COSINE),
            TEXT: models.VectorParams(
                size=text_dim,
                distance=models.Distance.COSINE,
                multivector_config=models.MultiVectorConfig(comparator=models.MultiVectorComparator.MAX_SIM),
            ),
        }

    def ensure_collection(self, image_dim: int, text_dim: int) -> bool:
        """Create the collection if missing (True when it was created); check its sizes otherwise."""
        with self._calling("ensure the collection") as client:
            if not client.collection_exists(self.collection):
                self._create(client, image_dim, text_dim)
                return True
            params = client.get_collection(self.collection).config.params.vectors
            have = {name: p.size for name, p in params.items()} if isinstance(params, dict) else {}
            want = {IMAGE: image_dim, TEXT: text_dim}
            if have != want:
                raise SchemaMismatch(
                    f"collection {self.collection!r} has vectors {have} but the CLIP models give {want}; "
                    "run `visionrag reindex --recreate` to rebuild it"
                )
            return False

    def _create(self, client: QdrantClient, image_dim: int, text_dim: int) -> None:
        if self.embedded:  # local mode ignores distribution and payload indexes (and warns about the latter)
            client.create_collection(
                self.collection, vectors_config=self._vectors_config(image_dim, text_dim)
            )
            return
        cfg = self.settings
        client.create_collection(
            self.collection,
            vectors_config=self._vectors_config(image_dim, text_dim),
            shard_number=cfg.shard_number,
            replication_factor=cfg.replication_factor,
            write_consistency_factor=cfg.write_consistency_factor,
            on_disk_payload=cfg.on_disk_payload,
        )
        for key, kind in PAYLOAD_INDEXES:
            client.create_payload_index(self.collection, key, field_schema=kind, wait=True)

    def recreate(self, image_dim: int, text_dim: int) -> None:
        """Drop and create the collection (reindex)."""
        with self._calling("recreate the collection") as client:
            if client.collection_exists(self.collection):
                client.delete_collection(self.collection)
            self._create(client, image_dim, text_dim)

    def count(self) -> int:
        with self._calling("count") as client:
            return client.count(self.collection, exact=True).count

    # -- points -----------------------------------------------------------------------------------
    def upsert(self, points: Sequence[Point]) -> None:
        if not points:
            return
        structs = [
            models.PointStruct(
                id=p.id,
                vector={IMAGE: [float(x) for x in p.image], TEXT: [[float(x) for x in v] for v in p.text]},
                payload=p.payload,
            )
            for p in points
        ]
        with self._calling("upsert") as client:
            client.upsert(self.collection, points=structs, wait=True)

    def delete(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        with self._calling("delete") as client:
            client.delete(self.collection, points_selector=models.PointIdsList(points=list(ids)), wait=True)

    def retrieve(self, ids: Sequence[str]) -> set[str]:
        """Which of these ids have a point (tests, diagnostics)."""
        with self._calling("retrieve") as client:
            return {str(p.id) for p in client.retrieve(self.collection, ids=list(ids), with_payload=False)}

    def query(
        self, probes: Sequence[Probe], filters: Filters | None, limit: int, offset: int = 0
    ) -> list[tuple[str, float]]:
        return [(str(p.id), float(p.score)) for p in self._query(probes, filters, limit, offset, False)]

    def search(
        self, probes: Sequence[Probe], filters: Filters | None, limit: int, offset: int = 0
    ) -> list[tuple[dict[str, Any], float]]:
        points = self._query(probes, filters, limit, offset, list(READ_FIELDS))
        return [(_with_id(p.id, p.payload), float(p.score)) for p in points]

    def _query(
        self, probes: Sequence[Probe], filters: Filters | None, limit: int, offset: int, with_payload: Any
    ) -> list[models.ScoredPoint]:
        query_filter = build_filter(filters)

        def query_of(probe: Probe) -> Any:
            vector = [float(x) for x in probe.vector]
            return [vector] if probe.using == TEXT else vector  # the multivector takes a list of vectors

        with self._calling("search") as client:
            if len(probes) == 1:
                result = client.query_points(
                    self.collection,
                    query=query_of(probes[0]),
                    using=probes[0].using,
                    query_filter=query_filter,
                    limit=limit,
                    offset=offset,
                    with_payload=with_payload,
                )
            else:
                depth = max(offset + limit, 50)  # each list must reach past the requested page to fuse well
                prefetch = [
                    models.Prefetch(query=query_of(p), using=p.using, filter=query_filter, limit=depth)
                    for p in probes
                ]
                fusion: Any = models.RrfQuery(rrf=models.Rrf(k=RRF_K, weights=[p.weight for p in probes]))
                try:
                    result = client.query_points(
                        self.collection,
                        prefetch=prefetch,
                        query=fusion,
                        query_filter=query_filter,
                        limit=limit,
                        offset=offset,
                        with_payload=with_payload,
                    )
                except UnexpectedResponse as exc:
                    if exc.status_code not in (400, 422):
                        raise
                    # a Qdrant server older than weighted RRF: plain RRF
                    result = client.query_points(
                        self.collection,
                        prefetch=prefetch,
                        query=models.FusionQuery(fusion=models.Fusion.RRF),
                        query_filter=query_filter,
                        limit=limit,
                        offset=offset,
                        with_payload=with_payload,
                    )
        return result.points

    # -- shared reads ----------------------------------------------------------------------------
    def payloads(self, ids: Sequence[str], image: bool = False) -> dict[str, dict[str, Any]]:
        if not ids:
            return {}
        fields = [*READ_FIELDS, IMAGE_COPY] if image else list(READ_FIELDS)
        with self._calling("retrieve") as client:
            records = client.retrieve(self.collection, ids=list(ids), with_payload=fields)
        return {str(r.id): _with_id(r.id, r.payload) for r in records}

    def newest(self, limit: int, offset: int = 0, user: str | None = None) -> list[dict[str, Any]]:
        """Newest first through `order_by` on the indexed `created_ts`. Ordered scrolls cannot skip, so a
        later page reads the ids (and timestamps) before it, then the page's payloads."""
        check_newest_offset(offset)
        order = models.OrderBy(key=CREATED_TS, direction=models.Direction.DESC)
        scroll_filter = build_filter(Filters(user=user)) if user is not None else None
        with self._calling("list") as client:
            if offset == 0:
                records, _ = client.scroll(
                    self.collection,
                    scroll_filter=scroll_filter,
                    limit=limit,
                    order_by=order,
                    with_payload=list(READ_FIELDS),
                )
                return [_with_id(r.id, r.payload) for r in records]
            heads, _ = client.scroll(
                self.collection,
                scroll_filter=scroll_filter,
                limit=offset + limit,
                order_by=order,
                with_payload=[CREATED_TS],
            )
            page = [str(r.id) for r in heads[offset:]]
        found = self.payloads(page)
        return [found[i] for i in page if i in found]

    def collection_exists(self) -> bool:
        with self._calling("look for the collection") as client:
            return client.collection_exists(self.collection)

    def count_other_writers(self, writer: str) -> int:
        others = models.Filter(
            must_not=[models.FieldCondition(key=WRITER, match=models.MatchValue(value=writer))]
        )
        with self._calling("count") as client:
            return client.count(self.collection, count_filter=others, exact=True).count


def _with_id(id: Any, payload: dict[str, Any] | None) -> dict[str, Any]:
    """The payload with the point id as `id` (the point id is the truth; old payloads may lack the field)."""
    return {**(payload or {}), "id": str(id)}
