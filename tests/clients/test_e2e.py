"""The client and the `visionrag` CLI against the REAL server on the tiny checkpoint (tests/conftest.py)."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import uuid
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import VISIONRAG, diagram_png, free_port, wait_until
from visionrag.clients import (
    ConnectionFailed,
    NotFound,
    Unauthorized,
    UnprocessableEntity,
    UnsupportedMediaType,
    VisionRAG,
)


@pytest.fixture
def rag(server) -> VisionRAG:
    return VisionRAG(server.url, api_key="", timeout=120, backoff=0.05)


@pytest.fixture
def user() -> str:
    """A user name of this test alone, to filter the shared server's history."""
    return f"e2e-{uuid.uuid4().hex[:8]}"


def cli(
    url: str, *args: str, input: bytes | None = None, env: dict | None = None
) -> subprocess.CompletedProcess:
    """The installed `visionrag` console script, as a user runs it."""
    return subprocess.run(
        [str(VISIONRAG), "--url", url, *args],
        input=input,
        capture_output=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )


def searchable(rag: VisionRAG, id: str, **query) -> bool:
    return id in {hit.id for hit in rag.search(limit=100, **query)}


def test_every_client_method(rag, server, image_server, user, tmp_path):
    assert rag.health()
    png = diagram_png(41)
    path = tmp_path / "blueprint.png"
    path.write_bytes(png)
    url = image_server.add("/e2e/client.png", diagram_png(42))
    data_url = "data:image/png;base64," + base64.b64encode(png).decode()

    by_path = rag.ask(path, "which services talk to the database", max_tokens=5, user=user, tags=["e2e", "a"])
    assert by_path.id and by_path.output.strip() and by_path.usage.completion_tokens == 5
    assert by_path.usage.prompt_tokens > 0 and by_path.model == Path(server.env["MODEL_NAME"]).name
    by_bytes = rag.ask(png, "which services talk to the database", max_tokens=5, user=user, temperature=0)
    by_data = rag.ask(data_url, "which services talk to the database", max_tokens=5, user=user, top_p=0.9)
    assert by_path.output == by_bytes.output == by_data.output
    by_url = rag.ask(url, "what is in the diagram", max_tokens=4, user=user, tags=["e2e"])
    unstored = rag.ask(url, "not remembered", max_tokens=3, store=False)
    assert unstored.id is None

    stream = rag.ask_stream(path, "list the tables", max_tokens=6, user=user, tags=["streamed"])
    pieces = list(stream)
    assert len(pieces) >= 1 and "".join(pieces) == stream.answer.output == stream.text
    assert stream.answer.id and stream.answer.usage.completion_tokens == 6

    ids = [by_url.id, by_data.id, by_bytes.id, by_path.id]
    listed = rag.history(limit=10, user=user)
    assert [i.id for i in listed] == [stream.answer.id, *ids]
    assert [i.id for i in rag.history(limit=2, offset=1, user=user)] == ids[:2]
    assert [i.id for i in rag.iter_history(user=user, page_size=2)] == [stream.answer.id, *ids]

    item = rag.get(by_path.id)
    assert (item.query, item.answer, item.user) == (
        "which services talk to the database",
        by_path.output,
        user,
    )
    assert sorted(item.tags) == ["a", "e2e"] and item.created_at is not None
    thumb = Image.open(io.BytesIO(rag.image(by_path.id)))
    assert max(thumb.size) <= 512

    wait_until(lambda: searchable(rag, stream.answer.id, text="list the tables", user=user), 60, "indexing")
    hits = rag.search(text="which services", user=user, tags=["e2e", "a"], limit=10)
    assert [h.id for h in hits] == [by_path.id] and isinstance(hits[0].score, float)
    assert searchable(rag, by_url.id, image=url, against="images", user=user)
    assert searchable(rag, by_path.id, image=path, user=user, since="2000-01-01T00:00:00Z")
    assert rag.search(text="anything", user=user, until="2000-01-01T00:00:00Z") == []

    rag.delete(by_url.id)
    with pytest.raises(NotFound):
        rag.get(by_url.id)
    with pytest.raises(NotFound):
        rag.delete(by_url.id)
    assert by_url.id not in {i.id for i in rag.history(user=user)}


