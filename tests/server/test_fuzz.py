"""Bounded fuzzing of every route with hypothesis: random JSON values, wrong types, huge numbers, odd unicode,
random bytes and random multipart forms. No answer may be a 5xx (a 500 is a bug; a 503 here would mean the
server fell over), every error is JSON `{"detail": ...}`, and the server still answers afterwards.

The server runs with tiny token limits, so a body that happens to be valid costs one or two tokens.
Deterministic (derandomized) and bounded: a few thousand requests, well under two minutes on 2 cores."""

from __future__ import annotations

import base64
import json
import urllib.parse
import uuid

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import diagram_png

PNG = diagram_png(42)
DATA_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()
SCALE = 1.0  # multiply every max_examples (e.g. 10 for a long local run)
FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


@pytest.fixture(scope="module")
def target(start_server, image_server):
    server = start_server(
        VISIONRAG_MAX_TOKENS_LIMIT="3",
        VISIONRAG_DEFAULT_MAX_TOKENS="2",
        VISIONRAG_MAX_BODY_BYTES="200000",
        VISIONRAG_FETCH_TIMEOUT="2",
    )
    session = requests.Session()
    session.image_url = image_server.add("/fuzz/ok.png", PNG)  # type: ignore[attr-defined]
    session.base = server.url  # type: ignore[attr-defined]
    yield session
    session.close()


def fuzz(examples: int) -> settings:
    return settings(FUZZ, max_examples=max(1, int(examples * SCALE)))


def check(r: requests.Response, what: object) -> None:
    assert r.status_code < 500, f"{r.status_code} for {what!r}: {r.text[:500]}"
    if r.status_code >= 400:
        assert r.headers.get("content-type", "").startswith("application/json"), (what, r.text[:200])
        assert isinstance(r.json().get("detail"), str), (what, r.text[:200])
    elif r.headers.get("content-type", "").startswith(("application/x-ndjson", "text/event-stream")):
        assert '"status": 500' not in r.text, f"streamed 500 for {what!r}: {r.text[-500:]}"


# -- strategies ---------------------------------------------------------------------------------------------
TRICKY_TEXT = st.sampled_from(
    [
        "",
        " ",
        "\x00",
        "\ud800",
        "\udfff",
        "\u202e",
        "\ufeff",
        "\U0001d54f" * 50,
        "é" * 3000,
        "a" * 20000,
        "NaN",
        "null",
    ]
)
TEXT = st.one_of(st.text(max_size=40), TRICKY_TEXT)
HUGE = st.sampled_from([10**20, -(10**20), 10**400, 2**63, -(2**63) - 1, 1e308, -1e308, 5e-324])
NUMBER = st.one_of(st.integers(-5, 10), st.integers(), HUGE, st.floats(allow_nan=True, allow_infinity=True))
SCALAR = st.one_of(st.none(), st.booleans(), NUMBER, TEXT)
JSON = st.recursive(
    SCALAR,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
ID = st.one_of(
    st.uuids().map(str),
    st.text(min_size=1, max_size=60),
    st.sampled_from(["..", ".", "%00", "null", "0", "-1", str(uuid.uuid4()).upper(), "a/b", "?x=1", "#"]),
)


def image_urls() -> st.SearchStrategy:
    return st.one_of(
        st.sampled_from(
            [
                DATA_URL,
                "data:image/png;base64,@@@",
                "data:image/png;base64,",
                "data:,",
                "data:text/plain;base64,aGVsbG8=",
                "http://127.0.0.1:1/x.png",
                "ftp://example.com/x.png",
                "file:///etc/passwd",
                "http://[::1]/",
                "http://0x7f000001/",
                "https://",
                "http://%zz/",
            ]
        ),
        TEXT,
        JSON,
    )


def shaped(fields: dict[str, st.SearchStrategy]) -> st.SearchStrategy:
    """Objects with the route's own keys (some missing), each with a plausible or random value, plus junk."""
    return st.fixed_dictionaries({}, optional={k: st.one_of(v, JSON) for k, v in fields.items()}).flatmap(
        lambda d: st.dictionaries(TEXT, JSON, max_size=2).map(lambda extra: {**extra, **d})
    )


CONTEXT = st.one_of(
    st.booleans(),
    st.integers(-1, 25),
    st.fixed_dictionaries(
        {},
        optional={
            "k": st.one_of(st.integers(-1, 25), HUGE),
            "against": st.one_of(st.sampled_from(["images", "answers", "both"]), TEXT),
            "min_score": NUMBER,
            "user": TEXT,
            "tags": st.one_of(TEXT, st.lists(TEXT, max_size=3)),
        },
    ),
    TEXT,
)
PREDICT_FIELDS = {
    "image_url": image_urls(),
    "user_query": TEXT,
    "max_tokens": st.integers(-2, 5),
    "temperature": NUMBER,
    "top_p": NUMBER,
    "stop": st.one_of(TEXT, st.lists(TEXT, max_size=6)),
    "seed": NUMBER,
    "stream": st.booleans(),
    "store": st.booleans(),
    "user": TEXT,
    "tags": st.one_of(TEXT, st.lists(TEXT, max_size=25)),
    "context": CONTEXT,
}
PART = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": TEXT}),
    st.fixed_dictionaries(
        {
            "type": st.just("image_url"),
            "image_url": st.one_of(image_urls(), st.fixed_dictionaries({"url": image_urls()})),
        }
    ),
    JSON,
)
MESSAGE = st.fixed_dictionaries(
    {},
    optional={
        "role": st.one_of(st.sampled_from(["user", "system", "assistant", "developer", "tool"]), JSON),
        "content": st.one_of(TEXT, st.lists(PART, max_size=3), JSON),
    },
)
CHAT_FIELDS = {
    "messages": st.one_of(st.lists(MESSAGE, max_size=3), JSON),
    "model": TEXT,
    "max_tokens": st.integers(-2, 5),
    "max_completion_tokens": st.integers(-2, 5),
    "n": st.integers(-1, 3),
    "stream": st.booleans(),
    "stream_options": st.one_of(st.fixed_dictionaries({"include_usage": st.booleans()}), JSON),
    "temperature": NUMBER,
    "top_p": NUMBER,
    "store": st.booleans(),
    "user": TEXT,
    "tags": st.lists(TEXT, max_size=3),
    "context": CONTEXT,
}
SEARCH_FIELDS = {
    "text": TEXT,
    "image_url": image_urls(),
    "limit": st.one_of(st.integers(-2, 120), HUGE),
    "offset": st.one_of(st.integers(-2, 5), HUGE),
    "against": st.one_of(st.sampled_from(["images", "answers", "both", "BOTH", ""]), TEXT),
    "since": st.one_of(st.sampled_from(["2024-01-01", "2024-13-45", "0", "9999-12-31T23:59:59+14:00"]), TEXT),
    "until": st.one_of(st.sampled_from(["2030-01-01T00:00:00Z", "yesterday"]), NUMBER),
    "user": TEXT,
    "tags": st.one_of(TEXT, st.lists(TEXT, max_size=3)),
}

