"""Typed results of the VisionRAG client: plain dataclasses built from the server's JSON.

Each type keeps the JSON it was built from in `raw`, so `to_dict()` gives back exactly what the server
sent, including fields this client version does not know yet.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


@dataclass(frozen=True)
class Usage:
    """Token counts of one answer."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Usage:
        data = data or {}
        return cls(_int(data.get("prompt_tokens")), _int(data.get("completion_tokens")))


@dataclass(frozen=True)
class ContextItem:
    """An earlier interaction an answer was given with (its id, search score and question)."""

    id: str
    score: float = 0.0
    query: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ContextItem:
        return cls(id=str(data.get("id", "")), score=_score(data), query=str(data.get("query") or ""))


@dataclass(frozen=True)
class Answer:
    """The model's answer to one question; `id` is the stored interaction's id (None with store=False).
    With context asked for, `context` lists the earlier interactions the answer was given with, and
    `context_error` says why there are none when the history could not be searched."""

    output: str
    id: str | None = None
    model: str | None = None
    usage: Usage = field(default_factory=Usage)
    finish_reason: str | None = None
    context: list[ContextItem] = field(default_factory=list)
    context_error: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __str__(self) -> str:
        return self.output

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Answer:
        return cls(
            output=str(data.get("output") or ""),
            id=data.get("id"),
            model=data.get("model"),
            usage=Usage.from_dict(data.get("usage")),
            finish_reason=data.get("finish_reason"),
            context=[ContextItem.from_dict(c) for c in data.get("context") or [] if isinstance(c, dict)],
            context_error=data.get("context_error"),
            raw=dict(data),
        )

    def to_dict(self) -> dict[str, Any]:
        return dict(self.raw) or {
            "output": self.output,
            "id": self.id,
            "model": self.model,
            "usage": {
                "prompt_tokens": self.usage.prompt_tokens,
                "completion_tokens": self.usage.completion_tokens,
            },
        }


@dataclass(frozen=True)
class Interaction:
    """One remembered question and answer. `image` is the server path of the stored image copy."""

    id: str
    created_at: datetime | None = None
    query: str = ""
    answer: str = ""
    model: str | None = None
    user: str | None = None
    tags: list[str] = field(default_factory=list)
    image_url: str | None = None
    image: str | None = None
    context: list[str] = field(default_factory=list)  # ids of the interactions it was answered with
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Interaction:
        return cls(
            id=str(data.get("id", "")),
            created_at=_parse_time(data.get("created_at")),
            query=str(data.get("query") or ""),
            answer=str(data.get("answer") or ""),
            model=data.get("model"),
            user=data.get("user"),
            tags=list(data.get("tags") or []),
            image_url=data.get("image_url"),
            image=data.get("image"),
            context=[str(c) for c in data.get("context") or []],
            raw=dict(data),
        )

    def to_dict(self) -> dict[str, Any]:
        if self.raw:
            return dict(self.raw)
        return {
            "id": self.id,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "image_url": self.image_url,
            "query": self.query,
            "answer": self.answer,
            "model": self.model,
            "user": self.user,
            "tags": list(self.tags),
            "image": self.image,
        }


@dataclass(frozen=True)
class Imported:
    """The result of `VisionRAG.add`: the stored interaction, and whether this call stored it (False:
    the same image and text were already in the history)."""

    interaction: Interaction
    created: bool

    @property
    def id(self) -> str:
        return self.interaction.id


@dataclass(frozen=True)
class SearchHit:
    """A search result: the interaction and its relevance `score` (higher is closer)."""

    interaction: Interaction
    score: float

    @property
    def id(self) -> str:
        return self.interaction.id

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchHit:
        return cls(interaction=Interaction.from_dict(data), score=_score(data))

    def to_dict(self) -> dict[str, Any]:
        return {**self.interaction.to_dict(), "score": self.score}


def _score(data: dict[str, Any]) -> float:
    """A result's score; a missing or malformed one reads as 0 (the client never fails on a score)."""
    try:
        return float(data.get("score") or 0.0)
    except (TypeError, ValueError):
        return 0.0
