"""Unit tests of `VisionRAG` through the injectable session (`clients.testing.MockAdapter`)."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest
import requests

from visionrag.clients import (
    Answer,
    APIError,
    BadRequest,
    ConnectionFailed,
    InvalidArgument,
    NotFound,
    PayloadTooLarge,
    SearchHit,
    ServerError,
    ServiceUnavailable,
    Timeout,
    Unauthorized,
    UnprocessableEntity,
    UnsupportedMediaType,
    VisionRAG,
    VisionRAGError,
)
from visionrag.clients.testing import MockAdapter, ndjson

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
ANSWER = {
    "output": "Three services.",
    "id": "id-1",
    "model": "m",
    "usage": {"prompt_tokens": 5, "completion_tokens": 3},
}
RECORD = {
    "id": "id-1",
    "created_at": "2024-05-01T12:00:00Z",
    "image_url": None,
    "query": "How many services?",
    "answer": "Three services.",
    "model": "m",
    "user": "alice",
    "tags": ["a"],
    "image": "/history/id-1/image",
}


def make(handler, **kwargs) -> tuple[VisionRAG, MockAdapter]:
    adapter = MockAdapter(handler)
    kwargs.setdefault("backoff", 0)
    return VisionRAG("http://rag.test/", session=adapter.session(), **kwargs), adapter


def ok(body=None, status=200, headers=None):
    return lambda request: (status, headers or {}, body if body is not None else {})


# -- ask ---------------------------------------------------------------------------------------------------


def test_ask_with_url_sends_json_and_parses_answer():
    rag, adapter = make(ok(ANSWER), api_key="KEY", timeout=7)
    answer = rag.ask(
        "https://example.com/a.png",
        "How many services?",
        max_tokens=64,
        temperature=0.0,
        top_p=0.9,
        user="alice",
        tags=["x", "y"],
    )
    assert answer == Answer("Three services.", "id-1", "m", answer.usage)
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == (
        5,
        3,
        8,
    )
    assert str(answer) == "Three services."
    (call,) = adapter.calls
    assert (call.method, call.request.url) == ("POST", "http://rag.test/predict")
    assert call.headers["Authorization"] == "Bearer KEY"
    assert call.headers["Content-Type"] == "application/json"
    assert call.json() == {
        "image_url": "https://example.com/a.png",
        "user_query": "How many services?",
        "max_tokens": 64,
        "temperature": 0.0,
        "top_p": 0.9,
        "user": "alice",
        "tags": ["x", "y"],
    }
    assert call.timeout == 7 and call.stream is False


def test_ask_with_data_url_and_store_false():
    rag, adapter = make(ok({**ANSWER, "id": None}))
    answer = rag.ask("data:image/png;base64,iVBORw0KGgo=", "What?", store=False)
    assert answer.id is None
    assert adapter.calls[0].json() == {
        "image_url": "data:image/png;base64,iVBORw0KGgo=",
        "user_query": "What?",
        "store": False,
    }


def test_ask_with_path_uploads_multipart(tmp_path):
    path = tmp_path / "blueprint.png"
    path.write_bytes(PNG)
    rag, adapter = make(ok(ANSWER))
    rag.ask(path, "Q?", max_tokens=10, tags=["a", "b"], store=False, user="bob")
    rag.ask(str(path), "Q?")
    fields, files = adapter.calls[0].form()
    assert adapter.calls[0].path == "/predict"
    assert adapter.calls[0].headers["Content-Type"].startswith("multipart/form-data; boundary=")
    assert files == {"image": ("blueprint.png", PNG, "image/png")}
    assert fields == {
        "user_query": ["Q?"],
        "max_tokens": ["10"],
        "user": ["bob"],
        "tags": ["a", "b"],
        "store": ["false"],
    }
    assert adapter.calls[1].form()[1]["image"][0] == "blueprint.png"


def test_ask_with_bytes_and_file_object_upload():
    rag, adapter = make(ok(ANSWER))
    rag.ask(PNG, "Q?")
    rag.ask(io.BytesIO(b"\xff\xd8\xff\xe0jpeg"), "Q?")
    assert adapter.calls[0].form()[1]["image"] == ("image.png", PNG, "image/png")
    assert adapter.calls[1].form()[1]["image"][2] == "image/jpeg"


def test_ask_rejects_empty_image_and_missing_file(tmp_path):
    rag, adapter = make(ok(ANSWER))
    with pytest.raises(InvalidArgument):
        rag.ask(b"", "Q?")
    with pytest.raises(FileNotFoundError):
        rag.ask(tmp_path / "missing.png", "Q?")
    with pytest.raises(TypeError):
        rag.ask(42, "Q?")
    assert adapter.calls == []


# -- ask_stream --------------------------------------------------------------------------------------------


def test_ask_stream_yields_pieces_then_answer():
    done = {"done": True, **ANSWER, "output": "Three services."}
    rag, adapter = make(
        lambda r: (
            200,
            {"Content-Type": "application/x-ndjson"},
            ndjson({"delta": "Three"}, {"delta": ""}, {"delta": " services."}, done),
        )
    )
    stream = rag.ask_stream("https://e.com/a.png", "Q?", max_tokens=5)
    assert stream.answer is None
    assert list(stream) == ["Three", " services."]
    assert stream.text == "Three services."
    assert stream.answer.id == "id-1" and stream.answer.usage.completion_tokens == 3
    call = adapter.calls[0]
    assert call.stream is True
    assert call.json() == {
        "image_url": "https://e.com/a.png",
        "user_query": "Q?",
        "max_tokens": 5,
        "stream": True,
    }
    with pytest.raises(VisionRAGError):
        list(stream)  # a stream is read once


def test_ask_stream_upload_sends_stream_field():
    rag, adapter = make(lambda r: (200, {}, ndjson({"delta": "x"}, {"done": True, "id": None, "usage": {}})))
    stream = rag.ask_stream(PNG, "Q?")
    assert list(stream) == ["x"]
    assert stream.answer.output == "x"  # no output on the done line: the pieces
    assert adapter.calls[0].form()[0]["stream"] == ["true"]


def test_ask_stream_lines_split_across_chunks():
    body = [
        b'{"delta": "Hel',
        b'lo"}\n{"del',
        b'ta": " you"}\n{"done": true, "output": "Hello you", "id": "i"}',
    ]
    rag, _ = make(lambda r: (200, {}, iter(body)))
    stream = rag.ask_stream(PNG, "Q?")
    assert list(stream) == ["Hello", " you"]
    assert stream.answer.output == "Hello you"


def test_ask_stream_mid_stream_error_raises_with_status_and_detail():
    events = ndjson({"delta": "Thr"}, {"error": {"status": 503, "detail": "the model worker died"}})
    rag, _ = make(lambda r: (200, {}, events))
    stream = rag.ask_stream(PNG, "Q?")
    pieces = []
    with pytest.raises(ServiceUnavailable) as caught:
        for piece in stream:
            pieces.append(piece)
    assert pieces == ["Thr"]
    assert caught.value.status == 503 and caught.value.detail == "the model worker died"
    assert stream.answer is None


def test_ask_stream_error_status_raises_before_iteration():
    rag, _ = make(ok({"detail": "could not fetch image_url: timed out"}, status=422))
    with pytest.raises(UnprocessableEntity, match="could not fetch"):
        rag.ask_stream("https://e.com/a.png", "Q?")


def test_ask_stream_truncated_and_garbled():
    rag, _ = make(lambda r: (200, {}, ndjson({"delta": "a"})))
    with pytest.raises(VisionRAGError, match="before the answer was complete"):
        list(rag.ask_stream(PNG, "Q?"))
    rag, _ = make(lambda r: (200, {}, iter([b"not json\n"])))
    with pytest.raises(VisionRAGError, match="invalid stream line"):
        list(rag.ask_stream(PNG, "Q?"))


def test_ask_stream_accepts_a_plain_json_answer():
    rag, _ = make(ok(ANSWER))
    stream = rag.ask_stream(PNG, "Q?")
    assert list(stream) == []
    assert stream.answer.output == "Three services."


def test_ask_stream_connection_lost_and_read_timeout_mid_stream():
    def broken(exc):
        def body():
            yield b'{"delta": "a"}\n'
            raise exc

        return lambda r: (200, {}, body())

    rag, _ = make(broken(requests.exceptions.ChunkedEncodingError("Connection broken")))
    with pytest.raises(ConnectionFailed, match="lost during the answer"):
        list(rag.ask_stream(PNG, "Q?"))
    rag, _ = make(broken(requests.exceptions.ConnectionError("Read timed out.")))
    with pytest.raises(Timeout):
        list(rag.ask_stream(PNG, "Q?"))


# -- history -----------------------------------------------------------------------------------------------


def test_search_by_text_sends_filters_and_parses_hits():
    rag, adapter = make(ok({"results": [{**RECORD, "score": 0.87}], "took_ms": 3}))
    since = datetime(2024, 5, 1, tzinfo=UTC)
    hits = rag.search(
        text="services",
        limit=5,
        offset=10,
        against="answers",
        since=since,
        until="2024-06-01",
        user="alice",
        tags=["a"],
    )
    assert hits == [SearchHit(hits[0].interaction, 0.87)]
    hit = hits[0]
    assert hit.id == "id-1" and hit.interaction.query == "How many services?"
    assert hit.interaction.created_at == datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert hit.interaction.tags == ["a"] and hit.interaction.user == "alice"
    assert hit.to_dict() == {**RECORD, "score": 0.87}
    call = adapter.calls[0]
    assert (call.method, call.path) == ("POST", "/history/search")
    assert call.json() == {
        "text": "services",
        "limit": 5,
        "offset": 10,
        "against": "answers",
        "since": "2024-05-01T00:00:00+00:00",
        "until": "2024-06-01",
        "user": "alice",
        "tags": ["a"],
    }


def test_search_by_image_path_url_and_both(tmp_path):
    path = tmp_path / "q.png"
    path.write_bytes(PNG)
    rag, adapter = make(ok({"results": []}))
    assert rag.search(image=path, against="images") == []
    rag.search(image="https://e.com/x.png")
    rag.search(text="kafka", image=PNG, limit=3)
    fields, files = adapter.calls[0].form()
    assert files["image"] == ("q.png", PNG, "image/png")
    assert fields == {"limit": ["10"], "against": ["images"]}
    assert adapter.calls[1].json() == {"image_url": "https://e.com/x.png", "limit": 10, "against": "both"}
    assert adapter.calls[2].form()[0]["text"] == ["kafka"]


def test_search_needs_text_or_image():
    rag, adapter = make(ok({"results": []}))
    with pytest.raises(InvalidArgument):
        rag.search()
    assert adapter.calls == []


def test_history_get_delete_image_health():
    def handler(request):
        path = request.path_url
        if path.startswith("/history?"):
            return 200, {}, {"results": [RECORD, {**RECORD, "id": "id-2"}]}
        if path == "/history/id-1/image":
            return 200, {"Content-Type": "image/png"}, PNG
        if path == "/history/id-1":
            return 200, {}, RECORD if request.method == "GET" else {"deleted": "id-1"}
        if path == "/health":
            return 200, {}, {"status": "ok"}
        return 404, {}, {"detail": "Not Found"}

    rag, adapter = make(handler)
    items = rag.history(limit=2, offset=4, user="alice")
    assert [i.id for i in items] == ["id-1", "id-2"]
    assert adapter.calls[0].query == {"limit": ["2"], "offset": ["4"], "user": ["alice"]}
    assert rag.get("id-1").answer == "Three services."
    assert rag.get("id-1").to_dict() == RECORD
    assert rag.delete("id-1") is None
    assert rag.image("id-1") == PNG
    assert rag.health() == {"status": "ok"}
    assert [(c.method, c.path) for c in adapter.calls[1:]] == [
        ("GET", "/history/id-1"),
        ("GET", "/history/id-1"),
        ("DELETE", "/history/id-1"),
        ("GET", "/history/id-1/image"),
        ("GET", "/health"),
    ]
    assert all(c.timeout == rag.timeout for c in adapter.calls)


def test_ids_are_quoted_and_required():
    rag, adapter = make(ok(RECORD))
    rag.get("a/b c")
    assert adapter.calls[0].request.path_url == "/history/a%2Fb%20c"
    with pytest.raises(InvalidArgument):
        rag.delete("")


def test_iter_history_pages_until_a_short_page():
    records = [{**RECORD, "id": f"id-{i}"} for i in range(5)]

    def handler(request):
        from urllib.parse import parse_qs, urlsplit

        q = parse_qs(urlsplit(request.url).query)
        limit, offset = int(q["limit"][0]), int(q["offset"][0])
        return 200, {}, {"results": records[offset : offset + limit]}

    rag, adapter = make(handler)
    assert [i.id for i in rag.iter_history(page_size=2)] == [f"id-{i}" for i in range(5)]
    assert [c.query["offset"] for c in adapter.calls] == [["0"], ["2"], ["4"]]


# -- errors, retries, timeouts -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequest),
        (401, Unauthorized),
        (404, NotFound),
        (413, PayloadTooLarge),
        (415, UnsupportedMediaType),
        (422, UnprocessableEntity),
        (500, ServerError),
        (503, ServiceUnavailable),
        (504, ServerError),
        (409, APIError),
    ],
)
def test_error_statuses_map_to_exceptions_with_detail(status, cls):
    rag, _ = make(ok({"detail": f"reason {status}"}, status=status))
    with pytest.raises(cls) as caught:
        rag.get("x")
    error = caught.value
    assert type(error) is cls
    assert (error.status, error.detail) == (status, f"reason {status}")
    assert f"{status}" in str(error) and f"reason {status}" in str(error) and "/history/x" in str(error)


def test_error_detail_from_validation_list_and_plain_text():
    detail = [{"loc": ["body", "user_query"], "msg": "Field required", "type": "missing"}]
    rag, _ = make(ok({"detail": detail}, status=422))
    with pytest.raises(UnprocessableEntity) as caught:
        rag.ask("https://e.com/a.png", "Q?")
    assert caught.value.detail == "user_query: Field required"
    rag, _ = make(ok("upstream\nexploded", status=502))
    with pytest.raises(ServerError) as caught:
        rag.health()
    assert caught.value.detail == "upstream exploded"


def test_invalid_json_answer():
    rag, _ = make(ok("<html>", headers={"Content-Type": "text/html"}))
    with pytest.raises(VisionRAGError, match="invalid JSON"):
        rag.get("x")


def flaky(failures: int, exc: Exception, body=RECORD):
    state = {"n": 0}

    def handler(request):
        state["n"] += 1
        if state["n"] <= failures:
            raise exc
        return 200, {}, body

    return handler


@pytest.mark.parametrize(
    "call",
    [
        lambda r: r.get("x"),
        lambda r: r.history(),
        lambda r: r.delete("x"),
        lambda r: r.image("x"),
        lambda r: r.health(),
        lambda r: r.search(text="t"),
    ],
)
def test_idempotent_calls_retry_connection_errors(call):
    rag, adapter = make(flaky(2, requests.exceptions.ConnectionError("refused"), {"results": [], **RECORD}))
    call(rag)
    assert len(adapter.calls) == 3


def test_retries_give_up_with_connection_failed():
    rag, adapter = make(
        flaky(99, requests.exceptions.ConnectionError("[Errno 111] Connection refused")), retries=1
    )
    with pytest.raises(ConnectionFailed, match="Connection refused") as caught:
        rag.get("x")
    assert "http://rag.test" in str(caught.value)
    assert len(adapter.calls) == 2


@pytest.mark.parametrize("streaming", [False, True])
def test_ask_is_never_retried(streaming):
    rag, adapter = make(flaky(1, requests.exceptions.ConnectionError("refused"), ANSWER), retries=5)
    with pytest.raises(ConnectionFailed):
        (rag.ask_stream if streaming else rag.ask)("https://e.com/a.png", "Q?")
    assert len(adapter.calls) == 1


def test_timeouts_map_and_read_timeouts_are_not_retried():
    rag, adapter = make(flaky(99, requests.exceptions.ReadTimeout("Read timed out")))
    with pytest.raises(Timeout):
        rag.get("x")
    assert len(adapter.calls) == 1
    rag, adapter = make(flaky(1, requests.exceptions.ConnectTimeout("connect timed out")))
    assert rag.get("x").id == "id-1"
    assert len(adapter.calls) == 2
    rag, adapter = make(flaky(99, requests.exceptions.ConnectTimeout("connect timed out")), retries=0)
    with pytest.raises(Timeout, match="connecting"):
        rag.get("x")
    assert isinstance(Timeout("x"), TimeoutError) and isinstance(ConnectionFailed("x"), ConnectionError)


def test_default_timeout_on_every_call_and_api_key_from_environment(monkeypatch):
    monkeypatch.setenv("VISIONRAG_API_KEY", "ENVKEY")
    monkeypatch.setenv("VISIONRAG_URL", "http://env.test:9000/")
    adapter = MockAdapter(ok({**ANSWER, "results": []}))
    rag = VisionRAG(session=adapter.session())
    assert rag.url == "http://env.test:9000"
    rag.ask(PNG, "Q?")
    rag.search(text="t")
    list(rag.ask_stream(PNG, "Q?"))
    assert [c.timeout for c in adapter.calls] == [(10.0, 300.0)] * 3
    assert all(c.headers["Authorization"] == "Bearer ENVKEY" for c in adapter.calls)
    assert all(c.request.url.startswith("http://env.test:9000/") for c in adapter.calls)


def test_no_authorization_header_without_key(monkeypatch):
    monkeypatch.delenv("VISIONRAG_API_KEY", raising=False)
    rag, adapter = make(ok({"status": "ok"}))
    rag.health()
    assert "Authorization" not in adapter.calls[0].headers


def test_injected_session_is_not_closed_by_the_client():
    adapter = MockAdapter(ok({"status": "ok"}))
    session = adapter.session()
    with VisionRAG("http://rag.test", session=session) as rag:
        rag.health()
    assert session.get_adapter("http://rag.test") is adapter
    assert repr(rag) == "VisionRAG(url='http://rag.test')"