IMPORT_FIELDS = {
    "image_url": image_urls(),
    "answer": TEXT,
    "query": TEXT,
    "user": TEXT,
    "tags": st.one_of(TEXT, st.lists(TEXT, max_size=25)),
    "created_at": st.one_of(st.sampled_from(["2024-01-01", "2024-13-45", "2024-05-01T12:00:00Z"]), TEXT),
}


def body_for(fields: dict[str, st.SearchStrategy]) -> st.SearchStrategy:
    """Bytes of a body: a shaped object (most), any JSON value, or raw bytes."""
    return st.one_of(
        shaped(fields).map(lambda d: json.dumps(d).encode()),
        shaped(fields).map(lambda d: json.dumps(d).encode()),
        JSON.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=300),
        st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass")),
    )


CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "application/json",
        "text/plain",
        "",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    ]
)


def post(target, path: str, body: bytes, content_type: str) -> requests.Response:
    headers = {"content-type": content_type} if content_type else {}
    return target.post(target.base + path, data=body, headers=headers, timeout=60)


# -- JSON bodies -------------------------------------------------------------------------------------------
@fuzz(700)
@given(body=body_for(PREDICT_FIELDS), content_type=CONTENT_TYPES)
def test_fuzz_predict(target, body, content_type) -> None:
    check(post(target, "/predict", body, content_type), body[:300])


@fuzz(700)
@given(body=body_for(CHAT_FIELDS), content_type=CONTENT_TYPES)
def test_fuzz_chat_completions(target, body, content_type) -> None:
    check(post(target, "/v1/chat/completions", body, content_type), body[:300])


@fuzz(500)
@given(body=body_for(SEARCH_FIELDS), content_type=CONTENT_TYPES)
def test_fuzz_history_search(target, body, content_type) -> None:
    check(post(target, "/history/search", body, content_type), body[:300])


@fuzz(300)
@given(body=body_for(IMPORT_FIELDS), content_type=CONTENT_TYPES)
def test_fuzz_history_import(target, body, content_type) -> None:
    check(post(target, "/history", body, content_type), body[:300])


