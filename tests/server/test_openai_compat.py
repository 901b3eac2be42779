"""Strict OpenAI compatibility, driven by the official `openai` client against the real server: every
parameter we do not implement is refused with a 400 naming it, the cheap ones are implemented (logprobs,
penalties, response_format text), every /v1/* error carries OpenAI's envelope (401 and 404 included),
models are served under a name that is never a path of the server."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
import requests

from tests.conftest import diagram_png
from visionrag.server.inputs import DESCRIBE_IMAGE

KEY = "compat-key-" + "Zp4q" * 4
SERVED = "acme/vision-tiny"

TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
REFUSED = [
    ("tools", {"tools": [TOOL]}),
    ("tool_choice", {"tool_choice": "auto"}),
    ("parallel_tool_calls", {"parallel_tool_calls": False}),
    ("functions", {"functions": [TOOL["function"]]}),
    ("function_call", {"function_call": "auto"}),
    ("logit_bias", {"logit_bias": {"17": 5}}),
    ("audio", {"audio": {"voice": "alloy", "format": "wav"}}),
    ("modalities", {"modalities": ["text", "audio"]}),
    ("prediction", {"prediction": {"type": "content", "content": "the diagram"}}),
    ("metadata", {"metadata": {"project": "x"}}),
    ("reasoning_effort", {"reasoning_effort": "low"}),
    ("verbosity", {"verbosity": "low"}),
    ("web_search_options", {"web_search_options": {}}),
    ("service_tier", {"service_tier": "flex"}),
    ("n", {"n": 2}),
    ("response_format", {"response_format": {"type": "json_object"}}),
    ("response_format", {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}),
    ("frobnicate", {"extra_body": {"frobnicate": 1}}),  # any parameter nobody implemented
]


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def named(start_server):
    """A server with a served model name (with a slash, as hub ids have) and an API key."""
    return start_server(VISIONRAG_SERVED_MODEL_NAME=SERVED, VISIONRAG_API_KEY=KEY)


def image_message(url: str, text: str | None = "what does it show") -> dict:
    parts: list[dict] = [{"type": "image_url", "image_url": {"url": url}}]
    if text is not None:
        parts.append({"type": "text", "text": text})
    return {"role": "user", "content": parts}


@pytest.mark.parametrize(("param", "kwargs"), REFUSED, ids=[f"{p}-{i}" for i, (p, _) in enumerate(REFUSED)])
def test_every_unimplemented_parameter_is_refused_by_name(client, image_server, param, kwargs) -> None:
    path = f"/compat/refused-{param}.png"
    url = image_server.add(path, diagram_png(60))
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="m", messages=[image_message(url)], max_tokens=3, **kwargs)
    assert err.value.status_code == 400
    assert err.value.param == param and err.value.type == "invalid_request_error"
    assert err.value.code in ("unsupported_parameter", "unsupported_value")
    assert param in err.value.message
    assert path not in image_server.hits  # refused before any work: the image was never fetched


@pytest.mark.parametrize(
    ("param", "message"),
    [
        ("messages[1].role", {"role": "tool", "tool_call_id": "c1", "content": "42"}),
        ("messages[1].tool_calls", {"role": "assistant", "tool_calls": [{"id": "c1", **TOOL}]}),
    ],
)
def test_tool_messages_are_refused_by_name(client, image_server, param, message) -> None:
    url = image_server.add("/compat/tool-message.png", diagram_png(61))
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="m", messages=[image_message(url), message], max_tokens=3)
    assert err.value.param == param


def test_top_logprobs_without_logprobs_is_refused(client, image_server) -> None:
    url = image_server.add("/compat/top.png", diagram_png(62))
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="m", messages=[image_message(url)], max_tokens=3, top_logprobs=2)
    assert err.value.param == "top_logprobs"


def test_harmless_parameters_are_accepted_and_change_nothing(client, image_server) -> None:
    url = image_server.add("/compat/harmless.png", diagram_png(63))
    plain = client.chat.completions.create(model="m", messages=[image_message(url)], max_tokens=6)
    same = client.chat.completions.create(
        model="whatever-the-client-calls-it",
        messages=[image_message(url)],
        max_tokens=6,
        n=1,
        user="alice",
        response_format={"type": "text"},
        modalities=["text"],
        logit_bias={},
        safety_identifier="user-123",
        prompt_cache_key="diagrams",
        extra_body={"tools": None, "tool_choice": None},  # null is the same as leaving it out
    )
    assert same.choices[0].message.content == plain.choices[0].message.content
    assert same.choices[0].logprobs is None


def test_logprobs_follow_openais_shape_streamed_or_not(client, image_server) -> None:
    url = image_server.add("/compat/logprobs.png", diagram_png(64))
    args = {
        "model": "m",
        "messages": [image_message(url)],
        "max_tokens": 7,
        "logprobs": True,
        "top_logprobs": 3,
    }
    reply = client.chat.completions.create(**args)
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens == 7
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.bytes == list(entry.token.encode("utf-8"))
        # greedy: the chosen token is the most likely one, and the top list is sorted
        assert (entry.token, entry.logprob) == (entry.top_logprobs[0].token, entry.top_logprobs[0].logprob)
        values = [t.logprob for t in entry.top_logprobs]
        assert values == sorted(values, reverse=True)
        assert sum(2.718281828**v for v in values) <= 1 + 1e-6
    assert all(entry.token in reply.choices[0].message.content for entry in content)

    streamed, text = [], []
    for chunk in client.chat.completions.create(**args, stream=True):
        if chunk.choices and chunk.choices[0].logprobs is not None:
            streamed.extend(chunk.choices[0].logprobs.content)
        if chunk.choices:
            text.append(chunk.choices[0].delta.content or "")
    assert "".join(text) == reply.choices[0].message.content
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in content]


def test_penalties_change_a_repetitive_answer_and_keep_greedy_determinism(client, image_server) -> None:
    url = image_server.add("/compat/penalty.png", diagram_png(7))
    args = {"model": "m", "messages": [image_message(url)], "max_tokens": 30}
    plain = client.chat.completions.create(**args).choices[0].message.content
    penalised = client.chat.completions.create(**args, presence_penalty=2.0).choices[0].message.content
    again = client.chat.completions.create(**args, presence_penalty=2.0).choices[0].message.content
    assert penalised == again
    assert penalised != plain
    words = penalised.split()
    assert len(set(words)) > len(set(plain.split()))  # presence penalty: fewer repeated tokens
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(**args, frequency_penalty=2.5)  # OpenAI's range is -2..2


def test_image_only_message_asks_for_a_description(client, server, image_server) -> None:
    url = image_server.add("/compat/only.png", diagram_png(65))
    raw = client.chat.completions.with_raw_response.create(
        model="m", messages=[image_message(url, text=None)], max_tokens=6
    )
    only = raw.parse()
    explicit = client.chat.completions.create(
        model="m", messages=[image_message(url, DESCRIBE_IMAGE)], max_tokens=6
    )
    assert only.choices[0].message.content == explicit.choices[0].message.content
    stored = requests.get(f"{server.url}/history/{raw.headers['x-interaction-id']}", timeout=10).json()
    assert stored["query"] == DESCRIBE_IMAGE


def test_unknown_routes_and_models_get_openais_404(client, server) -> None:
    r = requests.get(f"{server.url}/v1/no-such-thing", timeout=10)
    assert r.status_code == 404
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and "/v1/no-such-thing" in error["message"]
    assert set(error) == {"message", "type", "param", "code"}
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("gpt-4o")
    assert err.value.code == "model_not_found" and "gpt-4o" in err.value.message
    assert err.value.param == "model"


def test_validation_errors_carry_the_envelope(server) -> None:
    r = requests.post(f"{server.url}/v1/chat/completions", json={"messages": []}, timeout=10)
    assert r.status_code == 422 and "messages" in r.json()["error"]["message"]


def test_default_served_name_is_the_directorys_name_not_its_path(client, server, image_server) -> None:
    path = server.env["MODEL_NAME"]
    name = Path(path).name
    assert client.models.retrieve(name).id == name
    url = image_server.add("/compat/name.png", diagram_png(66))
    reply = client.chat.completions.create(model="m", messages=[image_message(url)], max_tokens=2)
    assert reply.model == name
    for route in ("/v1/models", "/health", "/info"):
        assert path not in requests.get(server.url + route, timeout=10).text


def test_served_model_name_is_used_everywhere(named, image_server) -> None:
    client = openai.OpenAI(base_url=f"{named.url}/v1", api_key=KEY, max_retries=0, timeout=60)
    assert [m.id for m in client.models.list().data] == [SERVED]
    assert client.models.retrieve(SERVED).id == SERVED  # a slash in the id
    url = image_server.add("/compat/served.png", diagram_png(67))
    reply = client.chat.completions.create(model="m", messages=[image_message(url)], max_tokens=2)
    assert reply.model == SERVED
    headers = {"Authorization": f"Bearer {KEY}"}
    stream = client.chat.completions.create(
        model="m", messages=[image_message(url)], max_tokens=2, stream=True
    )
    assert {chunk.model for chunk in stream} == {SERVED}
    predicted = requests.post(
        f"{named.url}/predict", json={"image_url": url, "user_query": "q", "max_tokens": 2}, headers=headers
    ).json()
    assert predicted["model"] == SERVED
    stored = requests.get(f"{named.url}/history/{predicted['id']}", headers=headers, timeout=10).json()
    assert stored["model"] == SERVED


def test_401_carries_openais_envelope(named) -> None:
    client = openai.OpenAI(base_url=f"{named.url}/v1", api_key="wrong-key", max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError) as err:
        client.models.list()
    assert err.value.code == "invalid_api_key" and "wrong" in err.value.message
    assert err.value.type == "invalid_request_error"
    r = requests.post(f"{named.url}/v1/chat/completions", json={}, timeout=10)  # no key at all
    error = r.json()["error"]
    assert (
        r.status_code == 401 and error["code"] == "invalid_api_key" and "needs an API key" in error["message"]
    )
    r = requests.get(f"{named.url}/history", timeout=10)  # outside /v1: the server's own shape
    assert r.status_code == 401 and set(r.json()) == {"detail"}
