"""VisionRAG's Python client and the `visionrag` command line.

from visionrag.clients import VisionRAG
answer = VisionRAG("http://localhost:8000").ask("diagram.png", "What does this show?")
"""

from visionrag.clients.client import DEFAULT_URL, Stream, VisionRAG
from visionrag.clients.errors import (
    APIError,
    BadRequest,
    ConnectionFailed,
    InvalidArgument,
    NotFound,
    PayloadTooLarge,
    ServerError,
    ServiceUnavailable,
    Timeout,
    Unauthorized,
    UnprocessableEntity,
    UnsupportedMediaType,
    VisionRAGError,
)
from visionrag.clients.types import Answer, ContextItem, Imported, Interaction, SearchHit, Usage

__all__ = [
    "DEFAULT_URL",
    "APIError",
    "Answer",
    "BadRequest",
    "ConnectionFailed",
    "ContextItem",
    "Imported",
    "Interaction",
    "InvalidArgument",
    "NotFound",
    "PayloadTooLarge",
    "SearchHit",
    "ServerError",
    "ServiceUnavailable",
    "Stream",
    "Timeout",
    "Unauthorized",
    "UnprocessableEntity",
    "UnsupportedMediaType",
    "Usage",
    "VisionRAG",
    "VisionRAGError",
]
