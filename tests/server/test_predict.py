"""POST /predict over HTTP against the real server on the tiny checkpoint."""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.conftest import diagram_png


def ask(server, **body) -> requests.Response:
    return requests.post(f"{server.url}/predict", json=body, timeout=60)


def test_answer_from_an_http_url(server, image_server) -> None:
    url = image_server.add("/predict/a.png", diagram_png(1))
    r = ask(server, image_url=url, user_query="what does the diagram show", max_tokens=6)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) >= {"output", "id", "model", "usage"}
    assert body["usage"]["completion_tokens"] == 6
    assert body["usage"]["prompt_tokens"] > 0
    assert body["output"].strip()
    # only the generated answer: no prompt, no special tokens
    assert "<|" not in body["output"] and "what does the diagram show" not in body["output"]
    assert body["model"] == Path(server.env["MODEL_NAME"]).name  # the served name: never a server path


def test_data_url_and_upload_give_the_same_answer_as_the_url(server, image_server) -> None:
    png = diagram_png(2)
    url = image_server.add("/predict/b.png", png)
    question = "which service connects to the database"
    by_url = ask(server, image_url=url, user_query=question, max_tokens=8).json()
    data_url = "data:image/png;base64," + base64.b64encode(png).decode()
    by_data = ask(server, image_url=data_url, user_query=question, max_tokens=8).json()
    by_upload = requests.post(
        f"{server.url}/predict",
        data={"user_query": question, "max_tokens": "8"},
        files={"image": ("b.png", png, "image/png")},
        timeout=60,
    ).json()
    assert by_url["output"] == by_data["output"] == by_upload["output"]
    assert len({by_url["id"], by_data["id"], by_upload["id"]}) == 3


def test_concurrent_requests_each_get_their_own_answer(server, image_server) -> None:
    """Requests batched together keep their own max_tokens, and greedy answers equal the answers
    each gets alone."""
    cases = [
        (f"/predict/c{i}.png", diagram_png(10 + i), f"question {i} about the api gateway", 3 + 2 * i)
        for i in range(6)
    ]
    for path, png, _, _ in cases:
        image_server.add(path, png)

    def one(case):
        path, _, question, n = case
        return ask(server, image_url=image_server.base + path, user_query=question, max_tokens=n, store=False)

    alone = [one(c).json() for c in cases]
    with ThreadPoolExecutor(len(cases)) as pool:
        together = [r.json() for r in pool.map(one, cases)]
    for (_, _, _, n), a, t in zip(cases, alone, together, strict=True):
        assert t["usage"]["completion_tokens"] == n
        assert t["output"] == a["output"]
        assert t["id"] is None  # store: false


def test_sampling_with_a_seed_is_reproducible(server, image_server) -> None:
    url = image_server.add("/predict/s.png", diagram_png(3))
    body = dict(image_url=url, user_query="describe it", max_tokens=12, temperature=1.0, top_p=0.9, seed=7)
    first, second = ask(server, **body).json(), ask(server, **body).json()
    assert first["output"] == second["output"]


def test_streaming_predict_sends_deltas_then_the_final_line(server, image_server) -> None:
    url = image_server.add("/predict/st.png", diagram_png(4))
    with requests.post(
        f"{server.url}/predict",
        json={"image_url": url, "user_query": "describe", "max_tokens": 7, "stream": True},
        stream=True,
        timeout=60,
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in r.iter_lines() if line]
    deltas = [line["delta"] for line in lines if "delta" in line]
    final = lines[-1]
    assert final["done"] is True and final["usage"]["completion_tokens"] == 7
    assert "".join(deltas) == final["output"] and len(deltas) > 1
    assert final["id"]


def test_stop_strings_end_the_answer(server, image_server) -> None:
    url = image_server.add("/predict/stop.png", diagram_png(5))
    full = ask(server, image_url=url, user_query="describe", max_tokens=10, store=False).json()["output"]
    word = full.split()[2]
    cut = ask(server, image_url=url, user_query="describe", max_tokens=10, stop=[word], store=False).json()
    assert cut["finish_reason"] == "stop"
    assert cut["output"] == full[: full.index(word)]


