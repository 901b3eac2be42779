"""POST /history (a document stored without generating) against the real server: 201 with the stored
interaction, idempotent re-sends, the same image rules as /predict, and imported documents found by text
and by image."""

from __future__ import annotations

import base64
import uuid

import requests

from tests.conftest import diagram_png, wait_until
from tests.search.helpers import RESULT_FIELDS


def data_url(seed: int) -> str:
    return "data:image/png;base64," + base64.b64encode(diagram_png(seed)).decode()


def search_ids(server, **query) -> list[str]:
    r = requests.post(f"{server.url}/history/search", json={"limit": 100, **query}, timeout=30)
    assert r.status_code == 200, r.text
    return [hit["id"] for hit in r.json()["results"]]


def test_import_by_url_is_stored_indexed_and_idempotent(server, image_server) -> None:
    user = f"imp-{uuid.uuid4().hex[:8]}"
    url = image_server.add("/import/a.png", diagram_png(801))
    body = {
        "image_url": url,
        "answer": "the order service publishes events to a kafka topic read by billing",
        "query": "what does the event flow look like?",
        "user": user,
        "tags": ["imported", "events"],
        "created_at": "2024-05-01T12:00:00Z",
    }
    r = requests.post(f"{server.url}/history", json=body, timeout=30)
    assert r.status_code == 201, r.text
    stored = r.json()
    assert r.headers["Location"] == f"/history/{stored['id']}"
    assert set(stored) >= RESULT_FIELDS - {"score"}
    assert stored["answer"] == body["answer"] and stored["query"] == body["query"]
    assert stored["user"] == user and stored["tags"] == ["imported", "events"]
    assert stored["created_at"].startswith("2024-05-01T12:00:00") and stored["model"] == "import"
    assert stored["image_url"] == url and stored["context"] == []
    assert requests.get(f"{server.url}/history/{stored['id']}", timeout=10).json() == stored
    image = requests.get(f"{server.url}/history/{stored['id']}/image", timeout=10)
    assert image.status_code == 200 and image.headers["content-type"].startswith("image/")

    again = requests.post(f"{server.url}/history", json=body, timeout=30)
    assert again.status_code == 200 and again.json()["id"] == stored["id"]  # already there: nothing new
    listed = requests.get(f"{server.url}/history", params={"user": user}, timeout=10).json()["results"]
    assert [row["id"] for row in listed] == [stored["id"]]
    other = requests.post(f"{server.url}/history", json={**body, "answer": "another caption"}, timeout=30)
    assert other.status_code == 201 and other.json()["id"] != stored["id"]

    wait_until(
        lambda: stored["id"] in search_ids(server, text=body["answer"], against="answers", user=user),
        30,
        "the imported document to be found by its text",
    )
    by_image = search_ids(server, image_url=data_url(801), against="images", user=user)
    assert set(by_image) == {stored["id"], other.json()["id"]}


def test_import_by_upload(server) -> None:
    user = f"imp-{uuid.uuid4().hex[:8]}"
    r = requests.post(
        f"{server.url}/history",
        data={"answer": "a three tier web application", "user": user, "tags": "a,b"},
        files={"image": ("d.png", diagram_png(802), "image/png")},
        timeout=30,
    )
    assert r.status_code == 201, r.text
    stored = r.json()
    assert stored["query"] == "" and stored["tags"] == ["a", "b"] and stored["image_url"] == "upload"
    wait_until(
        lambda: search_ids(server, image_url=data_url(802), user=user)[:1] == [stored["id"]],
        30,
        "the uploaded document to be found by its image",
    )


def test_bad_imports_are_clear_4xx(server, image_server) -> None:
    def post(**body):
        return requests.post(f"{server.url}/history", json=body, timeout=30)

    ok = {"image_url": data_url(803), "answer": "a caption"}
    cases = [
        ({"image_url": data_url(803)}, 422, "answer is missing"),
        ({**ok, "answer": "  "}, 422, "answer is empty"),
        ({"answer": "a caption"}, 422, "image_url"),
        ({**ok, "surprise": 1}, 422, "surprise"),
        ({**ok, "created_at": "yesterday"}, 422, "created_at"),
        ({**ok, "created_at": "0001-01-01T00:00:00+01:00"}, 422, "out of range"),
        ({**ok, "tags": "x"}, 422, "tags"),
        ({**ok, "image_url": image_server.base + "/import/missing.png"}, 422, "404"),
        ({**ok, "image_url": "data:text/plain;base64,aGVsbG8="}, 415, ""),
    ]
    for body, status, words in cases:
        r = post(**body)
        assert r.status_code == status, (body, r.text)
        assert words in r.json()["detail"], (body, r.text)
    r = requests.post(f"{server.url}/history", data="[1]", headers={"content-type": "application/json"})
    assert r.status_code == 400
