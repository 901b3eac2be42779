"""GET /metrics: Prometheus text format with requests, latency, tokens, batch sizes, queue and index state."""

from __future__ import annotations

import base64
import uuid
from concurrent.futures import ThreadPoolExecutor

import requests
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import diagram_png
from visionrag.server.metrics import Metrics, install_metrics


def scrape(server, headers=None) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = requests.get(server.url + "/metrics", headers=headers or {}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return parse(r.text)


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def data_url(seed: int) -> str:
    return "data:image/png;base64," + base64.b64encode(diagram_png(seed)).decode()


def ask(server, seed: int, n: int, **extra) -> requests.Response:
    body = {"image_url": data_url(seed), "user_query": f"question {seed}", "max_tokens": n, **extra}
    return requests.post(server.url + "/predict", json=body, timeout=60)


def test_requests_tokens_and_history_are_counted(server) -> None:
    before = scrape(server)
    r = ask(server, 1, 7)
    assert r.status_code == 200, r.text
    missing = requests.get(f"{server.url}/history/{uuid.uuid4()}", timeout=10)
    assert missing.status_code == 404
    assert requests.get(f"{server.url}/no/such/{uuid.uuid4()}", timeout=10).status_code == 404
    bad = requests.post(server.url + "/predict", json={"user_query": "no image"}, timeout=10)
    assert bad.status_code == 422
    after = scrape(server)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("visionrag_http_requests_total", method="POST", route="/predict", status="200") == 1
    assert grew("visionrag_http_requests_total", method="POST", route="/predict", status="422") == 1
    # route templates, not raw paths: random ids and unknown paths do not create new series
    assert grew("visionrag_http_requests_total", method="GET", route="/history/{id}", status="404") == 1
    assert grew("visionrag_http_requests_total", method="GET", route="unmatched", status="404") == 1
    assert not any("no/such" in str(labels) for _, labels in after)
    assert grew("visionrag_http_request_duration_seconds_count", method="POST", route="/predict") == 2
    assert grew("visionrag_http_request_duration_seconds_sum", method="POST", route="/predict") > 0
    assert grew("visionrag_generated_tokens_total") == 7
    assert grew("visionrag_prompt_tokens_total") == r.json()["usage"]["prompt_tokens"]
    assert grew("visionrag_answers_total", finish_reason="length") == 1
    assert grew("visionrag_batch_size_count") == 1
    # gauges read at scrape time
    assert value(after, "visionrag_inflight_requests") == 0
    assert value(after, "visionrag_max_queue") == 64
    assert ("visionrag_queue_depth", ()) in after
    assert value(after, "visionrag_journal_state", state="ok") == 1
    assert value(after, "visionrag_index_state", state="ok") == 1
    assert ("visionrag_index_backlog", ()) in after
    assert ("visionrag_index_lag_seconds", ()) in after
    assert ("visionrag_indexed_interactions_total", ()) in after


def test_batch_sizes_are_observed(server) -> None:
    before = scrape(server)
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda i: ask(server, 20 + i, 12, store=False), range(6)))
    assert all(a.status_code == 200 for a in answers)
    after = scrape(server)
    count = value(after, "visionrag_batch_size_count") - value(before, "visionrag_batch_size_count")
    total = value(after, "visionrag_batch_size_sum") - value(before, "visionrag_batch_size_sum")
    assert count == 6
    assert total > count, "six concurrent requests were never batched together"
    ones = value(after, "visionrag_batch_size_bucket", le="1.0") - value(
        before, "visionrag_batch_size_bucket", le="1.0"
    )
    assert ones < 6


def test_streamed_answers_and_chat_are_counted(server) -> None:
    before = scrape(server)
    with requests.post(
        server.url + "/predict",
        json={"image_url": data_url(5), "user_query": "q", "max_tokens": 4, "stream": True, "store": False},
        stream=True,
        timeout=60,
    ) as r:
        assert r.status_code == 200
        list(r.iter_lines())
    chat = requests.post(
        server.url + "/v1/chat/completions",
        json={
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is it"},
                        {"type": "image_url", "image_url": {"url": data_url(6)}},
                    ],
                }
            ],
            "max_tokens": 3,
            "store": False,
        },
        timeout=60,
    )
    assert chat.status_code == 200, chat.text
    after = scrape(server)
    assert (
        value(after, "visionrag_generated_tokens_total") - value(before, "visionrag_generated_tokens_total")
        == 7
    )
    key = {"method": "POST", "route": "/v1/chat/completions", "status": "200"}
    assert (
        value(after, "visionrag_http_requests_total", **key)
        - value(before, "visionrag_http_requests_total", **key)
        == 1
    )


def test_each_app_has_its_own_registry() -> None:
    apps = [FastAPI(), FastAPI()]
    metrics = [install_metrics(app) for app in apps]
    assert metrics[0].registry is not metrics[1].registry
    with TestClient(apps[0]) as client:
        assert client.get("/nothing").status_code == 404
        text = client.get("/metrics").text
    assert 'visionrag_http_requests_total{method="GET",route="unmatched",status="404"} 1.0' in text
    assert "visionrag_http_requests_total{" not in metrics[1].render().decode()


def test_answer_observation_never_fails() -> None:
    m = Metrics(FastAPI())
    m.observe_answer({"done": True})
    m.observe_answer({"completion_tokens": "x"})  # logged, not raised
    m.observe_answer({"completion_tokens": 3, "prompt_tokens": 5, "finish_reason": "stop", "batch_size": 2})
    samples = parse(m.render().decode())
    assert value(samples, "visionrag_generated_tokens_total") == 3
    assert value(samples, "visionrag_batch_size_sum") == 2
    import pickle

    assert pickle.loads(pickle.dumps(m)) is None  # a worker's copy of the spec carries no metrics