BAD_REQUESTS = [
    ("no query", {"image_url": "IMG"}, 422, "user_query"),
    ("empty query", {"image_url": "IMG", "user_query": "  "}, 422, "empty"),
    ("no image", {"user_query": "what"}, 422, "no image"),
    (
        "wrong type of max_tokens",
        {"image_url": "IMG", "user_query": "q", "max_tokens": "ten"},
        422,
        "max_tokens",
    ),
    ("max_tokens out of range", {"image_url": "IMG", "user_query": "q", "max_tokens": 0}, 422, "max_tokens"),
    (
        "temperature out of range",
        {"image_url": "IMG", "user_query": "q", "temperature": 9},
        422,
        "temperature",
    ),
    ("query of the wrong type", {"image_url": "IMG", "user_query": ["a"]}, 422, "user_query"),
    ("not an object", ["IMG"], 422, "JSON object"),
    ("bad scheme", {"image_url": "file:///etc/passwd", "user_query": "q"}, 422, "scheme"),
    ("bad base64", {"image_url": "data:image/png;base64,@@@not base64@@@", "user_query": "q"}, 422, "base64"),
    ("not an image", {"image_url": "TEXT", "user_query": "q"}, 415, "image"),
    ("404", {"image_url": "MISSING", "user_query": "q"}, 422, "404"),
    ("too many bytes", {"image_url": "BIG", "user_query": "q"}, 413, "bytes"),
    ("pixel bomb", {"image_url": "BOMB", "user_query": "q"}, 413, "pixels"),
]


@pytest.fixture(scope="module")
def bad_urls(image_server) -> dict[str, str]:
    from PIL import Image

    bomb = Image.new("1", (20000, 20000))  # 400 Mpx, a few kB as PNG
    import io

    buf = io.BytesIO()
    bomb.save(buf, format="PNG")
    return {
        "IMG": image_server.add("/bad/ok.png", diagram_png(6)),
        "TEXT": image_server.add("/bad/t.txt", b"hello, not an image", "text/plain"),
        "MISSING": image_server.base + "/bad/missing.png",
        "BIG": image_server.add("/bad/big.png", b"\x89PNG" + b"\0" * 21_000_000),
        "BOMB": image_server.add("/bad/bomb.png", buf.getvalue()),
    }


@pytest.mark.parametrize(
    ("name", "body", "status", "mentions"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS]
)
def test_bad_input_gets_a_clear_4xx(server, bad_urls, name, body, status, mentions) -> None:
    if isinstance(body, dict):
        body = {k: bad_urls.get(v, v) if isinstance(v, str) else v for k, v in body.items()}
    r = requests.post(f"{server.url}/predict", json=body, timeout=60)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and mentions.lower() in detail.lower()


def test_malformed_json_and_empty_body(server, bad_urls) -> None:
    r = requests.post(
        f"{server.url}/predict", data=b'{"user_query": ', headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and "JSON" in r.json()["detail"]
    r = requests.post(f"{server.url}/predict", data=b"", headers={"content-type": "application/json"})
    assert r.status_code == 400


def test_multipart_errors(server) -> None:
    r = requests.post(
        f"{server.url}/predict", data={"user_query": "q"}, files={"image": ("x.txt", b"text", "text/plain")}
    )
    assert r.status_code == 415
    r = requests.post(
        f"{server.url}/predict",
        data={"user_query": "q", "max_tokens": "x"},
        files={"image": ("a.png", diagram_png(), "image/png")},
    )
    assert r.status_code == 422 and "max_tokens" in r.json()["detail"]


def test_still_serving_after_bad_requests(server, bad_urls) -> None:
    for _ in range(3):
        requests.post(f"{server.url}/predict", data=b"\xff\xfe", headers={"content-type": "application/json"})
    r = ask(server, image_url=bad_urls["IMG"], user_query="what is it", max_tokens=3)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3


def test_health_reports_ready_workers_and_history(server) -> None:
    body = requests.get(f"{server.url}/health", timeout=10).json()
    assert body["status"] == "ok"
    assert body["workers"] and all(v == "ready" for v in body["workers"].values())
    assert body["history"]["journal"] == "ok"
