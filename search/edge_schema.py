"""The history's collection in qdrant-edge's terms: vector parameters, payload indexes, filters, search
parameters, and the layout number that says which of these a shard on disk was made with."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import qdrant_edge as qe

from visionrag.search.store import IMAGE, TEXT, Filters, Point

PAYLOAD_INDEXES = (
    ("user", qe.PayloadSchemaType.Keyword),
    ("tags", qe.PayloadSchemaType.Keyword),
    ("created_ts", qe.PayloadSchemaType.Float),
)
# Both vectors are searched exactly, without an HNSW graph (m=0), on an int8 copy (4x less memory to scan;
# built by `optimize()`, see edge_build.py); the best OVERSAMPLING x limit candidates are rescored on the
# float vectors, so scores are the exact cosine / MAX_SIM. Measured at 100k points on the 2-core box
# (BENCHMARKS.md, issue 12): 3 ms (`image`) and 16-22 ms (`text`) per query with recall@10 = 1.0 on any
# data, a 6 s build; with an HNSW graph on `image`, 3 ms but recall@10 0.16-0.29 on unclustered vectors
# and a 189 s build; with one on the `text` multivector, a build that did not finish in 23 CPU-minutes.
# full_scan_threshold (KB): Qdrant's default, kept for the payload-index path of filtered searches.
NO_GRAPH = {"m": 0, "ef_construct": 100, "full_scan_threshold": 10_000}
OVERSAMPLING = 2.0
# 1: HNSW on both vectors, no int8 copies; 2: int8 copies, no graph. A shard of an older layout is copied.
LAYOUT = 2


def build_filter(filters: Filters | None) -> qe.Filter | None:
    """qdrant-edge's form of the engine-neutral filters."""
    if not filters:
        return None
    must: list[Any] = []
    if filters.since is not None or filters.until is not None:
        must.append(
            qe.FieldCondition("created_ts", range=qe.RangeFloat(gte=filters.since, lte=filters.until))
        )
    if filters.user is not None:
        must.append(qe.FieldCondition("user", match=qe.MatchValue(filters.user)))
    for tag in filters.tags:
        must.append(qe.FieldCondition("tags", match=qe.MatchValue(tag)))
    return qe.Filter(must=must)


def edge_config(image_dim: int, text_dim: int) -> qe.EdgeConfig:
    def params(size: int, **extra: Any) -> qe.EdgeVectorParams:
        return qe.EdgeVectorParams(
            size,
            qe.Distance.Cosine,
            hnsw_config=qe.HnswIndexConfig(**NO_GRAPH),
            quantization_config=qe.ScalarQuantizationConfig(qe.ScalarType.Int8, always_ram=True),
            **extra,
        )

    return qe.EdgeConfig(
        vectors={
            IMAGE: params(image_dim),
            TEXT: params(text_dim, multivector_config=qe.MultiVectorConfig(qe.MultiVectorComparator.MaxSim)),
        },
        hnsw_config=qe.HnswIndexConfig(**NO_GRAPH),
        # the optimizer runs only when we call it (edge_build.py decides when): index whatever is plain then
        optimizers=qe.EdgeOptimizersConfig(indexing_threshold=1),
    )


def search_params() -> qe.SearchParams:
    """Scan the int8 copy; rescore the best candidates on the float vectors."""
    return qe.SearchParams(quantization=qe.QuantizationSearchParams(rescore=True, oversampling=OVERSAMPLING))


def edge_vectors(point: Point) -> dict[str, Any]:
    return {IMAGE: [float(x) for x in point.image], TEXT: [[float(x) for x in v] for v in point.text]}


def point_copies(records: Sequence[qe.Record]) -> list[qe.Point]:
    """Points to upsert from records read with their vectors and payloads (shard to shard)."""
    return [qe.Point(r.id, r.vector, r.payload) for r in records]
