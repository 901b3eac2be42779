"""The history's collection in qdrant-edge's terms: vector parameters, payload indexes, filters, search
parameters, and the layout number that says which of these a shard on disk was made with."""

from __future__ import annotations

from typing import Any

import qdrant_edge as qe

from visionrag.search.store import IMAGE, TEXT, Filters, Point, Probe

PAYLOAD_INDEXES = (
    ("user", qe.PayloadSchemaType.Keyword),
    ("tags", qe.PayloadSchemaType.Keyword),
    ("created_ts", qe.PayloadSchemaType.Float),
)
# HNSW graph parameters (Qdrant's defaults); full_scan_threshold in KB: a filter that leaves fewer vectors
# than this is scored exactly through the payload index instead of walking the graph.
HNSW = {"m": 16, "ef_construct": 100, "full_scan_threshold": 10_000}
# The `text` multivector gets no graph (m=0) but an int8 copy (4x less memory to scan), searched exactly
# and rescored on the float vectors: an HNSW graph over MAX_SIM compares every pair of points chunk by
# chunk, and its build at 100k points did not finish in 23 CPU-minutes, while the int8 scan answers a
# 100k-point MAX_SIM query in ~15 ms with the same top 10 (BENCHMARKS.md, issue 12). `image` keeps HNSW.
TEXT_HNSW = {**HNSW, "m": 0}
OVERSAMPLING = 2.0  # int8 candidates per result, rescored on the float vectors
# 1: multivector HNSW on `text`; 2: `text` int8-quantized without a graph. An older shard is copied.
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
    return qe.EdgeConfig(
        vectors={
            IMAGE: qe.EdgeVectorParams(image_dim, qe.Distance.Cosine),
            TEXT: qe.EdgeVectorParams(
                text_dim,
                qe.Distance.Cosine,
                multivector_config=qe.MultiVectorConfig(qe.MultiVectorComparator.MaxSim),
                hnsw_config=qe.HnswIndexConfig(**TEXT_HNSW),
                quantization_config=qe.ScalarQuantizationConfig(qe.ScalarType.Int8, always_ram=True),
            ),
        },
        hnsw_config=qe.HnswIndexConfig(**HNSW),
        # the optimizer runs only when we call it (edge_build.py decides when): index whatever is plain then
        optimizers=qe.EdgeOptimizersConfig(indexing_threshold=1),
    )


def search_params(probe: Probe) -> qe.SearchParams | None:
    """`text` is scanned on its int8 copy; the best candidates are rescored on the float vectors."""
    if probe.using != TEXT:
        return None
    return qe.SearchParams(quantization=qe.QuantizationSearchParams(rescore=True, oversampling=OVERSAMPLING))


def edge_vectors(point: Point) -> dict[str, Any]:
    return {IMAGE: [float(x) for x in point.image], TEXT: [[float(x) for x in v] for v in point.text]}
