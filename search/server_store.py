"""The qdrant-client engine of the history's collection (`Store`): a Qdrant server or Qdrant Cloud
(QDRANT_URL), or qdrant-client's local mode (`QdrantClient(path=data_dir/qdrant)`, one process only,
brute-force NumPy: kept for comparison and for reading data dirs of earlier versions).
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
from visionrag.search.store import IMAGE, RRF_K, TEXT, Filters, Point, Probe, SchemaMismatch, Store

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


class ServerStore(Store):
    """A thin, thread-safe wrapper over the client. In embedded mode calls are serialised (the local
    engine is plain Python over NumPy and SQLite, not built for concurrent writers)."""

    def __init__(self, settings: HistoryConfig) -> None:
        self.settings = settings
        self.collection = settings.collection_name
        self.embedded = settings.embedded_store
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
                    "run `visionrag reindex` to rebuild it"
                )
            return False

    def _create(self, client: QdrantClient, image_dim: int, text_dim: int) -> None:
        client.create_collection(self.collection, vectors_config=self._vectors_config(image_dim, text_dim))
        if not self.embedded:  # the embedded engine ignores payload indexes (and says so)
            for key, kind in (
                ("user", models.PayloadSchemaType.KEYWORD),
                ("tags", models.PayloadSchemaType.KEYWORD),
                ("created_ts", models.PayloadSchemaType.FLOAT),
            ):
                client.create_payload_index(self.collection, key, field_schema=kind)

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
                    with_payload=False,
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
                        with_payload=False,
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
                        with_payload=False,
                    )
        return [(str(p.id), float(p.score)) for p in result.points]
