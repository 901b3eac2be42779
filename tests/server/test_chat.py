"""POST /v1/chat/completions and GET /v1/models, driven by the official `openai` client."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import openai
import pytest
import requests

from tests.conftest import diagram_png


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


def image_message(url: str, text: str, *, as_object: bool = True) -> dict:
    part = {"type": "image_url", "image_url": {"url": url} if as_object else url}
    return {"role": "user", "content": [part, {"type": "text", "text": text}]}


def test_models_lists_the_served_model(client, server) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [Path(server.env["MODEL_NAME"]).name]


def test_plain_completion_matches_predict(client, server, image_server) -> None:
    url = image_server.add("/chat/a.png", diagram_png(21))
    reply = client.chat.completions.create(
        model="anything", messages=[image_message(url, "what does it show")], max_tokens=9
    )
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason == "length"
    assert reply.usage.completion_tokens == 9 and reply.usage.prompt_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 9
    predicted = requests.post(
        f"{server.url}/predict", json={"image_url": url, "user_query": "what does it show", "max_tokens": 9}
    ).json()
    assert choice.message.content == predicted["output"]


def test_the_interaction_is_stored(client, server, image_server) -> None:
    url = image_server.add("/chat/stored.png", diagram_png(22))
    raw = client.chat.completions.with_raw_response.create(
        model="m", messages=[image_message(url, "is it stored", as_object=False)], max_completion_tokens=4
    )
    interaction_id = raw.headers["x-interaction-id"]
    reply = raw.parse()
    stored = requests.get(f"{server.url}/history/{interaction_id}", timeout=10).json()
    assert stored["query"] == "is it stored"
    assert stored["answer"] == reply.choices[0].message.content
    assert stored["image_url"] == url


def test_streaming_chunks_arrive_before_generation_ends(client, image_server) -> None:
    url = image_server.add("/chat/s.png", diagram_png(23))
    started = time.monotonic()
    stream = client.chat.completions.create(
        model="m",
        messages=[{"role": "system", "content": "You read diagrams."}, image_message(url, "describe")],
        max_tokens=2000,
        stream=True,
    )
    first_text, pieces, usage, finish = None, [], None, None
    for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            if pieces[-1] and first_text is None:
                first_text = time.monotonic() - started
            finish = chunk.choices[0].finish_reason or finish
        usage = chunk.usage or usage
    total = time.monotonic() - started
    assert sum(1 for p in pieces if p) > 100  # token by token, not one blob at the end
    assert first_text is not None and first_text < total / 2  # the first text came well before the end
    assert finish == "length" and usage is not None and usage.completion_tokens == 2000


def test_streaming_with_include_usage_sends_openai_usage_chunk(server, image_server) -> None:
    url = image_server.add("/chat/u.png", diagram_png(24))
    with requests.post(
        f"{server.url}/v1/chat/completions",
        json={
            "messages": [image_message(url, "x")],
            "max_tokens": 3,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        stream=True,
        timeout=60,
    ) as r:
        events = [line.decode()[len("data: ") :] for line in r.iter_lines() if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"


def test_data_url_and_stop(client, image_server) -> None:
    png = diagram_png(25)
    data_url = "data:image/png;base64," + base64.b64encode(png).decode()
    full = client.chat.completions.create(model="m", messages=[image_message(data_url, "q")], max_tokens=10)
    word = full.choices[0].message.content.split()[3]
    cut = client.chat.completions.create(
        model="m", messages=[image_message(data_url, "q")], max_tokens=10, stop=[word]
    )
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == full.choices[0].message.content.split(word)[0]


def test_two_images_are_refused(client, image_server) -> None:
    url = image_server.add("/chat/two.png", diagram_png(26))
    message = {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": "compare"},
        ],
    }
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="m", messages=[message], max_tokens=3)
    assert "one image" in str(err.value)


def test_no_image_and_bad_bodies(client, server) -> None:
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    r = requests.post(f"{server.url}/v1/chat/completions", json={"messages": []})
    assert r.status_code == 422 and "messages" in r.json()["detail"]
    r = requests.post(
        f"{server.url}/v1/chat/completions", json={"messages": [{"role": "robot", "content": "x"}]}
    )
    assert r.status_code == 422
    r = requests.post(
        f"{server.url}/v1/chat/completions", data=b"{", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400


def test_unreachable_image_url_is_a_clear_422(client, image_server) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as err:
        client.chat.completions.create(
            model="m", messages=[image_message(image_server.base + "/chat/missing.png", "q")], max_tokens=3
        )
    assert "404" in str(err.value)
