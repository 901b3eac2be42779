"""The indexer thread: wakes on record, backs off while the store is down, skips poison rows, and
removes points of rows deleted while it worked."""

from __future__ import annotations

import io
import socket
import time

from tests.search.helpers import diagram, interaction, wait_for
from visionrag.search.errors import StoreUnavailable
from visionrag.search.history import History
from visionrag.search.indexer import OK, UNAVAILABLE
from visionrag.search.server_store import ServerStore as Store


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_searchable_within_two_seconds_of_record(history: History) -> None:
    item = interaction("the gateway routes traffic to the billing service")
    started = time.monotonic()
    history.record(item, diagram(11))
    wait_for(
        lambda: history.store.retrieve([item.id]) and history.status()["backlog"] == 0,
        timeout=2.0,
        interval=0.01,
        what="the point, and the row marked indexed",
    )
    assert time.monotonic() - started < 2.0
    results = history.search(None, diagram(11), limit=1, against="images")
    assert results[0]["id"] == item.id
    stats = history.status()
    assert stats["index"] == OK and stats["backlog"] == 0 and stats["lag_seconds"] == 0.0
    assert stats["last_delay_seconds"] < 2.0


class CountingStore(Store):
    calls = 0

    def ensure_collection(self, image_dim: int, text_dim: int) -> bool:
        CountingStore.calls += 1
        return super().ensure_collection(image_dim, text_dim)


def test_backs_off_while_the_store_is_down(settings, shared_embedders) -> None:
    down = settings.replace(qdrant_url=f"http://127.0.0.1:{closed_port()}")
    history = History(down, embedders=shared_embedders)
    CountingStore.calls = 0
    history.store = history.indexer.store = CountingStore(down)
    history.start()  # must not raise
    try:
        assert history.status()["index"] == UNAVAILABLE
        for i in range(20):  # records wake the thread but must not cut the backoff short
            history.record(interaction(f"answer {i}"), diagram(i))
        time.sleep(2.0)  # measuring a rate over a period, not synchronising
        # start() once, then retries after 0.5, 1.0 (1.5 s) and maybe 2.0 s: far from a busy loop
        assert CountingStore.calls <= 5
        stats = history.status()
        assert stats["index"] == UNAVAILABLE and stats["backlog"] == 20 and stats["lag_seconds"] > 1.0
        assert "unreachable" in stats["last_error"]
    finally:
        history.close()


def test_poison_row_is_set_aside(history: History) -> None:
    history.indexer.idle_wait = 0.1  # a failed row is retried at the next idle wake-up (30 s in service)
    good, bad = interaction("fine"), interaction("broken image")
    history.journal.add(bad, b"not an image", "image/png")
    history.record(good, diagram(3))
    wait_for(lambda: history.status()["failed"] == 1, what="the poison row to be given up")
    assert history.store.retrieve([good.id, bad.id]) == {good.id}
    assert history.status()["backlog"] == 0


def test_row_deleted_during_indexing_leaves_no_point(history: History) -> None:
    history.indexer.stop()  # drive it by hand
    item = interaction("short lived")
    png = io.BytesIO()
    diagram(5).save(png, format="PNG")
    history.journal.add(item, png.getvalue(), "image/png")
    entries = history.journal.backlog(10, 5)
    history.journal.delete(item.id)  # between reading the backlog and upserting
    assert history.indexer.index_entries(entries) == 0
    assert history.store.retrieve([item.id]) == set()


def test_deletion_while_down_is_applied_when_the_store_returns(settings, shared_embedders) -> None:
    history = History(settings, embedders=shared_embedders)
    history.start()
    item = interaction("to be deleted")
    history.record(item, diagram(8))
    wait_for(lambda: history.store.retrieve([item.id]), what="indexing")
    real_delete = history.store.delete

    def failing(ids):
        raise StoreUnavailable("down for the test")

    history.store.delete = failing  # type: ignore[method-assign]
    history.delete(item.id)
    assert history.journal.pending_deletes() == [item.id]
    assert history.search(None, diagram(8), limit=5) == []  # the stale point is never returned
    history.store.delete = real_delete  # type: ignore[method-assign]
    history.indexer.wake()
    wait_for(
        lambda: not history.store.retrieve([item.id]) and not history.journal.pending_deletes(),
        what="the pending deletion applied to the store and cleared from the journal",
    )
    history.close()
