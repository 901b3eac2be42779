"""Replicas sharing one collection (QDRANT_URL): real `visionrag serve` processes with their own data dirs
against the Qdrant REST test double. What one answers, every other finds, lists, gets, shows and deletes;
a replica on an empty data dir sees it all; reindex leaves the others' points; an outage loses nothing."""

from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import Iterator

import pytest
import requests

from tests.conftest import VISIONRAG, diagram_png, wait_until
from tests.search.qdrant_double import QdrantDouble


@pytest.fixture
def double() -> Iterator[QdrantDouble]:
    d = QdrantDouble()
    yield d
    d.close()
    assert d.errors == [], d.errors


def answer(server, seed: int, user: str) -> str:
    body = {
        "image_url": "data:image/png;base64," + base64.b64encode(diagram_png(seed)).decode(),
        "user_query": f"what does diagram {seed} show",
        "max_tokens": 4,
        "user": user,
    }
    r = requests.post(server.url + "/predict", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["id"]


def found_by_image(server, seed: int) -> list[str]:
    body = {
        "image_url": "data:image/png;base64," + base64.b64encode(diagram_png(seed)).decode(),
        "against": "images",
        "limit": 1,
    }
    r = requests.post(server.url + "/history/search", json=body, timeout=30)
    return [hit["id"] for hit in r.json()["results"]] if r.status_code == 200 else []


def listed(server, **params: str) -> list[str]:
    r = requests.get(server.url + "/history", params={"limit": 50, **params}, timeout=30)
    assert r.status_code == 200, r.text
    return [item["id"] for item in r.json()["results"]]


def reindex(workdir, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`visionrag reindex` on a replica's data dir, with the servers' settings."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("VISIONRAG_", "QDRANT_", "DB_"))}
    return subprocess.run(
        [str(VISIONRAG), "reindex", "--no-progress", *args],
        cwd=workdir,
        env={**clean, **env, "VISIONRAG_DATA_DIR": str(workdir / "data")},
        capture_output=True,
        text=True,
        timeout=180,
    )


def asks_no_image_copy(body) -> bool:
    return body.with_payload is False or "image_copy" not in body.with_payload


def test_replicas_share_one_history(start_server, server_env, tmp_path, double: QdrantDouble) -> None:
    shared = {"QDRANT_URL": double.url, "COLLECTION_NAME": "replicas"}
    models = {k: server_env[k] for k in ("TEXT_MODEL_PATH", "IMAGE_MODEL_PATH")}
    one = start_server(workdir=tmp_path / "one", **shared)
    two = start_server(workdir=tmp_path / "two", **shared)
    first, second = answer(one, 1, "ann"), answer(two, 2, "bob")

    # what one answered, two finds by search, list, get and image (and the other way round)
    wait_until(lambda: found_by_image(two, 1) == [first], 60, "two to find one's answer", interval=0.2)
    wait_until(lambda: found_by_image(one, 2) == [second], 60, "one to find two's answer", interval=0.2)
    assert listed(two) == [second, first] == listed(one)
    assert listed(two, user="ann") == [first]
    got = requests.get(f"{two.url}/history/{first}", timeout=10)
    assert (
        got.status_code == 200 and got.json() == requests.get(f"{one.url}/history/{first}", timeout=10).json()
    )
    image_two = requests.get(f"{two.url}/history/{first}/image", timeout=10)
    image_one = requests.get(f"{one.url}/history/{first}/image", timeout=10)
    assert image_two.status_code == 200 and image_two.content == image_one.content
    assert image_two.headers["content-type"] == image_one.headers["content-type"]
    assert all(asks_no_image_copy(body) for _, name, body in double.calls if name == "query")

    # reindex on one re-upserts its own rows and leaves two's; --recreate without --yes drops nothing
    done = reindex(tmp_path / "one", {**shared, **models})
    assert done.returncode == 0 and "indexed 1 of 1" in done.stdout, done.stderr
    refused = reindex(tmp_path / "one", {**shared, **models}, "--recreate")
    assert refused.returncode == 1 and "1 of them were written by other writers" in refused.stderr
    assert double.engine.count("replicas").count == 2 and listed(one) == [second, first]

    # an outage: two still answers (journaled), and once Qdrant is back one finds it
    double.down()
    during = answer(two, 3, "bob")
    assert requests.get(f"{two.url}/history/{during}", timeout=10).status_code == 200  # its own outbox
    assert requests.get(f"{one.url}/history/{during}", timeout=10).status_code == 503  # not yet shared
    double.up()
    wait_until(
        lambda: requests.get(f"{one.url}/history/{during}", timeout=10).status_code == 200,
        90,
        "two's backlog to reach the shared collection",
        interval=0.3,
    )

    # a third replica on an empty data dir sees everything; deleting there removes it for all
    two.stop()
    three = start_server(workdir=tmp_path / "three", **shared)
    assert listed(three) == [during, second, first]
    assert requests.delete(f"{three.url}/history/{first}", timeout=10).status_code == 200
    assert requests.get(f"{one.url}/history/{first}", timeout=10).status_code == 404
    assert requests.get(f"{one.url}/history/{first}/image", timeout=10).status_code == 404
    assert found_by_image(one, 1) != [first] and listed(one) == [during, second]
