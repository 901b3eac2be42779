"""History end to end on real components (SQLite journal, embedded Qdrant, fastembed on a tiny random
CLIP). Random weights make semantic similarity meaningless, so the tests rely on what holds for any CLIP:
the same input gives the same vector, hence the best score."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from PIL import Image

from tests.search.helpers import RESULT_FIELDS, diagram, interaction, wait_for
from visionrag.search.errors import InvalidQuery, NotFound
from visionrag.search.history import History

ROOT = Path(__file__).resolve().parents[2]
FILLER = " ".join(
    f"step {i}: the request passes the gateway and reaches service number {i}." for i in range(12)
)


def indexed(history: History, n: int) -> None:
    wait_for(lambda: history.status()["backlog"] == 0 and history.store.count() == n, what=f"{n} indexed")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def stocked(history: History):
    """Eight interactions with distinct images and answers, two users, tags, a day apart."""
    base = datetime(2025, 3, 1, tzinfo=UTC)
    items = [
        interaction(
            f"answer {i}: the diagram shows {i} services behind a load balancer",
            user="ann" if i % 2 else "bob",
            tags=("er",) if i < 4 else ("er", "cloud"),
            created_at=base + timedelta(days=i),
        )
        for i in range(8)
    ]
    for i, item in enumerate(items):
        history.record(item, diagram(i))
    indexed(history, len(items))
    return items


def test_the_same_image_finds_its_interaction_first(history: History, stocked) -> None:
    for i in (0, 5):
        for against in ("images", "both"):
            results = history.search(None, diagram(i), against=against)
            assert results[0]["id"] == stocked[i].id, against
    top = history.search(None, diagram(5), limit=1, against="images")[0]
    assert top["score"] == pytest.approx(1.0, abs=1e-4)
    assert set(top) >= RESULT_FIELDS
    assert top["image"] == f"/history/{stocked[5].id}/image"


def test_the_answer_text_finds_it(history: History, stocked) -> None:
    for against in ("answers", "both"):
        results = history.search(stocked[6].answer, None, against=against)
        assert results[0]["id"] == stocked[6].id
    assert history.search(stocked[6].answer, diagram(6))[0]["id"] == stocked[6].id


def test_a_phrase_at_the_end_of_a_long_answer_finds_it(history: History) -> None:
    # Two long answers that share their first ~250 tokens: CLIP alone (77 tokens) could not tell them
    # apart; only their endings differ.
    a = interaction(FILLER + " finally the cache is invalidated by the orders service.")
    b = interaction(FILLER + " finally the audit log is shipped to cold storage nightly.")
    history.record(a, diagram(20))
    history.record(b, diagram(21))
    indexed(history, 2)
    chunks = history.embedders.chunks(a.answer)
    assert len(chunks) >= 3 and "invalidated" not in chunks[0]
    tail = chunks[-1]  # the final window, the text a reader quoting the end of the answer would give
    assert "invalidated by the orders service." in tail
    results = history.search(tail, None, against="answers", limit=2)
    assert [r["id"] for r in results] == [a.id, b.id]
    assert results[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert results[1]["score"] < results[0]["score"] - 1e-4
    results = history.search(history.embedders.chunks(b.answer)[-1], None, against="answers", limit=1)
    assert results[0]["id"] == b.id


def test_filters(history: History, stocked) -> None:
    query = dict(text=None, image=diagram(3), limit=100)
    assert {r["user"] for r in history.search(**query, user="ann")} == {"ann"}
    assert {r["id"] for r in history.search(**query, user="ann")} == {stocked[i].id for i in (1, 3, 5, 7)}
    assert {r["id"] for r in history.search(**query, tags=["cloud"])} == {s.id for s in stocked[4:]}
    assert {r["id"] for r in history.search(**query, tags=["er", "cloud"], user="bob")} == {
        stocked[4].id,
        stocked[6].id,
    }
    since, until = stocked[2].created_at.isoformat(), (stocked[4].created_at).isoformat()
    assert {r["id"] for r in history.search(**query, since=since, until=until)} == {
        s.id for s in stocked[2:5]
    }
    assert {r["id"] for r in history.search(**query, since="2025-03-07T00:00:00Z")} == {
        stocked[6].id,
        stocked[7].id,
    }
    assert history.search(**query, user="nobody") == []


def test_pagination(history: History, stocked) -> None:
    everything = [r["id"] for r in history.search("services", diagram(2), limit=8)]
    assert len(everything) == 8 == len(set(everything))
    pages = [
        r["id"] for off in (0, 3, 6) for r in history.search("services", diagram(2), limit=3, offset=off)
    ]
    assert pages == everything
    newest = [s.id for s in reversed(stocked)]
    assert [r["id"] for r in history.list(limit=3)] == newest[:3]
    assert [r["id"] for r in history.list(limit=3, offset=3)] == newest[3:6]
    assert [r["id"] for r in history.list(limit=100, user="bob")] == newest[1::2]


def test_get_image_and_delete(history: History, stocked) -> None:
    item = stocked[2]
    assert history.get(item.id) == item.to_dict()
    data, media_type = history.image(item.id)
    assert media_type == "image/png"
    assert Image.open(io.BytesIO(data)).tobytes() == diagram(2).tobytes()  # lossless for a drawing
    history.delete(item.id)
    with pytest.raises(NotFound):
        history.get(item.id)
    with pytest.raises(NotFound):
        history.image(item.id)
    with pytest.raises(NotFound):
        history.delete(item.id)
    with pytest.raises(NotFound):
        history.get("not-a-uuid")
    assert item.id not in {r["id"] for r in history.search(None, diagram(2), limit=100)}
    assert history.store.retrieve([item.id]) == set()


def test_stored_image_copy_is_at_most_512_px(history: History) -> None:
    item = interaction("big photo")
    big = Image.merge("RGB", [Image.effect_noise((1600, 900), 40 + 20 * k) for k in range(3)])
    history.record(item, big)
    data, media_type = history.image(item.id)
    assert max(Image.open(io.BytesIO(data)).size) == 512
    assert media_type == "image/jpeg"  # a photo-like image (many colours) is stored as JPEG
    indexed(history, 1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"text": None, "image": None}, "give a text"),
        ({"text": "   ", "image": None}, "give a text"),
        ({"text": "x", "image": None, "limit": 0}, "limit"),
        ({"text": "x", "image": None, "limit": 101}, "limit"),
        ({"text": "x", "image": None, "offset": -1}, "offset"),
        ({"text": "x", "image": None, "against": "pictures"}, "against"),
        ({"text": "x", "image": None, "since": "yesterday"}, "ISO 8601"),
        ({"text": "x", "image": None, "since": "2025-02-01", "until": "2025-01-01"}, "since is after until"),
    ],
)
def test_invalid_queries(history: History, kwargs, message) -> None:
    with pytest.raises(InvalidQuery, match=message):
        history.search(**kwargs)


def test_invalid_listing(history: History) -> None:
    with pytest.raises(InvalidQuery):
        history.list(limit=0)
    with pytest.raises(InvalidQuery):
        history.list(offset=-2)


def test_store_down_then_restart_on_the_same_journal_loses_nothing(settings, shared_embedders) -> None:
    down = History(
        settings.replace(qdrant_url=f"http://127.0.0.1:{closed_port()}"), embedders=shared_embedders
    )
    down.start()
    items = [interaction(f"answer while down {i}") for i in range(5)]
    for i, item in enumerate(items):
        down.record(item, diagram(30 + i))
    status = down.status()
    assert status["index"] == "unavailable" and status["journal"] == "ok" and status["backlog"] == 5
    assert [r["id"] for r in down.list(limit=10)] == [i.id for i in reversed(items)]
    down.close()

    with History(settings, embedders=shared_embedders) as up:  # embedded store, same data dir
        indexed(up, 5)
        assert up.status()["index"] == "ok"
        for i, item in enumerate(items):
            assert up.search(None, diagram(30 + i), limit=1, against="images")[0]["id"] == item.id


def test_reindex_is_idempotent(history: History, stocked) -> None:
    assert history.reindex(progress=False) == len(stocked)
    assert history.store.count() == len(stocked)
    assert history.reindex(progress=False) == len(stocked)
    assert history.store.count() == len(stocked)
    assert history.search(None, diagram(1), limit=1)[0]["id"] == stocked[1].id
    history.indexer.index_entries(history.journal.backlog(100, 5) or [])  # nothing left to do
    assert history.status()["backlog"] == 0


def test_concurrent_records_each_land_exactly_once(history: History) -> None:
    items = [interaction(f"concurrent answer {i}") for i in range(48)]
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for j in range(k, len(items), 6):
                history.record(items[j], diagram(100 + j))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    indexed(history, len(items))
    assert sorted(history.journal.ids()) == sorted(i.id for i in items)
    assert history.store.retrieve([i.id for i in items]) == {i.id for i in items}


WRITER = """
import sys, warnings
warnings.simplefilter("ignore")
from pathlib import Path
from visionrag.search.config import HistoryConfig
from visionrag.search.history import History
from tests.search.helpers import diagram, interaction
text_dir, vision_dir, data_dir = map(Path, sys.argv[1:4])
settings = HistoryConfig(text_model_path=text_dir, image_model_path=vision_dir,
    data_dir=data_dir, collection_name="test_history")
history = History(settings)
history.start()
n = 0
while True:
    item = interaction(f"answer {n}")
    history.record(item, diagram(n))
    print(item.id, n, flush=True)  # acknowledged: record() returned
    n += 1
"""


def test_kill_9_after_acknowledgements_loses_nothing(settings, tiny_clip, shared_embedders) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tiny_clip[0]), str(tiny_clip[1]), str(settings.data_dir)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    acked: list[tuple[str, int]] = []

    def read_one() -> bool:
        line = proc.stdout.readline().split()
        if line:
            acked.append((line[0], int(line[1])))
        return len(acked) >= 30

    wait_for(read_one, timeout=120, what="30 acknowledged records")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # only whole lines were acknowledged: the kill can cut the last one mid-write
    complete = proc.stdout.read().split("\n")[:-1]
    acked += [(p[0], int(p[1])) for p in (line.split() for line in complete) if p]

    with History(settings, embedders=shared_embedders) as history:  # the embedded store's lock is free again
        assert {i for i, _ in acked} <= set(history.journal.ids())
        wait_for(lambda: history.status()["backlog"] == 0, what="the backlog")
        for id, n in acked[-3:]:
            assert history.search(None, diagram(n), limit=1, against="images")[0]["id"] == id
