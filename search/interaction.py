"""One answered request, as the history keeps it. The journal stores it, the index carries it as payload,
and `to_dict()` is the shape of the HTTP contract (DESIGN.md, POST /history/search results)."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


@dataclass
class Interaction:
    """An interaction; `id` is a uuid4 string and is also the vector store's point id (idempotent
    re-indexing), `created_at` is timezone-aware UTC. `Interaction.create(...)` fills both in."""

    id: str
    created_at: datetime
    image_url: str
    query: str
    answer: str
    model: str
    user: str | None
    tags: tuple[str, ...]
    image_sha256: str
    # ids of the earlier interactions this answer was given with as context (RAG); empty for most
    context: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Normalise what callers may reasonably pass: a list of tags, a naive datetime meaning UTC.
        self.tags = tuple(self.tags or ())
        self.context = tuple(self.context or ())
        if self.created_at.tzinfo is None:
            self.created_at = self.created_at.replace(tzinfo=UTC)
        else:
            self.created_at = self.created_at.astimezone(UTC)
        self.id = str(uuid.UUID(str(self.id)))  # ValueError early: the store takes only UUID point ids

    @classmethod
    def create(
        cls,
        *,
        image_url: str,
        query: str,
        answer: str,
        model: str,
        image_bytes: bytes | None = None,
        image_sha256: str | None = None,
        user: str | None = None,
        tags: Iterable[str] = (),
    ) -> Interaction:
        """A new interaction with a fresh id and the current time; the hash is computed from the image's
        original bytes when given."""
        if image_sha256 is None:
            image_sha256 = hashlib.sha256(image_bytes or b"").hexdigest()
        return cls(
            id=str(uuid.uuid4()),
            created_at=datetime.now(UTC),
            image_url=image_url,
            query=query,
            answer=answer,
            model=model,
            image_sha256=image_sha256,
            user=user,
            tags=tuple(tags),
        )

    @property
    def timestamp(self) -> float:
        """Seconds since the epoch; the index filters since/until on this number."""
        return self.created_at.timestamp()

    def to_dict(self) -> dict[str, Any]:
        """The contract's JSON fields (without `score`, which only a search adds)."""
        return {
            "id": self.id,
            "created_at": self.created_at.isoformat(),
            "image_url": self.image_url,
            "query": self.query,
            "answer": self.answer,
            "model": self.model,
            "user": self.user,
            "tags": list(self.tags),
            "image_sha256": self.image_sha256,
            "context": list(self.context),
            "image": f"/history/{self.id}/image",
        }
