"""The API key (VISIONRAG_API_KEY): every route but /health and the web page needs it, in either header."""

from __future__ import annotations

import base64
import json
import uuid

import pytest
import requests
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient

from tests.conftest import diagram_png
from visionrag.server.auth import APIKeyMiddleware, install_auth, is_public, key_matches, presented_keys
from visionrag.server.settings import Settings

KEY = "test-key-" + "x7Q9" * 4
DATA_URL = "data:image/png;base64," + base64.b64encode(diagram_png(3)).decode()

PROTECTED = [
    ("GET", "/info", None),
    ("GET", "/docs", None),
    ("GET", "/openapi.json", None),
    ("GET", "/metrics", None),
    ("GET", "/v1/models", None),
    ("GET", "/history", None),
    ("GET", f"/history/{uuid.uuid4()}", None),
    ("GET", f"/history/{uuid.uuid4()}/image", None),
    ("DELETE", f"/history/{uuid.uuid4()}", None),
    ("POST", "/history/search", {"text": "gateway"}),
    ("POST", "/history", {"image_url": DATA_URL, "answer": "a caption"}),
    ("POST", "/predict", {"image_url": DATA_URL, "user_query": "q", "max_tokens": 1, "store": False}),
    (
        "POST",
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1},
    ),
    ("GET", "/no/such/route", None),
    ("HEAD", "/history", None),
    ("POST", "/health", None),  # only GET /health is open
]


@pytest.fixture(scope="module")
def keyed(start_server):
    return start_server(VISIONRAG_API_KEY=KEY)


def call(server, method: str, path: str, body, headers=None) -> requests.Response:
    return requests.request(method, server.url + path, json=body, headers=headers or {}, timeout=60)


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED, ids=[f"{m} {p}" for m, p, _ in PROTECTED])
def test_every_route_needs_the_key(keyed, method, path, body) -> None:
    r = call(keyed, method, path, body)
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"].startswith("Bearer")
    if method != "HEAD":
        detail = r.json()["detail"]
        assert "Authorization: Bearer" in detail and "X-API-Key" in detail

    wrong = call(keyed, method, path, body, {"Authorization": "Bearer not-the-key"})
    assert wrong.status_code == 401
    if method != "HEAD":
        assert "wrong" in wrong.json()["detail"]


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": f"Bearer {KEY}"},
        {"Authorization": f"bearer {KEY}"},
        {"X-API-Key": KEY},
        {"x-api-key": KEY, "Authorization": "Basic Zm9vOmJhcg=="},
    ],
    ids=["bearer", "bearer-lowercase", "x-api-key", "x-api-key-with-other-authorization"],
)
def test_the_key_opens_every_route(keyed, headers) -> None:
    for method, path, body in PROTECTED:
        r = call(keyed, method, path, body, headers)
        assert r.status_code != 401, (method, path, r.text)
        assert r.status_code < 500, (method, path, r.text)


def test_health_and_the_web_page_are_open(keyed) -> None:
    health = requests.get(keyed.url + "/health", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    page = requests.get(keyed.url + "/", timeout=10)
    assert page.status_code != 401


def test_wrong_keys_are_refused(keyed) -> None:
    for headers in (
        {"Authorization": KEY},  # no scheme
        {"Authorization": f"Basic {KEY}"},
        {"Authorization": "Bearer "},
        {"X-API-Key": KEY[:-1]},
        {"X-API-Key": KEY + "x"},
        {"X-API-Key": KEY.upper()},
    ):
        r = requests.get(keyed.url + "/history", headers=headers, timeout=10)
        assert r.status_code == 401, headers


def test_an_answer_streams_through_the_key_check(keyed) -> None:
    """The middleware is pure ASGI: streamed answers are not buffered and still arrive line by line."""
    body = {"image_url": DATA_URL, "user_query": "describe", "max_tokens": 6, "stream": True}
    with requests.post(
        keyed.url + "/predict", json=body, headers={"X-API-Key": KEY}, stream=True, timeout=60
    ) as r:
        assert r.status_code == 200
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert lines[-1]["done"] is True and lines[-1]["usage"]["completion_tokens"] == 6
    assert lines[-1]["id"]
    stored = requests.get(f"{keyed.url}/history/{lines[-1]['id']}", headers={"X-API-Key": KEY}, timeout=10)
    assert stored.status_code == 200 and stored.json()["answer"] == lines[-1]["output"]


def test_no_key_configured_means_open(server) -> None:
    assert requests.get(server.url + "/history", timeout=10).status_code == 200
    assert requests.get(server.url + "/metrics", timeout=10).status_code == 200


# -- the pieces, in process ------------------------------------------------------------------------------
def test_public_paths() -> None:
    assert is_public("GET", "/health") and is_public("HEAD", "/health")
    assert is_public("GET", "/") and is_public("GET", "/ui") and is_public("GET", "/static/app.js")
    assert not is_public("POST", "/health")
    assert not is_public("GET", "/metrics") and not is_public("GET", "/info")
    assert not is_public("GET", "/healthz") and not is_public("GET", "/static")


def test_presented_keys_and_matching() -> None:
    headers = [(b"authorization", b"Bearer  abc "), (b"x-api-key", b"def"), (b"x-other", b"ghi")]
    assert presented_keys(headers) == [b"abc", b"def"]
    assert presented_keys([(b"authorization", b"Basic abc")]) == []
    assert key_matches(b"def", [b"abc", b"def"])
    assert not key_matches(b"def", [b"de", b"deff", b""])
    assert not key_matches(b"def", [])


def test_install_without_a_key_adds_nothing() -> None:
    app = FastAPI()
    install_auth(app, Settings())
    assert not app.user_middleware
    install_auth(app, Settings(api_key="k"))
    assert [m.cls for m in app.user_middleware] == [APIKeyMiddleware]


def test_streaming_is_not_buffered_in_process() -> None:
    """A streamed body passes through the key check chunk by chunk."""
    app = FastAPI()
    steps: list[str] = []

    async def chunks():
        for i in range(3):
            steps.append(f"sent {i}")
            yield f"{i}\n"

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        return StreamingResponse(chunks(), media_type="text/plain")

    install_auth(app, Settings(api_key="k"))
    with TestClient(app) as client:
        assert client.get("/stream").status_code == 401
        with client.stream("GET", "/stream", headers={"X-API-Key": "k"}) as r:
            assert r.status_code == 200
            assert list(r.iter_lines()) == ["0", "1", "2"]
    assert steps == ["sent 0", "sent 1", "sent 2"]
