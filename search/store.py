"""The history's vector collection, engine-neutral: one point per interaction (point id = interaction id,
so indexing twice overwrites instead of duplicating), two named vectors:

* `image`: the CLIP vision embedding of the stored image copy (dense, cosine);
* `text`: the CLIP text embeddings of the answer's windows (multivector, cosine, MAX_SIM), see embedders.py.

One module per engine implements `Store`: edge_store.py (qdrant-edge, Qdrant's engine embedded in this
process: the default) and server_store.py (qdrant-client, for QDRANT_URL: a Qdrant server or Qdrant Cloud;
it is also a `SharedStore`, one collection for many replicas; its local mode only reads data dirs of
earlier versions and serves the side-by-side benchmark). `open_store` picks one from the config; nothing
else in search/ knows which it talks to.
Every failure to reach the store becomes `StoreUnavailable`, which the indexer answers with backoff and retry.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from visionrag.search.config import HistoryConfig
from visionrag.search.errors import HistoryError, InvalidQuery

IMAGE, TEXT = "image", "text"
TARGETS = {"images": IMAGE, "answers": TEXT}
RRF_K = 2  # Qdrant's default ranking constant, set explicitly because the fusion weights depend on it
# Payload keys beside the interaction's own fields (Interaction.to_dict without `image`): the creation time
# as a number (range filters, newest-first order), the replica that wrote the point, and on a shared store
# the stored image copy (base64, not indexed) and its media type.
CREATED_TS, WRITER, IMAGE_COPY, IMAGE_TYPE = "created_ts", "writer", "image_copy", "image_type"
# What reads fetch: everything an HTTP result shows, never the image copy.
READ_FIELDS = (
    "id",
    "created_at",
    "image_url",
    "query",
    "answer",
    "model",
    "user",
    "tags",
    "image_sha256",
    "context",
    CREATED_TS,
    IMAGE_TYPE,
)


class SchemaMismatch(HistoryError):
    """The collection exists with other vector sizes than the models give (the CLIP model changed)."""


@dataclass(frozen=True)
class Point:
    id: str
    image: Sequence[float]
    text: Sequence[Sequence[float]]  # one vector per answer window
    payload: dict[str, Any]


@dataclass(frozen=True)
class Probe:
    """One query vector against one named vector (`IMAGE` or `TEXT`), and its weight in a fusion."""

    vector: Sequence[float]
    using: str
    weight: float = 1.0


@dataclass(frozen=True)
class Filters:
    """since/until bound the creation timestamp (inclusive); every given tag must be present."""

    since: float | None = None
    until: float | None = None
    user: str | None = None
    tags: Sequence[str] = field(default_factory=tuple)

    def __bool__(self) -> bool:
        return self.since is not None or self.until is not None or self.user is not None or bool(self.tags)


class Store(ABC):
    """What the history needs from a vector engine. Implementations are thread-safe."""

    embedded: bool
    # True when other processes write to the same collection (SharedStore): the collection, not this
    # process's journal, is then the truth for reads.
    shared: bool = False

    @property
    @abstractmethod
    def where(self) -> str:
        """Where the collection lives, for messages and logs."""

    @abstractmethod
    def ensure_collection(self, image_dim: int, text_dim: int) -> bool:
        """Create the collection if missing (True when it was created); check its sizes otherwise."""

    @abstractmethod
    def recreate(self, image_dim: int, text_dim: int) -> None:
        """Drop and create the collection (reindex)."""

    @abstractmethod
    def count(self) -> int: ...

    @abstractmethod
    def upsert(self, points: Sequence[Point]) -> None: ...

    @abstractmethod
    def delete(self, ids: Sequence[str]) -> None: ...

    @abstractmethod
    def retrieve(self, ids: Sequence[str]) -> set[str]:
        """Which of these ids have a point."""

    @abstractmethod
    def query(
        self, probes: Sequence[Probe], filters: Filters | None, limit: int, offset: int = 0
    ) -> list[tuple[str, float]]:
        """(id, score) best first. One probe: its cosine score (MAX_SIM for `text`). Several: each probe is a
        prefetch and the ranked lists are fused with weighted Reciprocal Rank Fusion (k = RRF_K)."""

    @abstractmethod
    def close(self) -> None: ...

    def maintain(self) -> float | None:
        """Background upkeep, called by the indexer when it is idle (the embedded engine builds its
        index here). Returns seconds until it wants the next call, None when nothing is under way."""
        return None

    def collection_exists(self) -> bool:
        """Whether the collection exists (start-up migration); engines without a cheap answer say True."""
        return True


NEWEST_OFFSET_LIMIT = 10_000  # ordered scrolls cannot skip: `newest` reads the ids before its page


def check_newest_offset(offset: int) -> None:
    """Listing a shared collection pages by reading what comes before: bounded, with a way out."""
    if offset > NEWEST_OFFSET_LIMIT:
        raise InvalidQuery(
            f"offset past {NEWEST_OFFSET_LIMIT} is not supported on a shared Qdrant collection; "
            "filter by user or search with since/until instead"
        )


class SharedStore(Store):
    """A collection that several servers (replicas) write to. Reads that the journal answers for a single
    server come from the collection here, so each replica sees every other replica's interactions. Points
    carry the interaction as payload; `payloads` and `newest` return it (with the point id as `id`) without
    the image copy unless asked, so listing and search stay light."""

    @abstractmethod
    def payloads(self, ids: Sequence[str], image: bool = False) -> dict[str, dict[str, Any]]:
        """The payload of each of these ids that has a point; with `image`, the stored image copy too."""

    @abstractmethod
    def newest(self, limit: int, offset: int = 0, user: str | None = None) -> list[dict[str, Any]]:
        """Payloads newest first (by `created_ts`), optionally of one user; offset <= NEWEST_OFFSET_LIMIT."""

    @abstractmethod
    def search(
        self, probes: Sequence[Probe], filters: Filters | None, limit: int, offset: int = 0
    ) -> list[tuple[dict[str, Any], float]]:
        """Like `query`, with each hit's payload (no image copy)."""

    @abstractmethod
    def collection_exists(self) -> bool: ...

    @abstractmethod
    def count_other_writers(self, writer: str) -> int:
        """Points whose payload does not name `writer` as the replica that wrote them."""


def open_store(config: HistoryConfig) -> Store:
    """The engine for this config: a Qdrant server / Cloud with QDRANT_URL, the embedded store otherwise."""
    if config.embedded_store:
        from visionrag.search.edge_store import EdgeStore

        return EdgeStore(config)
    from visionrag.search.server_store import ServerStore

    return ServerStore(config)
