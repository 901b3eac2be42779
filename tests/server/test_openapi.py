"""/openapi.json agrees with the server: schemathesis generates requests from it (bounded) against the
in-process app and fails on any 5xx, an undocumented status code or content type, or a response that
does not match its documented schema. Generated image URLs never leave the machine: name resolution
in this process refuses every name but loopback, and loopback is not an allowed image host."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from litserve.utils import wrap_litserve_start
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import wait_until
from visionrag.server.app import build_server
from visionrag.server.settings import Settings

EXAMPLES = 15  # per operation: ~170 requests in all, under a minute on a 2-core box
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def _without_lifespan(app: Any) -> Any:
    """The app for schemathesis's per-call client: the outer TestClient already ran the lifespan (the
    history opens once; its embedded store admits one owner)."""

    async def asgi(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await app(scope, receive, send)

    return asgi


@pytest.fixture(scope="module")
def app(
    tiny_model_dir: Path, tiny_clip_dirs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    settings = Settings(
        model_name=str(tiny_model_dir),
        text_model_path=tiny_clip_dirs[0],
        image_model_path=tiny_clip_dirs[1],
        accelerator="cpu",
        data_dir=tmp_path_factory.mktemp("openapi-data"),
        default_max_tokens=2,
        max_tokens_limit=4,
        fetch_timeout=2,
    )
    server = build_server(settings)
    with wrap_litserve_start(server) as started, TestClient(started.app) as client:
        wait_until(lambda: client.get("/health").status_code == 200, 120, "/health", interval=0.2)
        yield started.app


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in ("127.0.0.1", "localhost", "::1", "testserver"):
            raise socket.gaierror(socket.EAI_NONAME, "name resolution is off in this test")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def test_openapi_documents_bodies_codes_and_content_types(app: Any) -> None:
    spec = TestClient(_without_lifespan(app)).get("/openapi.json").json()
    paths = spec["paths"]
    predict = paths["/predict"]["post"]
    assert set(predict["requestBody"]["content"]) == {"application/json", "multipart/form-data"}
    body = spec["components"]["schemas"]["PredictBody"]
    assert {"image_url", "user_query", "max_tokens", "context"} <= set(body["properties"])
    assert "messages" in spec["components"]["schemas"]["ChatBody"]["properties"]
    search = paths["/history/search"]["post"]["requestBody"]["content"]
    assert set(search) == {"application/json", "multipart/form-data"}
    for code in ("413", "415", "422"):
        assert predict["responses"][code]["content"]["application/json"]["schema"]["$ref"].endswith("/Error")
    assert "404" in paths["/history/{id}"]["get"]["responses"]
    assert spec["components"]["schemas"]["Error"]["properties"]["detail"]["type"] == "string"
    assert "text/plain" in paths["/metrics"]["get"]["responses"]["200"]["content"]
    assert "image/png" in paths["/history/{id}/image"]["get"]["responses"]["200"]["content"]
    assert "HTTPValidationError" not in str(spec)


def test_the_server_keeps_its_openapi_promises(app: Any) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", _without_lifespan(app))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:

        @given(case=operation.as_strategy())
        @hypothesis_settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def check(case: Any) -> None:
            case.call_and_validate(checks=CHECKS)

        check()
