"""Answers with context from the history, against the real server on the tiny checkpoints: documents are
imported with POST /history, found by search, and used as context by /predict and /v1/chat/completions;
the response and the stored interaction name the ids used; filters and an index outage behave."""

from __future__ import annotations

import base64
import json
import uuid

import openai
import pytest
import requests

from tests.conftest import diagram_png, free_port, wait_until

CAPTIONS = {
    711: "the payment service writes to the orders database through the api gateway",
    712: "an er diagram of customers invoices and line items with foreign keys",
    713: "kafka topics connect the inventory service to the warehouse service",
}


def data_url(seed: int) -> str:
    return "data:image/png;base64," + base64.b64encode(diagram_png(seed)).decode()


def searchable(server, id: str, **query) -> bool:
    r = requests.post(f"{server.url}/history/search", json={"limit": 100, **query}, timeout=30)
    return r.status_code == 200 and id in {hit["id"] for hit in r.json()["results"]}


@pytest.fixture(scope="module")
def docs(server) -> dict:
    """Three imported documents of one user, each tagged with its seed; indexed before the tests run."""
    user = f"ctx-{uuid.uuid4().hex[:8]}"
    ids = {}
    for seed, caption in CAPTIONS.items():
        body = {"image_url": data_url(seed), "answer": caption, "user": user, "tags": ["ctx", f"s{seed}"]}
        r = requests.post(f"{server.url}/history", json=body, timeout=30)
        assert r.status_code == 201, r.text
        ids[seed] = r.json()["id"]
    for seed, id in ids.items():
        found = lambda id=id, seed=seed: searchable(server, id, image_url=data_url(seed), user=user)  # noqa: E731
        wait_until(found, 30, f"document {seed} to be searchable")
    return {"user": user, "ids": ids}


