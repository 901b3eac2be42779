"""What the history layer needs to know, as its own small value: `search/` is a lower layer than the
server and never imports its settings. The server builds one from its Settings (`Settings.history_config`);
tests and tools can build one directly."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class HistoryConfig:
    data_dir: Path = Path("./data")
    collection_name: str = "visionrag_history"
    qdrant_url: str | None = None
    qdrant_api_key: str | None = None
    text_model: str = "Qdrant/clip-ViT-B-32-text"
    image_model: str = "Qdrant/clip-ViT-B-32-vision"
    text_model_path: Path | None = None
    image_model_path: Path | None = None
    embed_threads: int = 1
    # CLIP threads for search queries (a user waits on these); 0: min(4, CPU cores). When it differs from
    # embed_threads, queries get their own ONNX sessions (one more copy of each CLIP model in memory).
    query_threads: int = 0
    # Collection creation on a Qdrant server or cluster (ignored by the embedded store). None: the
    # server's own default (for shard_number: one shard per node, so a cluster spreads the history).
    shard_number: int | None = None
    replication_factor: int | None = None
    write_consistency_factor: int | None = None
    on_disk_payload: bool = True  # the payload carries the image copies: keep it off the RAM

    @property
    def embedded_store(self) -> bool:
        return not self.qdrant_url

    def replace(self, **changes: Any) -> HistoryConfig:
        return dataclasses.replace(self, **changes)
