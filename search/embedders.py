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


class Embedders:
    """The text and image CLIP models, loaded on first use; safe to call from several threads
    (ONNX Runtime sessions run concurrently; only loading is serialised)."""

    def __init__(self, settings: HistoryConfig, text_batch: int = 64, image_batch: int = 16) -> None:
        self.settings = settings
        self.text_batch = text_batch
        self.image_batch = image_batch
        self._lock = threading.Lock()
        self._text: Any = None
        self._image: Any = None
        self._counter: TokenCounter | None = None
        self._text_dim: int | None = None
        self._image_dim: int | None = None

    # -- loading ----------------------------------------------------------------------------------
    def _kwargs(self, path: Any) -> dict[str, Any]:
        """Offline loading from a folder when given one; a bounded ONNX thread pool, so indexing on the CPU
        leaves cores to generation (measured in BENCHMARKS.md, History)."""
        local = {"specific_model_path": str(path), "local_files_only": True} if path else {}
        return {**local, "threads": self.settings.embed_threads}

    def _text_model(self) -> Any:
        if self._text is None:
            with self._lock:
                if self._text is None:
                    from fastembed import TextEmbedding

                    model = TextEmbedding(
                        self.settings.text_model, **self._kwargs(self.settings.text_model_path)
                    )
                    self._counter = self._make_counter(model)
                    self._text_dim = int(np.asarray(next(iter(model.embed(["dimension probe"])))).shape[-1])
                    self._text = model
        return self._text

    def _image_model(self) -> Any:
        if self._image is None:
            with self._lock:
                if self._image is None:
                    from fastembed import ImageEmbedding

                    model = ImageEmbedding(
                        self.settings.image_model, **self._kwargs(self.settings.image_model_path)
                    )
                    probe = Image.new("RGB", (8, 8))
                    self._image_dim = int(np.asarray(next(iter(model.embed([probe])))).shape[-1])
                    self._image = model
        return self._image

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

    def load(self) -> None:
        """Load both models now (start-up), instead of on the first request."""
        self._text_model()
        self._image_model()

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

    # -- embedding --------------------------------------------------------------------------------
    def chunks(self, text: str) -> list[str]:
        """The windows an answer is split into (exposed so tests and tools see what gets embedded)."""
        self._text_model()
        assert self._counter is not None
        return chunk_text(text, self._counter)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """One L2-normalised vector per text (each truncated at 77 tokens by CLIP): queries."""
        if not texts:
            return np.zeros((0, self.text_dim), dtype=np.float32)
        vectors = list(self._text_model().embed(list(texts), batch_size=self.text_batch))
        return _normalise(np.stack(vectors))

    def embed_images(self, images: Sequence[Image.Image | bytes]) -> np.ndarray:
        """One L2-normalised vector per image (PIL images, or encoded image bytes)."""
        if not images:
            return np.zeros((0, self.image_dim), dtype=np.float32)
        pil = [Image.open(io.BytesIO(im)).convert("RGB") if isinstance(im, bytes) else im for im in images]
        vectors = list(self._image_model().embed(pil, batch_size=self.image_batch))
        return _normalise(np.stack(vectors))

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
