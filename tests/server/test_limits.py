"""Limits: request body size (also chunked), max_tokens bounds, question length, the bounded queue (503 +
Retry-After) and the per-request generation time limit."""

from __future__ import annotations

import base64
import threading

import pytest
import requests

from tests.conftest import diagram_png, wait_until
from tests.server.test_metrics import scrape, value

MAX_BODY = 100_000
MAX_QUERY = 200
MAX_TOKENS = 4000
DATA_URL = "data:image/png;base64," + base64.b64encode(diagram_png(7)).decode()


@pytest.fixture(scope="module")
def limited(start_server):
    return start_server(
        VISIONRAG_MAX_QUEUE="2",
        VISIONRAG_MAX_BODY_BYTES=str(MAX_BODY),
        VISIONRAG_MAX_QUERY_CHARS=str(MAX_QUERY),
        VISIONRAG_MAX_TOKENS_LIMIT=str(MAX_TOKENS),
    )


@pytest.fixture(scope="module")
def hurried(start_server):
    return start_server(VISIONRAG_GENERATION_TIMEOUT="0.5")


def predict(server, **body) -> requests.Response:
    return requests.post(server.url + "/predict", json={"image_url": DATA_URL, **body}, timeout=120)


def chat_body(text: str = "what is it", **extra) -> dict:
    content = [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": DATA_URL}}]
    return {"messages": [{"role": "user", "content": content}], **extra}


def assert_json_error(r: requests.Response, status: int, mentions: str = "") -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    detail = r.json()["detail"]
    assert isinstance(detail, str) and mentions.lower() in detail.lower(), detail
    return detail


# -- body size ----------------------------------------------------------------------------------------------
def chunks(prefix: bytes, filler: int, suffix: bytes):
    """A body sent with Transfer-Encoding: chunked (no Content-Length)."""
    yield prefix
    for _ in range(filler // 10_000):
        yield b"A" * 10_000
    yield suffix


def multipart(filler: int):
    return chunks(
        b'--bnd\r\nContent-Disposition: form-data; name="user_query"\r\n\r\nq\r\n'
        b'--bnd\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        b"Content-Type: image/png\r\n\r\n",
        filler,
        b"\r\n--bnd--\r\n",
    )


BIG_JSON = ("/predict", "/v1/chat/completions", "/history/search")


@pytest.mark.parametrize("path", BIG_JSON)
def test_a_body_over_the_limit_is_413(limited, path) -> None:
    body = b'{"user_query": "' + b"A" * (MAX_BODY + 10) + b'"}'
    r = requests.post(limited.url + path, data=body, headers={"content-type": "application/json"}, timeout=30)
    assert_json_error(r, 413)


@pytest.mark.parametrize("path", BIG_JSON)
def test_a_chunked_body_over_the_limit_is_413_not_500(limited, path) -> None:
    body = chunks(b'{"user_query": "', MAX_BODY * 3, b'"}')
    r = requests.post(limited.url + path, data=body, headers={"content-type": "application/json"}, timeout=30)
    assert_json_error(r, 413)


@pytest.mark.parametrize("path", ["/predict", "/history/search"])
def test_a_chunked_multipart_body_over_the_limit_is_413(limited, path) -> None:
    r = requests.post(
        limited.url + path,
        data=multipart(MAX_BODY * 3),
        headers={"content-type": "multipart/form-data; boundary=bnd"},
        timeout=30,
    )
    assert_json_error(r, 413, "bytes")


def test_a_multipart_upload_over_the_limit_is_413(limited) -> None:
    r = requests.post(
        limited.url + "/predict",
        data={"user_query": "q"},
        files={"image": ("a.png", b"\x89PNG" + b"\0" * (MAX_BODY * 2), "image/png")},
        timeout=30,
    )
    assert_json_error(r, 413)


def test_a_body_under_the_limit_is_answered(limited) -> None:
    r = predict(limited, user_query="what is it", max_tokens=2, store=False)
    assert r.status_code == 200, r.text


# -- max_tokens and question length ---------------------------------------------------------------------
@pytest.mark.parametrize("n", [0, -1, MAX_TOKENS + 1, 10**30, 2.5, "5", True, [3]])
def test_max_tokens_out_of_bounds_or_of_the_wrong_type_is_422(limited, n) -> None:
    assert_json_error(predict(limited, user_query="q", max_tokens=n), 422, "max_tokens")
    r = requests.post(limited.url + "/v1/chat/completions", json=chat_body(max_tokens=n), timeout=30)
    assert_json_error(r, 422, "max_tokens")
    r = requests.post(
        limited.url + "/v1/chat/completions", json=chat_body(max_completion_tokens=n), timeout=30
    )
    assert_json_error(r, 422, "max_")


def test_max_tokens_at_the_bounds_is_accepted(limited) -> None:
    r = predict(limited, user_query="q", max_tokens=1, store=False)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 1


def test_an_unknown_predict_field_is_refused_not_ignored(limited) -> None:
    detail = assert_json_error(predict(limited, user_query="q", max_token=3), 422, "'max_token'")
    assert "max_tokens" in detail  # what it takes instead
    r = requests.post(
        limited.url + "/predict",
        data={"user_query": "q", "temprature": "0.5"},
        files={"image": ("d.png", diagram_png(8), "image/png")},
        timeout=60,
    )
    assert_json_error(r, 422, "'temprature'")


def test_a_question_over_the_limit_is_422(limited) -> None:
    detail = assert_json_error(predict(limited, user_query="x" * (MAX_QUERY + 1), max_tokens=1), 422)
    assert str(MAX_QUERY) in detail
    r = requests.post(
        limited.url + "/v1/chat/completions", json=chat_body("y" * (MAX_QUERY + 1), max_tokens=1), timeout=30
    )
    assert_json_error(r, 422, str(MAX_QUERY))
    ok = predict(limited, user_query="x" * MAX_QUERY, max_tokens=1, store=False)
    assert ok.status_code == 200, ok.text


# -- the bounded queue ------------------------------------------------------------------------------------
def test_a_full_queue_answers_503_with_retry_after(limited) -> None:
    """Two slow answers fill a queue of 2; the third request is turned away at once, not queued."""
    results: list[requests.Response] = []

    def slow() -> None:
        results.append(predict(limited, user_query="write a long answer", max_tokens=MAX_TOKENS, store=False))

    threads = [threading.Thread(target=slow) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        wait_until(
            lambda: value(scrape(limited), "visionrag_inflight_requests") == 2, 30, "two requests in flight"
        )
        for path, body in (
            ("/predict", {"image_url": DATA_URL, "user_query": "q", "max_tokens": 1}),
            ("/v1/chat/completions", chat_body(max_tokens=1)),
        ):
            r = requests.post(limited.url + path, json=body, timeout=10)
            assert_json_error(r, 503, "busy")
            assert int(r.headers["retry-after"]) > 0
        # the rest of the server is not held up by the full queue
        assert requests.get(limited.url + "/history", timeout=10).status_code == 200
        assert requests.get(limited.url + "/health", timeout=10).status_code == 200
    finally:
        for t in threads:
            t.join(120)
    assert [r.status_code for r in results] == [200, 200]
    assert all(0 < r.json()["usage"]["completion_tokens"] <= MAX_TOKENS for r in results)
    assert value(scrape(limited), "visionrag_inflight_requests") == 0
    after = predict(limited, user_query="q", max_tokens=1, store=False)
    assert after.status_code == 200, after.text


# -- the generation time limit -------------------------------------------------------------------------------
def test_a_slow_answer_is_cut_at_the_time_limit_and_still_stored(hurried) -> None:
    r = predict(hurried, user_query="write a long answer", max_tokens=4000)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["finish_reason"] == "time_limit"
    assert 0 < body["usage"]["completion_tokens"] < 4000
    assert body["output"] and body["id"]
    stored = requests.get(f"{hurried.url}/history/{body['id']}", timeout=10)
    assert stored.status_code == 200 and stored.json()["answer"] == body["output"]


def test_the_time_limit_applies_to_streams_and_chat(hurried) -> None:
    with requests.post(
        hurried.url + "/predict",
        json={"image_url": DATA_URL, "user_query": "long", "max_tokens": 4000, "stream": True},
        stream=True,
        timeout=60,
    ) as r:
        assert r.status_code == 200
        import json

        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert lines[-1]["done"] and lines[-1]["finish_reason"] == "time_limit" and lines[-1]["id"]
    chat = requests.post(hurried.url + "/v1/chat/completions", json=chat_body(max_tokens=4000), timeout=60)
    assert chat.status_code == 200, chat.text
    assert chat.json()["choices"][0]["finish_reason"] == "length"  # OpenAI has no time_limit reason
    assert 0 < chat.json()["usage"]["completion_tokens"] < 4000


def test_streamed_answers_give_their_place_back_exactly_once(limited) -> None:
    """A streamed answer releases its place in the queue once: when it ends, or when its client leaves."""
    chat = chat_body(max_tokens=3, stream=True)
    for _ in range(3):
        with requests.post(
            limited.url + "/predict",
            json={"image_url": DATA_URL, "user_query": "q", "max_tokens": 3, "stream": True, "store": False},
            stream=True,
            timeout=60,
        ) as r:
            assert r.status_code == 200
            list(r.iter_lines())
        with requests.post(limited.url + "/v1/chat/completions", json=chat, stream=True, timeout=60) as r:
            assert r.status_code == 200
            list(r.iter_lines())
        assert value(scrape(limited), "visionrag_inflight_requests") == 0
    # a client that leaves after the first line
    with requests.post(
        limited.url + "/predict",
        json={"image_url": DATA_URL, "user_query": "q", "max_tokens": 2000, "stream": True, "store": False},
        stream=True,
        timeout=60,
    ) as r:
        next(r.iter_lines())
    wait_until(lambda: value(scrape(limited), "visionrag_inflight_requests") == 0, 30, "the place given back")
    # the queue still holds exactly max_queue
    assert predict(limited, user_query="q", max_tokens=1, store=False).status_code == 200