# -- multipart forms ---------------------------------------------------------------------------------------
FORM_NAMES = st.one_of(
    st.sampled_from(sorted({*PREDICT_FIELDS, *SEARCH_FIELDS, *IMPORT_FIELDS, "image"})), st.text(max_size=10)
)
FILE = st.one_of(st.just(PNG), st.binary(max_size=200), st.just(PNG[:50]))


@fuzz(400)
@given(
    path=st.sampled_from(["/predict", "/history/search", "/history"]),
    fields=st.dictionaries(FORM_NAMES, st.text(max_size=30), max_size=6),
    files=st.dictionaries(st.sampled_from(["image", "image", "other", "file"]), FILE, max_size=2),
    raw=st.one_of(st.none(), st.binary(max_size=200)),
)
def test_fuzz_multipart(target, path, fields, files, raw) -> None:
    if raw is not None:  # a broken multipart body
        boundary = "b0und"
        r = post(
            target,
            path,
            b"--" + boundary.encode() + b"\r\n" + raw,
            f"multipart/form-data; boundary={boundary}",
        )
        check(r, raw)
        return
    fields = {k: v.replace("\x00", "") for k, v in fields.items() if k}
    r = target.post(
        target.base + path,
        data=fields,
        files={k: (f"{k}.png", v, "image/png") for k, v in files.items()}
        or {"image": ("x.png", PNG, "image/png")},
        timeout=60,
    )
    check(r, (path, fields, {k: len(v) for k, v in files.items()}))


# -- query strings and ids -------------------------------------------------------------------------------------
@fuzz(400)
@given(
    params=st.dictionaries(
        st.one_of(st.sampled_from(["limit", "offset", "user"]), st.text(max_size=8)),
        st.one_of(
            st.integers().map(str), st.text(max_size=30), st.sampled_from(["1e3", "-0", "0x10", "", " 5"])
        ),
        max_size=4,
    )
)
def test_fuzz_history_list(target, params) -> None:
    r = target.get(target.base + "/history", params=params, timeout=30)
    check(r, params)


@fuzz(500)
@given(id=ID, method=st.sampled_from(["GET", "GET", "DELETE"]), suffix=st.sampled_from(["", "", "/image"]))
def test_fuzz_history_ids(target, id, method, suffix) -> None:
    if method == "DELETE":
        suffix = ""
    path = "/history/" + urllib.parse.quote(id, safe="") + suffix
    r = target.request(method, target.base + path, timeout=30)
    check(r, (method, path))
    if r.status_code == 200 and method == "DELETE":
        pytest.fail(f"deleted something that was never stored: {id!r}")


# -- still serving ---------------------------------------------------------------------------------------------
def test_still_answers_after_the_fuzzing(target) -> None:
    assert target.get(target.base + "/health", timeout=10).status_code == 200
    r = target.post(
        target.base + "/predict",
        json={"image_url": target.image_url, "user_query": "what is it", "max_tokens": 3},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 3 and r.json()["id"]
    found = target.get(f"{target.base}/history/{r.json()['id']}", timeout=10)
    assert found.status_code == 200


# -- valid bodies with awkward text in every free-text field (random bodies are rarely valid) ---------------
AWKWARD = [
    "\ud800",
    "\udfff x",
    "\x00",
    "\u202e\ufeff",
    "\U0001d54f" * 50,
    "é" * 3000,
    "<|eot_id|>",
    "\\u0000",
]


@pytest.mark.parametrize("text", AWKWARD, ids=range(len(AWKWARD)))
def test_awkward_text_in_valid_requests(target, text) -> None:
    def send(path: str, body: dict) -> None:
        r = target.post(
            target.base + path,
            data=json.dumps(body).encode(),
            headers={"content-type": "application/json"},
            timeout=60,
        )
        check(r, (path, body))

    base = {"image_url": DATA_URL, "user_query": "q", "max_tokens": 1}
    for field, value in (("user_query", text), ("user", text[:200]), ("tags", [text[:64]]), ("stop", [text])):
        send("/predict", {**base, field: value})
        send("/predict", {**base, field: value, "stream": True})
    content = [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": DATA_URL}}]
    send("/v1/chat/completions", {"messages": [{"role": "user", "content": content}], "max_tokens": 1})
    send(
        "/v1/chat/completions",
        {
            "messages": [{"role": "system", "content": text}, {"role": "user", "content": content}],
            "max_tokens": 1,
            "stream": True,
        },
    )
    for field, value in (("text", text), ("user", text), ("tags", [text]), ("since", text)):
        send("/history/search", {"text": "q", **{field: value}})
    raw = text.encode("utf-8", "surrogatepass")  # percent-encoded as sent, surrogates included
    r = target.get(target.base + "/history", params={"user": raw}, timeout=30)
    check(r, text)
