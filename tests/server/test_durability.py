"""Durability under faults: nothing acknowledged is lost when the server is killed with -9 in the middle of
a load, and answers keep coming while the vector index is down; both end up searchable."""

from __future__ import annotations

import base64
import sqlite3
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import requests

from tests.conftest import diagram_png, free_port, wait_until


def data_url(seed: int) -> str:
    return "data:image/png;base64," + base64.b64encode(diagram_png(seed)).decode()


def searchable_ids(server, user: str) -> set[str]:
    r = requests.post(
        server.url + "/history/search", json={"text": "diagram", "user": user, "limit": 100}, timeout=30
    )
    if r.status_code != 200:
        return set()
    return {hit["id"] for hit in r.json()["results"]}


def test_the_journal_is_synced_before_an_answer_is_acknowledged(tmp_path) -> None:
    """SQLite in WAL mode with synchronous=FULL: a commit is fsynced before record() returns."""
    from visionrag.search.journal import Journal

    journal = Journal(tmp_path / "journal.db")
    try:
        conn = journal._conn()  # the calling thread's connection, the one record() writes with
        assert isinstance(conn, sqlite3.Connection)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        journal.close()


def test_acknowledged_answers_survive_kill_9_during_a_load(start_server) -> None:
    server = start_server()
    user = f"kill9-{uuid.uuid4().hex[:8]}"
    acked: dict[str, str] = {}  # id -> answer
    lock = threading.Lock()
    enough = threading.Event()
    killed = threading.Event()
    errors: list[str] = []

    def one(i: int) -> None:
        if killed.is_set():
            return
        body = {
            "image_url": data_url(100 + i % 10),
            "user_query": f"what does diagram {i} show",
            "max_tokens": 4 + i % 17,
            "user": user,
        }
        try:
            r = requests.post(server.url + "/predict", json=body, timeout=60)
        except requests.RequestException:
            return  # in flight when the server died: not acknowledged
        if r.status_code != 200:
            if not killed.is_set():
                errors.append(f"{r.status_code}: {r.text[:200]}")
            return
        with lock:
            acked[r.json()["id"]] = r.json()["output"]
            if len(acked) >= 24:
                enough.set()

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(one, i) for i in range(80)]
        assert enough.wait(120), f"the load did not get going: {errors}"
        server.kill()  # SIGKILL to the whole process group, with requests in flight
        killed.set()
        for f in futures:
            f.result(timeout=120)
    assert not errors, errors
    with lock:
        acknowledged = dict(acked)
    assert len(acknowledged) >= 24

    restarted = start_server(workdir=server.workdir)
    for id, answer in acknowledged.items():
        r = requests.get(f"{restarted.url}/history/{id}", timeout=10)
        assert r.status_code == 200, f"acknowledged interaction {id} lost after kill -9"
        assert r.json()["answer"] == answer and r.json()["user"] == user
        assert requests.get(f"{restarted.url}/history/{id}/image", timeout=10).status_code == 200
    wait_until(
        lambda: set(acknowledged) <= searchable_ids(restarted, user),
        90,
        "every acknowledged interaction to be searchable after the restart",
        interval=0.5,
    )
    restarted.stop()


def test_answers_keep_coming_while_the_index_is_down(start_server) -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    server = start_server(QDRANT_URL=closed)
    health = requests.get(server.url + "/health", timeout=10)
    assert health.status_code == 200
    assert health.json()["history"]["index"] == "unavailable"

    user = f"outage-{uuid.uuid4().hex[:8]}"
    ids = []
    for i in range(5):
        body = {"image_url": data_url(200 + i), "user_query": f"outage {i}", "max_tokens": 3, "user": user}
        r = requests.post(server.url + "/predict", json=body, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["id"]
        ids.append(r.json()["id"])
    for id in ids:
        assert requests.get(f"{server.url}/history/{id}", timeout=10).status_code == 200
    listed = requests.get(server.url + "/history", params={"user": user}, timeout=10).json()["results"]
    assert {row["id"] for row in listed} == set(ids)

    health = requests.get(server.url + "/health", timeout=10)
    assert health.status_code == 200, "the model endpoints stay up while the index is down"
    assert health.json()["history"]["index"] == "unavailable"
    assert health.json()["history"]["backlog"] >= 5
    metrics = requests.get(server.url + "/metrics", timeout=10).text
    assert 'visionrag_index_state{state="unavailable"} 1.0' in metrics
    search = requests.post(server.url + "/history/search", json={"text": "outage"}, timeout=30)
    assert search.status_code == 503, search.text  # the index is down: a clear 503, not a 500
    server.stop()

    started = time.monotonic()
    recovered = start_server(workdir=server.workdir)  # same data dir, embedded store this time
    wait_until(
        lambda: set(ids) <= searchable_ids(recovered, user), 90, "the backlog to be indexed", interval=0.5
    )
    health = requests.get(recovered.url + "/health", timeout=10).json()["history"]
    assert health["index"] == "ok"
    wait_until(
        lambda: requests.get(recovered.url + "/health", timeout=10).json()["history"]["backlog"] == 0,
        30,
        "an empty backlog",
    )
    assert time.monotonic() - started < 180
    recovered.stop()
