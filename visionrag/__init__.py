"""VisionRAG: a model server for Llama 3.2 Vision that remembers every answer.

The repository keeps its folders (server/, search/, clients/); the install maps them to
`visionrag.server`, `visionrag.search` and `visionrag.clients`. The client is the public import:

    from visionrag import VisionRAG
"""

from visionrag.clients import (
    Answer,
    APIError,
    Interaction,
    SearchHit,
    Usage,
    VisionRAG,
    VisionRAGError,
)

__all__ = ["APIError", "Answer", "Interaction", "SearchHit", "Usage", "VisionRAG", "VisionRAGError"]
