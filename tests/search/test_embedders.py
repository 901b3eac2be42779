"""CLIP embedders on a tiny random CLIP in fastembed's layout, loaded offline: shapes, normalisation,
determinism, and the windowing that makes whole answers (longer than CLIP's 77 tokens) searchable."""

from __future__ import annotations

import io
import itertools
import json

import numpy as np
import pytest
from tokenizers import Tokenizer

from tests.search.helpers import diagram
from visionrag.search.embedders import CLIP_CONTEXT, Embedders, chunk_text

LONG = " ".join(f"component{i} sends events to the queue, then the worker writes row {i}." for i in range(40))


@pytest.fixture(scope="module")
def clip_tokenizer(tiny_clip):
    return Tokenizer.from_file(str(tiny_clip[0] / "tokenizer.json"))


def test_vectors_are_normalised_and_deterministic(shared_embedders: Embedders) -> None:
    texts = shared_embedders.embed_texts(
        ["a cache in front of a database", "a queue", "a cache in front of a database"]
    )
    assert texts.shape == (3, 512)
    assert np.allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    assert np.allclose(texts[0], texts[2])
    assert not np.allclose(texts[0], texts[1])
    alone = shared_embedders.embed_texts(["a cache in front of a database"])[0]
    assert np.allclose(alone, texts[0], atol=1e-6)  # padding in a batch changes nothing

    png = io.BytesIO()
    diagram(1).save(png, format="PNG")
    images = shared_embedders.embed_images([diagram(1), diagram(2), png.getvalue()])
    assert images.shape == (3, 512)
    assert np.allclose(np.linalg.norm(images, axis=1), 1.0, atol=1e-5)
    assert np.allclose(images[0], images[2], atol=1e-6)
    assert not np.allclose(images[0], images[1])
    assert (shared_embedders.text_dim, shared_embedders.image_dim) == (512, 512)


def test_loads_offline_from_the_configured_folders(settings) -> None:
    embedders = Embedders(settings)
    assert embedders._index.models == {}  # lazy
    assert embedders.embed_texts(["x"]).shape == (1, 512)
    assert "image" not in embedders._index.models


def _threads(model) -> int:
    return model.model.model.get_session_options().intra_op_num_threads


def test_search_queries_get_their_own_sessions_when_the_thread_counts_differ(settings) -> None:
    embedders = Embedders(settings.replace(embed_threads=1, query_threads=2))
    text, image = ["a queue between two services"], [diagram(4)]
    assert np.allclose(embedders.embed_texts(text, query=True), embedders.embed_texts(text), atol=1e-5)
    assert np.allclose(embedders.embed_images(image, query=True), embedders.embed_images(image), atol=1e-5)
    assert embedders._query is not embedders._index
    assert [_threads(m) for m in embedders._index.models.values()] == [1, 1]
    assert [_threads(m) for m in embedders._query.models.values()] == [2, 2]
    shared = Embedders(settings.replace(embed_threads=2, query_threads=2))
    assert shared._query is shared._index  # one copy of the models when the counts agree


def test_short_text_is_one_chunk_and_empty_is_embeddable(shared_embedders: Embedders) -> None:
    assert shared_embedders.chunks("a short answer") == ["a short answer"]
    assert shared_embedders.chunks("   ") == [""]
    (vectors,) = shared_embedders.embed_answers([""])
    assert vectors.shape == (1, 512)


def test_long_text_windows_fit_overlap_and_cover_everything(
    shared_embedders: Embedders, clip_tokenizer
) -> None:
    clip_tokenizer.no_truncation()
    clip_tokenizer.no_padding()
    assert len(clip_tokenizer.encode(LONG).ids) > 5 * CLIP_CONTEXT
    chunks = shared_embedders.chunks(LONG)
    assert len(chunks) > 5
    for chunk in chunks:
        assert len(clip_tokenizer.encode(chunk).ids) <= CLIP_CONTEXT  # special tokens included
    words = LONG.split()
    assert chunks[0].split() == words[: len(chunks[0].split())]
    assert chunks[-1].split() == words[-len(chunks[-1].split()) :]  # the end of the answer is embedded
    for a, b in itertools.pairwise(chunks):
        assert a.split()[-1] in b.split()  # consecutive windows overlap
    assert shared_embedders.chunks(LONG) == chunks  # deterministic


def test_embed_answers_gives_one_vector_per_window(shared_embedders: Embedders) -> None:
    short, long_ = shared_embedders.embed_answers(["short answer", LONG])
    assert short.shape == (1, 512)
    chunks = shared_embedders.chunks(LONG)
    assert long_.shape == (len(chunks), 512)
    assert np.allclose(long_[-1], shared_embedders.embed_texts([chunks[-1]])[0], atol=1e-5)


def test_rough_fallback_counter_stays_inside_the_context(clip_tokenizer) -> None:
    clip_tokenizer.no_truncation()
    clip_tokenizer.no_padding()
    text = LONG + " " + json.dumps({"weird": ["x" * 40, "é∂ƒ", "1234567890" * 3]})
    for chunk in chunk_text(text):  # the default counter: no tokenizer
        assert len(clip_tokenizer.encode(chunk).ids) <= CLIP_CONTEXT
