"""The `visionrag` CLI through click's CliRunner against the loopback fake server."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner

from tests.clients.fakeserver import PNG, FakeServer
from visionrag.clients.cli import main


@pytest.fixture
def run(fake_server, monkeypatch):
    """Invoke `visionrag --url FAKE ...`; returns click's Result (stdout and stderr apart)."""
    monkeypatch.delenv("VISIONRAG_API_KEY", raising=False)
    runner = CliRunner()

    def invoke(*args: str, input: str | bytes | None = None, url: str | None = None):
        return runner.invoke(main, ["--url", url or fake_server.url, *args], input=input)

    return invoke


def assert_one_error_line(result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


# -- ask -----------------------------------------------------------------------------------------------------


def test_ask_streams_the_answer_and_prints_a_footer(run, fake_server, png_file):
    result = run(
        "ask",
        str(png_file),
        "Which services?",
        "--tag",
        "a",
        "--tag",
        "b",
        "--user",
        "u",
        "--max-tokens",
        "32",
        "--temperature",
        "0",
        "--top-p",
        "0.5",
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == "You asked: Which services?\n"
    (record,) = fake_server.records.values()
    assert (record["tags"], record["user"]) == (["a", "b"], "u")
    assert f"id {record['id']}" in result.stderr
    assert "7 prompt + 4 answer tokens" in result.stderr and "tiny-mllama" in result.stderr
    body = fake_server.requests[-1]["body"]
    assert b'name="stream"' in body and b'name="max_tokens"' in body and b'name="top_p"' in body


def test_ask_json_url_no_store_and_stdin(run, fake_server):
    result = run("ask", "https://example.com/er.png", "Tables?", "--json", "--no-store")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["output"] == "You asked: Tables?" and answer["id"] is None
    assert json.loads(fake_server.requests[-1]["body"])["image_url"] == "https://example.com/er.png"
    result = run("ask", "-", "From stdin?", input=PNG)
    assert result.exit_code == 0, result.output
    assert result.stdout == "You asked: From stdin?\n"
    assert list(fake_server.images.values()) == [PNG]


def test_ask_mid_stream_error_keeps_the_text_and_prints_one_line(run):
    result = run("ask", "https://example.com/a.png", "fail-mid")
    assert result.stdout == "You\n"
    assert_one_error_line(result, "503", "the model worker died")


def test_ask_errors_are_one_line(run, tmp_path):
    assert_one_error_line(run("ask", "https://example.com/a.png", "boom"), "500", "Internal Server Error")
    assert_one_error_line(run("ask", "http://unreachable.test/a.png", "Q"), "422", "could not fetch")
    assert_one_error_line(run("ask", str(tmp_path / "nope.png"), "Q"), "No such file", "nope.png")
    empty = tmp_path / "empty.png"
    empty.touch()
    assert_one_error_line(run("ask", str(empty), "Q"), "is empty")


# -- search --------------------------------------------------------------------------------------------------


def test_search_table_and_json(run, fake_server, png_file):
    first = fake_server.add("Which database?", "Postgres holds the orders.", tags=["x"], user="alice")
    second = fake_server.add("How many queues?", "Two Kafka topics.")
    result = run("search", "--text", "kafka")
    assert result.exit_code == 0, result.output
    header, rule, *rows = result.stdout.splitlines()
    assert header.split() == ["ID", "SCORE", "TIME", "QUESTION", "ANSWER"]
    assert set(rule) == {"-", " "}
    assert rows[0].startswith(second["id"]) and "1.000" in rows[0] and "Two Kafka topics." in rows[0]
    assert rows[1].startswith(first["id"]) and "2024-05-01" in rows[1]

    result = run(
        "search",
        "--image",
        str(png_file),
        "--json",
        "--limit",
        "1",
        "--user",
        "alice",
        "--tag",
        "x",
        "--against",
        "images",
    )
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    assert [h["id"] for h in hits] == [first["id"]] and hits[0]["score"] == 1.0
    assert hits[0]["answer"] == "Postgres holds the orders."


def test_search_sends_time_filters(run, fake_server):
    result = run("search", "--text", "x", "--since", "7d", "--until", "2024-06-01T00:00:00Z", "--offset", "2")
    assert result.exit_code == 0, result.output
    assert "no matching interactions" in result.stderr
    body = json.loads(fake_server.requests[-1]["body"])
    since = datetime.fromisoformat(body["since"])
    assert abs(since - (datetime.now(UTC) - timedelta(days=7))) < timedelta(minutes=1)
    assert (body["until"], body["offset"]) == ("2024-06-01T00:00:00Z", 2)


def test_search_usage_errors(run):
    result = run("search")
    assert result.exit_code == 2 and "give --text, --image, or both" in result.stderr
    result = run("search", "--text", "x", "--since", "last tuesday")
    assert result.exit_code == 2 and "ISO 8601" in result.stderr
    result = run("search", "--text", "x", "--limit", "500")
    assert result.exit_code == 2


# -- history -------------------------------------------------------------------------------------------------


def test_history_list_show_and_save_image(run, fake_server, tmp_path):
    old = fake_server.add("Old question?", "Old answer.", user="bob")
    new = fake_server.add(
        "New question?", "New answer\non two lines.", tags=["t"], image_url="https://e.com/a.png"
    )
    result = run("history", "list")
    assert result.exit_code == 0, result.output
    rows = result.stdout.splitlines()[2:]
    assert rows[0].startswith(new["id"]) and "New answer on two lines." in rows[0]
    assert rows[1].startswith(old["id"]) and "bob" in rows[1]
    result = run("history", "list", "--json", "--user", "bob", "--limit", "5")
    assert [item["id"] for item in json.loads(result.stdout)] == [old["id"]]
    assert fake_server.requests[-1]["query"] == {"limit": ["5"], "offset": ["0"], "user": ["bob"]}

    result = run("history", "show", new["id"], "--save-image", str(tmp_path / "copy.png"))
    assert result.exit_code == 0, result.output
    assert f"id:    {new['id']}" in result.stdout
    assert "tags:  t" in result.stdout and "image: https://e.com/a.png" in result.stdout
    assert result.stdout.rstrip().endswith("answer:\nNew answer\non two lines.")
    assert (tmp_path / "copy.png").read_bytes() == PNG
    assert json.loads(run("history", "show", old["id"], "--json").stdout) == old


def test_history_delete_with_and_without_confirmation(run, fake_server):
    record = fake_server.add("Q?", "A.")
    result = run("history", "delete", record["id"], input="n\n")
    assert result.exit_code == 1 and record["id"] in fake_server.records
    result = run("history", "delete", record["id"], input="y\n")
    assert result.exit_code == 0, result.output
    assert record["id"] not in fake_server.records
    assert_one_error_line(run("history", "delete", record["id"], "--yes"), "404", "no interaction with id")


def test_history_export_pages_through_everything(run, fake_server, tmp_path):
    records = [fake_server.add(f"Q{i}?", f"A{i}.") for i in range(5)]
    target = tmp_path / "out.jsonl"
    result = run("history", "export", str(target), "--page-size", "2")
    assert result.exit_code == 0, result.output
    lines = target.read_text().splitlines()
    assert [json.loads(line) for line in lines] == records[::-1]
    assert "exported 5 interactions" in result.stderr
    pages = [r["query"]["offset"] for r in fake_server.requests if r["path"] == "/history"]
    assert pages == [["0"], ["2"], ["4"]]
    result = run("history", "export", "-", "--quiet")
    assert [json.loads(line)["id"] for line in result.stdout.splitlines()] == [r["id"] for r in records[::-1]]


def test_export_leaves_no_partial_file_when_the_server_fails(run, tmp_path, closed_url):
    target = tmp_path / "out.jsonl"
    result = run("history", "export", str(target), url=closed_url)
    assert_one_error_line(result, "cannot reach")
    assert list(tmp_path.iterdir()) == []


# -- errors and global options -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("history", "list"),
        ("history", "show", "x"),
        ("search", "--text", "x"),
        ("ask", "https://e.com/a.png", "Q"),
    ],
)
def test_server_down_is_one_line(run, closed_url, args):
    result = run("--timeout", "2", *args, url=closed_url)
    assert_one_error_line(result, "cannot reach the VisionRAG server at http://127.0.0.1", "refused")


