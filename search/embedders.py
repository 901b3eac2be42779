"""CLIP embedders (fastembed, ONNX on CPU): images, queries, and whole answers.

CLIP's text encoder reads 77 tokens and silently drops the rest, while an answer is often hundreds of
tokens. An answer is therefore split into overlapping windows that each fit the context (counted with the
model's own tokenizer), every window is embedded, and the answer's `text` vector is the set of window
vectors (a Qdrant multivector compared with MAX_SIM): a query matches an answer as well as it matches its
best window, wherever that window lies.

Models load lazily (the first embedding), from `TEXT_MODEL_PATH` / `IMAGE_MODEL_PATH` with
`local_files_only=True` when set, so nothing ever reaches a model hub in that case.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from visionrag.search.config import HistoryConfig

CLIP_CONTEXT = 77
SPECIAL_TOKENS = 2  # start and end of text
OVERLAP_TOKENS = 16
MAX_CHUNKS = 128  # ~7,000 tokens: more than the longest answer the server generates (4,096 Llama tokens)

TokenCounter = Callable[[list[str]], list[int]]


def _rough_token_counts(words: list[str]) -> list[int]:
    """Fallback when fastembed does not expose the tokenizer: a byte-level BPE never makes more tokens of a
    word than its UTF-8 bytes (+1 for a leading-space token), so windows always fit, at the price of
    ~5x more windows than needed for English text."""
    return [len(w.encode("utf-8")) + 1 for w in words]


def chunk_text(
    text: str,
    count_tokens: TokenCounter = _rough_token_counts,
    budget: int = CLIP_CONTEXT - SPECIAL_TOKENS,
    overlap: int = OVERLAP_TOKENS,
    max_chunks: int = MAX_CHUNKS,
) -> list[str]:
    """Split `text` on whitespace into windows of at most `budget` tokens, consecutive windows sharing
    about `overlap` tokens (so a phrase cut by one boundary is whole in the next window). A text that
    fits is returned as one chunk; an empty text as `[""]`. Deterministic: the same text gives the same
    chunks, hence the same vectors."""
    words = text.split()
    if not words:
        return [""]
    counts = count_tokens(words)
    if sum(counts) <= budget:
        return [" ".join(words)]
    chunks: list[str] = []
    start, n = 0, len(words)
    while start < n and len(chunks) < max_chunks:
        end, total = start, 0
        while end < n and total + counts[end] <= budget:
            total += counts[end]
            end += 1
        if end == start:  # one word longer than the context: it goes alone, CLIP keeps its head
            end = start + 1
        chunks.append(" ".join(words[start:end]))
        if end >= n:
            break
        back, shared = end, 0
        while back - 1 > start and shared + counts[back - 1] <= overlap:
            back -= 1
            shared += counts[back]
        start = back
    return chunks


def _normalise(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=-1, keepdims=True)
    return matrix / np.where(norms == 0, 1.0, norms)


class _Sessions:
    """One ONNX session per CLIP model ("text", "image") with its own thread pool, loaded on first use."""

    def __init__(self, settings: HistoryConfig, threads: int) -> None:
        self.settings = settings
        self.threads = threads
        self._lock = threading.Lock()
        self.models: dict[str, Any] = {}

    def model(self, kind: str) -> Any:
        if kind not in self.models:
            with self._lock:
                if kind not in self.models:
                    import fastembed

                    s = self.settings
                    name, path, cls = (
                        (s.text_model, s.text_model_path, fastembed.TextEmbedding)
                        if kind == "text"
                        else (s.image_model, s.image_model_path, fastembed.ImageEmbedding)
                    )
                    local = {"specific_model_path": str(path), "local_files_only": True} if path else {}
                    self.models[kind] = cls(name, threads=self.threads, **local)
        return self.models[kind]


def query_threads(settings: HistoryConfig) -> int:
    return settings.query_threads or min(4, os.cpu_count() or 1)


class Embedders:
    """The text and image CLIP models; safe to call from several threads (ONNX Runtime sessions run
    concurrently; only loading is serialised).

    Indexing runs on `embed_threads` (low, so it never takes generation's cores); search queries, which
    a user waits on, on `query_threads` (measured on 2 cores: an image query embeds in ~100 ms on one
    thread, ~65 ms on two). Different counts mean separate sessions, loaded on first use or by `load()`."""

    def __init__(self, settings: HistoryConfig, text_batch: int = 64, image_batch: int = 16) -> None:
        self.settings = settings
        self.text_batch = text_batch
        self.image_batch = image_batch
        self._index = _Sessions(settings, settings.embed_threads)
        threads = query_threads(settings)
        self._query = self._index if threads == settings.embed_threads else _Sessions(settings, threads)
        self._lock = threading.Lock()
        self._counter: TokenCounter | None = None
        self._text_dim: int | None = None
        self._image_dim: int | None = None

    def load(self) -> None:
        """Load every session now (start-up), instead of on the first request."""
        self._text_model()
        self._image_model()
        self._query.model("text")
        self._query.model("image")

    @property
    def text_dim(self) -> int:
        self._text_model()
        assert self._text_dim is not None
        return self._text_dim

    @property
    def image_dim(self) -> int:
        self._image_model()
        assert self._image_dim is not None
        return self._image_dim

    # -- loading ----------------------------------------------------------------------------------
    def _text_model(self) -> Any:
        model = self._index.model("text")
        if self._counter is None:
            with self._lock:
                if self._counter is None:
                    self._text_dim = int(np.asarray(next(iter(model.embed(["dimension probe"])))).shape[-1])
                    self._counter = self._make_counter(model)
        return model

    def _image_model(self) -> Any:
        model = self._index.model("image")
        if self._image_dim is None:
            with self._lock:
                if self._image_dim is None:
                    probe = Image.new("RGB", (8, 8))
                    self._image_dim = int(np.asarray(next(iter(model.embed([probe])))).shape[-1])
        return model

    @staticmethod
    def _make_counter(model: Any) -> TokenCounter:
        """Count tokens with a private copy of the model's tokenizer (no padding, no truncation), so the
        windows fit exactly; fall back to a conservative estimate if fastembed hides it."""
        tokenizer = getattr(getattr(model, "model", None), "tokenizer", None)
        if tokenizer is None:
            return _rough_token_counts
        from tokenizers import Tokenizer

        private = Tokenizer.from_str(tokenizer.to_str())
        private.no_padding()
        private.no_truncation()

        def count(words: list[str]) -> list[int]:
            return [len(e.ids) for e in private.encode_batch(words, add_special_tokens=False)]

        return count

    # -- embedding --------------------------------------------------------------------------------
    def chunks(self, text: str) -> list[str]:
        """The windows an answer is split into (exposed so tests and tools see what gets embedded)."""
        self._text_model()
        assert self._counter is not None
        return chunk_text(text, self._counter)

    def embed_texts(self, texts: Sequence[str], query: bool = False) -> np.ndarray:
        """One L2-normalised vector per text (each truncated at 77 tokens by CLIP); `query`: on the
        search sessions."""
        if not texts:
            return np.zeros((0, self.text_dim), dtype=np.float32)
        model = self._query.model("text") if query else self._text_model()
        return _normalise(np.stack(list(model.embed(list(texts), batch_size=self.text_batch))))

    def embed_images(self, images: Sequence[Image.Image | bytes], query: bool = False) -> np.ndarray:
        """One L2-normalised vector per image (PIL images, or encoded image bytes); `query`: on the
        search sessions."""
        if not images:
            return np.zeros((0, self.image_dim), dtype=np.float32)
        pil = [Image.open(io.BytesIO(im)).convert("RGB") if isinstance(im, bytes) else im for im in images]
        model = self._query.model("image") if query else self._image_model()
        return _normalise(np.stack(list(model.embed(pil, batch_size=self.image_batch))))

    def embed_answers(self, answers: Sequence[str]) -> list[np.ndarray]:
        """For each answer, its window vectors (k x dim, k >= 1), all windows embedded in one batch."""
        chunked = [self.chunks(answer) for answer in answers]
        flat = [chunk for chunks in chunked for chunk in chunks]
        vectors = self.embed_texts(flat)
        out, at = [], 0
        for chunks in chunked:
            out.append(vectors[at : at + len(chunks)])
            at += len(chunks)
        return out
