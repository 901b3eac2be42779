"""The client over real loopback HTTP (the fake server in fakeserver.py): streaming, uploads, refusals."""

from __future__ import annotations

import threading
import time

import pytest

from tests.clients.fakeserver import PNG, FakeServer
from visionrag.clients import ConnectionFailed, NotFound, ServiceUnavailable, Unauthorized, VisionRAG


def test_stream_delivers_the_first_piece_before_the_answer_is_finished(fake_server):
    fake_server.gate = threading.Event()
    rag = VisionRAG(fake_server.url)
    stream = rag.ask_stream(PNG, "How many services?")
    pieces = iter(stream)
    started = time.monotonic()
    assert next(pieces) == "You"  # the server holds the rest until the gate opens
    assert time.monotonic() - started < 5
    assert stream.answer is None
    fake_server.gate.set()
    assert "".join(pieces) == " asked: How many services?"
    assert stream.answer.id in fake_server.records
    assert stream.answer.usage.completion_tokens == 5


def test_upload_and_every_history_call_over_http(fake_server, png_file):
    rag = VisionRAG(fake_server.url)
    answer = rag.ask(png_file, "Which database?", user="alice", tags=["t1", "t2"], max_tokens=9)
    record = fake_server.records[answer.id]
    assert (record["user"], record["tags"]) == ("alice", ["t1", "t2"])
    assert fake_server.images[answer.id] == PNG
    assert rag.ask("https://example.com/x.png", "Other?", store=False).id is None
    assert [h.id for h in rag.search(text="database", tags=["t1"])] == [answer.id]
    assert [h.id for h in rag.search(image=png_file, user="alice")] == [answer.id]
    assert [i.id for i in rag.history()] == [answer.id]
    assert rag.get(answer.id).query == "Which database?"
    assert rag.image(answer.id) == PNG
    rag.delete(answer.id)
    with pytest.raises(NotFound, match="no interaction"):
        rag.get(answer.id)
    assert rag.health()["status"] == "ok"


def test_mid_stream_error_over_http(fake_server):
    stream = VisionRAG(fake_server.url).ask_stream(PNG, "fail-mid")
    with pytest.raises(ServiceUnavailable, match="worker died"):
        list(stream)
    assert stream.text == "You"


def test_api_key_is_sent_and_checked():
    server = FakeServer(api_key="s3cret").start()
    try:
        assert VisionRAG(server.url, api_key="s3cret").history() == []
        with pytest.raises(Unauthorized) as caught:
            VisionRAG(server.url, api_key="wrong").history()
        assert caught.value.status == 401
        assert server.requests[0]["headers"]["Authorization"] == "Bearer s3cret"
    finally:
        server.stop()


def test_server_down_raises_connection_failed_after_retries(closed_url):
    rag = VisionRAG(closed_url, retries=2, backoff=0.01, timeout=2)
    with pytest.raises(ConnectionFailed, match=r"cannot reach the VisionRAG server at http://127\.0\.0\.1"):
        rag.history()
    with pytest.raises(ConnectionFailed):
        rag.ask(PNG, "Q?")
