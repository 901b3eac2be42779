"""`visionrag import`, `VisionRAG.add` and answers with context through the client and the CLI, against
the REAL server on the tiny checkpoints (tests/conftest.py)."""

from __future__ import annotations

import base64
import json
import uuid

import pytest

from tests.clients.test_e2e import cli
from tests.conftest import diagram_png, wait_until
from visionrag.clients import VisionRAG


@pytest.fixture
def rag(server) -> VisionRAG:
    return VisionRAG(server.url, api_key="", timeout=120, backoff=0.05)


@pytest.fixture
def user() -> str:
    return f"import-{uuid.uuid4().hex[:8]}"


def listed(rag: VisionRAG, user: str) -> dict[str, str]:
    """answer -> id of the user's stored interactions."""
    return {i.answer: i.id for i in rag.iter_history(user=user)}


def test_client_add_then_ask_with_context(rag, user, tmp_path) -> None:
    path = tmp_path / "gateway.png"
    path.write_bytes(diagram_png(601))
    first = rag.add(path, "the api gateway routes to three services", user=user, tags=["docs"])
    assert first.created and first.interaction.answer.startswith("the api gateway")
    again = rag.add(path, "the api gateway routes to three services", user=user, tags=["docs"])
    assert not again.created and again.id == first.id
    other = rag.add(diagram_png(602), "a queue between two workers", query="what is this?", user=user)
    wait_until(
        lambda: {first.id, other.id} <= {h.id for h in rag.search(image=path, user=user, limit=10)},
        30,
        "both documents to be searchable",
    )
    answer = rag.ask(path, "where does the gateway route?", max_tokens=3, user=user, context=2)
    assert [c.id for c in answer.context][:1] == [first.id] and len(answer.context) == 2
    assert answer.context_error is None
    assert rag.get(answer.id).context == [c.id for c in answer.context]
    by_url = rag.ask(
        "data:image/png;base64," + base64.b64encode(diagram_png(602)).decode(),
        "what is this?",
        max_tokens=3,
        store=False,
        context={"k": 1, "user": user, "against": "images"},
    )
    assert [c.id for c in by_url.context] == [other.id]
    stream = rag.ask_stream(path, "and then?", max_tokens=3, store=False, context=True)
    "".join(stream)
    # same image first: the document or the answer just given about it (newest first)
    assert stream.answer.context and stream.answer.context[0].id in {first.id, answer.id}


def test_cli_import_file_reports_bad_lines_and_resumes(server, rag, user, image_server, tmp_path) -> None:
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(diagram_png(611))
    url = image_server.add("/import-cli/b.png", diagram_png(612))
    data_url = "data:image/png;base64," + base64.b64encode(diagram_png(613)).decode()
    lines = [
        {"image": "imgs/a.png", "caption": "orders flow from the shop to the warehouse", "tags": ["shop"]},
        {"image": url, "answer": "customers and invoices tables", "query": "which tables?"},
        "this is not json",
        {"image": data_url, "caption": "a cache in front of the database"},
        {"image": "imgs/missing.png", "caption": "never sent"},
        {"image": "imgs/a.png"},
    ]
    source = tmp_path / "docs.jsonl"
    source.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")

    run = cli(server.url, "import", str(source), "--user", user, "--tag", "cli", "--quiet")
    err = run.stderr.decode()
    assert run.returncode == 1, err
    assert "imported 3, skipped 0 (already in the history), failed 3 of 6 documents" in err
    assert "docs.jsonl:3: not valid JSON" in err
    assert "docs.jsonl:5:" in err and "missing.png" in err
    assert 'docs.jsonl:6: "caption" (or "answer") is missing' in err
    stored = listed(rag, user)
    assert set(stored) == {
        "orders flow from the shop to the warehouse",
        "customers and invoices tables",
        "a cache in front of the database",
    }
    assert rag.get(stored["orders flow from the shop to the warehouse"]).tags == ["shop", "cli"]

    again = cli(server.url, "import", str(source), "--user", user, "--tag", "cli", "--json", "--quiet")
    assert again.returncode == 1
    summary = json.loads(again.stdout)
    assert (summary["imported"], summary["skipped"], len(summary["failed"])) == (0, 3, 3)
    assert listed(rag, user) == stored  # nothing stored twice


def test_cli_import_folder_then_ask_with_context(server, rag, user, tmp_path) -> None:
    folder = tmp_path / "diagrams"
    (folder / "team").mkdir(parents=True)
    (folder / "a.png").write_bytes(diagram_png(621))
    (folder / "a.txt").write_text("the billing service reads the ledger\n")
    (folder / "team" / "b.png").write_bytes(diagram_png(622))
    (folder / "team" / "b.md").write_text("# Search\n\nan index fed by a crawler")
    (folder / "c.png").write_bytes(diagram_png(623))  # no caption yet
    (folder / "notes.txt").write_text("not a caption of anything")

    run = cli(server.url, "import", str(folder), "--user", user)
    err = run.stderr.decode()
    assert run.returncode == 1
    assert "imported 2, skipped 0 (already in the history), failed 1 of 3 documents" in err
    assert "failed c.png: no caption: add c.txt or c.md" in err
    (folder / "c.txt").write_text("a load balancer with two backends")
    run = cli(server.url, "import", str(folder), "--user", user, "--quiet")
    assert run.returncode == 0, run.stderr.decode()
    assert "imported 1, skipped 2" in run.stderr.decode()
    stored = listed(rag, user)
    assert stored.keys() == {
        "the billing service reads the ledger",
        "# Search\n\nan index fed by a crawler",
        "a load balancer with two backends",
    }
    billing = stored["the billing service reads the ledger"]
    wait_until(
        lambda: billing in {h.id for h in rag.search(text="billing ledger", user=user, against="answers")},
        30,
        "the imported caption to be found by text",
    )
    ask = cli(
        server.url,
        "ask",
        str(folder / "a.png"),
        "what reads the ledger?",
        "--max-tokens",
        "3",
        "--context",
        "2",
    )
    assert ask.returncode == 0, ask.stderr.decode()
    line = next(x for x in ask.stderr.decode().splitlines() if x.startswith("context: "))
    assert line.startswith(f"context: {billing} (")
    answer_id = next(x for x in ask.stderr.decode().splitlines() if x.startswith("id ")).split()[1]
    show = cli(server.url, "history", "show", answer_id)
    assert f"built on: {billing}" in show.stdout.decode()