def test_client_errors_carry_status_and_detail(rag, closed_url):
    with pytest.raises(UnsupportedMediaType) as caught:
        rag.ask(b"this is not an image at all", "what is it")
    assert caught.value.status == 415 and caught.value.detail
    with pytest.raises(UnprocessableEntity) as caught:
        rag.ask(f"{closed_url}/missing.png", "what is it")
    assert caught.value.status == 422 and caught.value.detail
    with pytest.raises(NotFound):
        rag.get(str(uuid.uuid4()))
    with pytest.raises(ConnectionFailed):
        VisionRAG(closed_url, retries=1, backoff=0).health()


def test_api_key_is_required_when_the_server_sets_one(start_server):
    server = start_server(VISIONRAG_API_KEY="e2e-key")
    assert VisionRAG(server.url, api_key="").health()  # /health stays open
    with pytest.raises(Unauthorized) as caught:
        VisionRAG(server.url, api_key="wrong").history()
    assert caught.value.status == 401
    assert VisionRAG(server.url, api_key="e2e-key").history(limit=1) == []
    result = cli(server.url, "history", "list", "--json", env={"VISIONRAG_API_KEY": "e2e-key"})
    assert result.returncode == 0 and json.loads(result.stdout) == []
    result = cli(server.url, "history", "list")
    assert result.returncode == 1 and result.stderr.decode().startswith("error: 401")


def test_cli_end_to_end(server, rag, user, tmp_path):
    path = tmp_path / "diagram.png"
    path.write_bytes(diagram_png(43))

    result = cli(
        server.url,
        "ask",
        str(path),
        "which queue feeds the worker",
        "--max-tokens",
        "5",
        "--user",
        user,
        "--tag",
        "cli",
    )
    assert result.returncode == 0, result.stderr
    footer = result.stderr.decode().strip()
    assert footer.startswith("id ") and "+ 5 answer tokens" in footer
    id = footer.split()[1]
    assert rag.get(id).answer == result.stdout.decode().rstrip("\n")

    result = cli(
        server.url,
        "ask",
        "-",
        "same image from stdin",
        "--max-tokens",
        "3",
        "--json",
        "--no-store",
        input=path.read_bytes(),
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["id"] is None

    result = cli(server.url, "history", "list", "--user", user)
    assert result.returncode == 0 and result.stdout.decode().splitlines()[2].startswith(id)
    result = cli(server.url, "history", "show", id, "--json", "--save-image", str(tmp_path / "copy.png"))
    assert json.loads(result.stdout)["id"] == id and (tmp_path / "copy.png").stat().st_size > 0

    wait_until(lambda: searchable(rag, id, text="queue", user=user), 60, "indexing")
    result = cli(server.url, "search", "--text", "which queue", "--user", user, "--tag", "cli")
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().splitlines()[2].startswith(id)
    result = cli(server.url, "search", "--image", str(path), "--user", user, "--json", "--since", "1d")
    assert [hit["id"] for hit in json.loads(result.stdout)] == [id]

    out = tmp_path / "export.jsonl"
    result = cli(server.url, "history", "export", str(out), "--user", user, "--quiet")
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [id]

    result = cli(server.url, "history", "delete", id, "--yes")
    assert result.returncode == 0, result.stderr
    for args in (("history", "show", id), ("history", "delete", id, "--yes")):
        result = cli(server.url, *args)
        assert result.returncode == 1
        lines = result.stderr.decode().strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: 404"), lines

    result = cli(f"http://127.0.0.1:{free_port()}", "ask", str(path), "anyone there?")
    assert result.returncode == 1 and b"Traceback" not in result.stderr
    assert result.stderr.decode().startswith("error: cannot reach the VisionRAG server")


def test_cli_help_lists_serve_and_reindex():
    result = subprocess.run([str(VISIONRAG), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "  serve " in result.stdout and "  reindex " in result.stdout
