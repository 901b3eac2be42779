"""The history routes over HTTP against the real server (`visionrag serve` with the tiny Llama and the
tiny CLIP, embedded store): what /predict answers is found again by image, by text, listed, fetched,
and deleted."""

from __future__ import annotations

import base64

import pytest
import requests

from tests.conftest import diagram_png, wait_until
from tests.search.helpers import RESULT_FIELDS


def _ask(server, seed: int, **extra) -> dict:
    png = diagram_png(seed)
    body = {
        "image_url": "data:image/png;base64," + base64.b64encode(png).decode(),
        "user_query": f"what does diagram {seed} show?",
        **extra,
    }
    response = requests.post(f"{server.url}/predict", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def _indexed(server, id: str) -> None:
    def found() -> bool:
        r = requests.post(
            f"{server.url}/history/search",
            files={"image": ("d.png", diagram_png(900), "image/png")},
            data={"limit": "100", "against": "images"},
            timeout=30,
        )
        return r.status_code == 200 and id in {x["id"] for x in r.json()["results"]}

    wait_until(found, 30, f"interaction {id} to be searchable")


@pytest.fixture(scope="module")
def answered(server):
    answers = [_ask(server, seed, user="http-user", tags=["http"]) for seed in (901, 902, 903)]
    for a in answers:
        assert a["id"]
        _indexed(server, a["id"])
    return answers


def test_search_by_uploaded_image_and_by_image_url(server, answered) -> None:
    target = answered[1]
    r = requests.post(
        f"{server.url}/history/search",
        files={"image": ("d.png", diagram_png(902), "image/png")},
        data={"against": "images", "limit": "3", "user": "http-user"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["results"][0]["id"] == target["id"]
    assert isinstance(body["took_ms"], int | float)
    first = body["results"][0]
    assert set(first) >= RESULT_FIELDS
    data_url = "data:image/png;base64," + base64.b64encode(diagram_png(902)).decode()
    r = requests.post(
        f"{server.url}/history/search", json={"image_url": data_url, "tags": ["http"]}, timeout=30
    )
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["id"] == target["id"]


def test_search_by_answer_text(server, answered) -> None:
    target = answered[0]
    item = requests.get(f"{server.url}/history/{target['id']}", timeout=10).json()
    assert item["answer"] == target["output"]
    if not item["answer"].strip():
        pytest.skip("the tiny model produced an empty answer")
    r = requests.post(
        f"{server.url}/history/search",
        json={"text": item["answer"], "against": "answers", "limit": 100, "user": "http-user"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    top = r.json()["results"][0]
    assert top["answer"] == item["answer"]  # identical answers tie; the top one carries that answer


def test_list_get_image_delete(server, answered) -> None:
    r = requests.get(f"{server.url}/history", params={"limit": 100, "user": "http-user"}, timeout=10)
    assert r.status_code == 200
    listed = [x["id"] for x in r.json()["results"]]
    assert [a["id"] for a in reversed(answered)] == [i for i in listed if i in {a["id"] for a in answered}]
    victim = answered[2]["id"]
    image = requests.get(f"{server.url}/history/{victim}/image", timeout=10)
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert requests.delete(f"{server.url}/history/{victim}", timeout=10).status_code == 200
    assert requests.get(f"{server.url}/history/{victim}", timeout=10).status_code == 404
    assert requests.get(f"{server.url}/history/{victim}/image", timeout=10).status_code == 404
    assert requests.delete(f"{server.url}/history/{victim}", timeout=10).status_code == 404
    r = requests.post(
        f"{server.url}/history/search",
        files={"image": ("d.png", diagram_png(903), "image/png")},
        data={"limit": "100"},
        timeout=30,
    )
    assert victim not in {x["id"] for x in r.json()["results"]}


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"text": "x", "limit": 0},
        {"text": "x", "limit": 101},
        {"text": "x", "offset": -1},
        {"text": "x", "against": "everything"},
        {"text": "x", "since": "not a date"},
        {"text": "x", "since": "2025-02-01", "until": "2025-01-01"},
        {"text": "x", "limit": "ten"},
        {"text": "x", "colour": "blue"},
    ],
)
def test_bad_queries_are_4xx_with_detail(server, body) -> None:
    r = requests.post(f"{server.url}/history/search", json=body, timeout=10)
    assert 400 <= r.status_code < 500, (body, r.status_code, r.text)
    assert r.json()["detail"]


def test_unknown_ids_and_bad_listing(server) -> None:
    assert (
        requests.get(f"{server.url}/history/00000000-0000-4000-8000-000000000000", timeout=10).status_code
        == 404
    )
    assert requests.get(f"{server.url}/history/nope", timeout=10).status_code == 404
    assert requests.get(f"{server.url}/history", params={"limit": 0}, timeout=10).status_code == 422
    r = requests.post(
        f"{server.url}/history/search",
        data=b"{not json",
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert r.status_code == 400 and r.json()["detail"]