def test_not_found_is_one_line_with_status_and_detail(run):
    assert_one_error_line(run("history", "show", "nope"), "404", "no interaction with id nope")


def test_api_key_from_option_and_environment(monkeypatch):
    server = FakeServer(api_key="k").start()
    try:
        runner = CliRunner()
        result = runner.invoke(main, ["history", "list"], env={"VISIONRAG_URL": server.url})
        assert_one_error_line(result, "401", "missing or wrong API key")
        result = runner.invoke(main, ["--api-key", "k", "history", "list"], env={"VISIONRAG_URL": server.url})
        assert result.exit_code == 0, result.output
        env = {"VISIONRAG_URL": server.url, "VISIONRAG_API_KEY": "k"}
        assert runner.invoke(main, ["history", "list", "--json"], env=env).stdout.strip() == "[]"
    finally:
        server.stop()


def _commands(group, prefix=()):
    from click import Group

    for name in group.list_commands(None):
        command = group.get_command(None, name)
        if command is None or name in ("serve", "reindex"):
            continue
        yield (*prefix, name), command
        if isinstance(command, Group):
            yield from _commands(command, (*prefix, name))


def test_every_command_and_option_is_documented():
    runner = CliRunner()
    commands = list(_commands(main))
    assert {path for path, _ in commands} >= {
        ("ask",),
        ("search",),
        ("history",),
        ("history", "list"),
        ("history", "show"),
        ("history", "delete"),
        ("history", "export"),
    }
    for path, command in [((), main), *commands]:
        result = runner.invoke(main, [*path, "--help"])
        assert result.exit_code == 0, result.output
        assert command.help and ("Examples:" in command.help), path
        for param in command.params:
            if param.param_type_name == "option":
                assert param.help, (path, param.name)
            else:
                assert param.human_readable_name in command.help, (path, param.name)


def test_connection_options_work_after_the_subcommand(fake_server, png_file, closed_url, monkeypatch):
    monkeypatch.delenv("VISIONRAG_API_KEY", raising=False)
    runner = CliRunner()
    result = runner.invoke(main, ["ask", str(png_file), "What?", "--url", fake_server.url, "--timeout", "5"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "You asked: What?\n"
    # after the command beats before it, which beats the environment
    result = runner.invoke(
        main,
        ["--url", closed_url, "history", "list", "--json", "--url", fake_server.url],
        env={"VISIONRAG_URL": closed_url},
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["search", "--text", "x", "--url", closed_url, "--timeout", "2"])
    assert_one_error_line(result, "cannot reach", closed_url)
    server = FakeServer(api_key="k").start()
    try:
        result = runner.invoke(main, ["history", "list", "--url", server.url, "--api-key", "k", "--json"])
        assert result.exit_code == 0, result.output
        result = runner.invoke(main, ["history", "--url", server.url, "show", "nope", "--api-key", "k"])
        assert_one_error_line(result, "404")
    finally:
        server.stop()


def test_every_client_command_shows_the_connection_options():
    runner = CliRunner()
    for path, _command in _commands(main):
        text = runner.invoke(main, [*path, "--help"]).output
        for option in ("--url URL", "--api-key KEY", "--timeout SECONDS"):
            assert option in text, (path, option)