def predict(server, seed: int, **extra) -> dict:
    body = {"image_url": data_url(seed), "user_query": "which service writes to the database", **extra}
    r = requests.post(f"{server.url}/predict", json={"max_tokens": 4, **body}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def test_an_answer_with_context_reports_and_stores_the_ids_it_used(server, docs) -> None:
    plain = predict(server, 711, store=False)
    assert "context" not in plain  # no context asked, none reported
    answer = predict(server, 711, context={"k": 2, "user": docs["user"]})
    used = answer["context"]
    assert len(used) == 2
    assert used[0]["id"] == docs["ids"][711], "the exact same image ranks first"
    assert set(used[0]) == {"id", "score", "query"} and used[0]["query"] == ""  # an imported caption
    assert {u["id"] for u in used} <= set(docs["ids"].values())
    assert "context_error" not in answer
    # the notes are in the prompt: more prompt tokens, and more with more notes
    assert answer["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"]
    one = predict(server, 711, store=False, context={"k": 1, "user": docs["user"]})
    assert plain["usage"]["prompt_tokens"] < one["usage"]["prompt_tokens"] < answer["usage"]["prompt_tokens"]
    stored = requests.get(f"{server.url}/history/{answer['id']}", timeout=10).json()
    assert stored["context"] == [u["id"] for u in used]
    assert requests.get(f"{server.url}/history/{docs['ids'][711]}", timeout=10).json()["context"] == []


def test_filters_and_min_score_limit_the_context(server, docs) -> None:
    user = docs["user"]
    only = predict(server, 711, store=False, context={"user": user, "tags": ["s712"]})
    assert [u["id"] for u in only["context"]] == [docs["ids"][712]]
    nobody = predict(server, 711, store=False, context={"user": f"nobody-{uuid.uuid4().hex}"})
    assert nobody["context"] == []
    strict = predict(server, 711, store=False, context={"user": user, "min_score": 1e6})
    assert strict["context"] == []
    assert strict["usage"]["prompt_tokens"] == predict(server, 711, store=False)["usage"]["prompt_tokens"]
    images = predict(server, 712, store=False, context={"k": 3, "user": user, "against": "images"})
    assert images["context"][0]["id"] == docs["ids"][712]
    scores = [u["score"] for u in images["context"]]
    loose = min(scores)
    kept = predict(
        server,
        712,
        store=False,
        context={"k": 3, "user": user, "against": "images", "min_score": loose + 1e-6},
    )
    assert len(kept["context"]) == len([s for s in scores if s >= loose + 1e-6]) < len(scores)


def test_context_by_multipart_and_in_the_stream(server, docs) -> None:
    r = requests.post(
        f"{server.url}/predict",
        data={"user_query": "what is this", "max_tokens": "3", "store": "false", "context": "2"},
        files={"image": ("d.png", diagram_png(713), "image/png")},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    assert len(r.json()["context"]) == 2
    body = {
        "image_url": data_url(713),
        "user_query": "what is this",
        "max_tokens": 3,
        "stream": True,
        "store": False,
        "context": {"user": docs["user"]},
    }
    with requests.post(f"{server.url}/predict", json=body, stream=True, timeout=120) as r:
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert lines[-1]["done"] and lines[-1]["context"][0]["id"] == docs["ids"][713]


def test_chat_completions_with_context(server, docs) -> None:
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": data_url(712)}},
                {"type": "text", "text": "which tables are there"},
            ],
        }
    ]
    body = {"messages": messages, "max_tokens": 3, "context": {"k": 2, "user": docs["user"]}}
    r = requests.post(f"{server.url}/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    reply = r.json()
    assert reply["context"][0]["id"] == docs["ids"][712] and len(reply["context"]) == 2
    stored = requests.get(f"{server.url}/history/{reply['interaction_id']}", timeout=10).json()
    assert stored["context"] == [c["id"] for c in reply["context"]]
    with requests.post(
        f"{server.url}/v1/chat/completions", json={**body, "stream": True}, stream=True, timeout=120
    ) as r:
        events = [line[6:] for line in r.iter_lines(decode_unicode=True) if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert [c["id"] for c in last["context"]] == [c["id"] for c in reply["context"]]
    # the official client sends it with extra_body and keeps the extra field of the answer
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)
    extra = {"context": {"k": 1, "user": docs["user"]}, "store": False}
    completion = client.chat.completions.create(
        model="any", messages=messages, max_tokens=2, extra_body=extra
    )
    assert [c["id"] for c in completion.model_extra["context"]] == [docs["ids"][712]]


def test_a_bad_context_is_a_422(server) -> None:
    r = requests.post(
        f"{server.url}/predict",
        json={"image_url": data_url(1), "user_query": "x", "context": {"k": 50}},
        timeout=30,
    )
    assert r.status_code == 422 and "context.k" in r.json()["detail"]


def test_an_index_outage_answers_without_context(start_server) -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    server = start_server(QDRANT_URL=closed)
    try:
        r = requests.post(
            f"{server.url}/predict",
            json={"image_url": data_url(714), "user_query": "what is it", "max_tokens": 3, "context": True},
            timeout=120,
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["output"] and body["context"] == []
        assert "unavailable" in body["context_error"]
        assert requests.get(f"{server.url}/history/{body['id']}", timeout=10).json()["context"] == []
    finally:
        server.stop()


def test_a_failing_history_search_answers_without_context(
    history_config, shared_embedders, monkeypatch
) -> None:
    """Not only a store outage: CLIP (or the journal) failing in retrieval leaves the question answerable."""
    import io
    from types import SimpleNamespace

    from PIL import Image

    from visionrag.search.history import History
    from visionrag.server import context
    from visionrag.server.inputs import ContextOptions

    history = History(history_config, embedders=shared_embedders)
    history.start()
    try:

        def broken(*args, **kwargs):
            raise RuntimeError("onnxruntime: out of memory")

        monkeypatch.setattr(shared_embedders, "embed_texts", broken)
        image = SimpleNamespace(image=Image.open(io.BytesIO(diagram_png(5))).convert("RGB"), sha256="0" * 64)
        got = context.retrieve(history, "what is it", image, ContextOptions())
        assert got.notes == [] and "history search failed" in got.error and "out of memory" in got.error
    finally:
        history.close()
