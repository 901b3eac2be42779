"""The `visionrag` command line: ask questions about diagrams, search and manage the history.

`serve` and `reindex` live in the server package and are imported only when run.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from visionrag.clients.client import DEFAULT_URL, ImageInput
from visionrag.clients.clitools import (
    DEFAULT_TIMEOUT,
    Connection,
    LazyCommand,
    VisionRAGGroup,
    When,
    client_of,
    connection_options,
    local_time,
    table,
)
from visionrag.clients.history_cli import history
from visionrag.clients.import_cli import import_command

LAZY_COMMANDS = {
    "serve": LazyCommand(
        "visionrag.server.cli:serve_command", "Start the VisionRAG server (model, history, web page)."
    ),
    "reindex": LazyCommand(
        "visionrag.server.reindex:reindex_command",
        "Index the journal's interactions into the vector collection again.",
    ),
}

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(cls=VisionRAGGroup, lazy_commands=LAZY_COMMANDS, context_settings=CONTEXT)
@click.option(
    "--url",
    envvar="VISIONRAG_URL",
    show_envvar=True,
    default=DEFAULT_URL,
    show_default=True,
    metavar="URL",
    help="Address of the VisionRAG server.",
)
@click.option(
    "--api-key",
    envvar="VISIONRAG_API_KEY",
    show_envvar=True,
    metavar="KEY",
    help="API key of the server, sent as `Authorization: Bearer KEY` (needed when the server sets one).",
)
@click.option(
    "--timeout",
    envvar="VISIONRAG_TIMEOUT",
    show_envvar=True,
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_TIMEOUT,
    show_default=True,
    metavar="SECONDS",
    help="How long to wait for the server: to connect (at most 10 s) and for each piece of an answer.",
)
@click.version_option(package_name="visionrag", message="visionrag %(version)s")
@click.pass_context
def main(ctx: click.Context, url: str, api_key: str | None, timeout: float) -> None:
    """VisionRAG: ask Llama 3.2 Vision about diagrams, and search every answer it gave.

    Client commands talk to a running server (`visionrag serve`, or a remote one given by --url).
    Errors print one line, `error: ...`, on stderr and exit with status 1.

    \b
    Examples:
      visionrag serve
      visionrag ask blueprint.png "Which services write to the orders database?"
      visionrag search --text "payment service" --since 7d
      visionrag --url https://POD-8000.proxy.runpod.net --api-key KEY history list
    """
    ctx.obj = Connection(url=url, api_key=api_key, timeout=timeout)


def _image_arg(value: str) -> ImageInput:
    """A CLI image argument: "-" reads standard input; anything else is a path or a URL."""
    return sys.stdin.buffer.read() if value == "-" else value


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


@main.command()
@click.argument("image", metavar="IMAGE")
@click.argument("question", metavar="QUESTION")
@click.option("--max-tokens", type=click.IntRange(min=1), help="Most tokens in the answer [server default].")
@click.option(
    "--temperature",
    type=click.FloatRange(min=0),
    help="Sampling temperature; 0 picks the likeliest token each step [server default].",
)
@click.option(
    "--top-p", type=click.FloatRange(0, 1, min_open=True), help="Nucleus sampling mass [server default]."
)
@click.option("--user", help="Who is asking; stored with the interaction, usable as a search filter.")
@click.option(
    "--tag", "tags", multiple=True, metavar="TAG", help="A tag stored with the interaction (repeatable)."
)
@click.option("--no-store", is_flag=True, help="Answer without remembering the interaction.")
@click.option(
    "--context",
    "context",
    type=click.IntRange(1, 20),
    metavar="N",
    help="Answer with the N most similar earlier interactions from the history in the prompt"
    " (the same image first); they are listed after the answer.",
)
@click.option("--json", "as_json", is_flag=True, help="Wait, then print the whole answer as one JSON object.")
@connection_options
@click.pass_context
def ask(
    ctx: click.Context,
    image: str,
    question: str,
    max_tokens: int | None,
    temperature: float | None,
    top_p: float | None,
    user: str | None,
    tags: tuple[str, ...],
    no_store: bool,
    context: int | None,
    as_json: bool,
) -> None:
    """Ask QUESTION about IMAGE, streaming the answer as it is generated.

    IMAGE is a local file (uploaded), an http(s) or data: URL (fetched by the server), or - for an image
    on standard input. The answer goes to standard output; a footer with the interaction id, the token
    counts and the time taken goes to standard error.

    \b
    Examples:
      visionrag ask blueprint.png "Which services write to the database?"
      visionrag ask https://example.com/er.png "List the tables and keys." --max-tokens 400
      cat diagram.jpg | visionrag ask - "Summarise this diagram." --tag team-a --no-store
      visionrag ask schema.png "Name every table." --json | jq -r .output
      visionrag ask blueprint.png "What changed since last time?" --context 3
    """
    client = client_of(ctx)
    options = dict(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        user=user,
        tags=list(tags) or None,
        store=not no_store,
        context=context,
    )
    started = time.monotonic()
    if as_json:
        _print_json(client.ask(_image_arg(image), question, **options).to_dict())
        return
    stream = client.ask_stream(_image_arg(image), question, **options)
    last = "\n"
    try:
        for piece in stream:
            click.echo(piece, nl=False)
            last = piece
    finally:
        if not last.endswith("\n"):
            click.echo()
    answer = stream.answer
    usage = answer.usage
    footer = (
        f"id {answer.id or '(not stored)'} | {usage.prompt_tokens} prompt + {usage.completion_tokens}"
        f" answer tokens | {time.monotonic() - started:.1f}s"
    )
    if answer.model:
        footer += f" | {answer.model}"
    click.secho(footer, dim=True, err=True)
    if context is not None:
        click.secho(_context_line(answer), dim=True, err=True)


def _context_line(answer: Any) -> str:
    """Which earlier interactions the answer was given with (or why none)."""
    if answer.context_error:
        return f"context: none ({answer.context_error})"
    if not answer.context:
        return "context: no earlier interaction matched"
    used = ", ".join(f"{c.id} ({c.score:.3f})" for c in answer.context)
    return f"context: {used}"


@main.command()
@click.option("--text", help="Find interactions whose question/answer or image matches this text.")
@click.option(
    "--image", metavar="PATH_OR_URL", help="Find interactions with similar images (file, URL, or -)."
)
@click.option(
    "--limit", type=click.IntRange(1, 100), default=10, show_default=True, help="Most results to show."
)
@click.option(
    "--offset", type=click.IntRange(min=0), default=0, show_default=True, help="Results to skip (paging)."
)
@click.option(
    "--against",
    type=click.Choice(["images", "answers", "both"]),
    default="both",
    show_default=True,
    help="Compare with the stored images, the stored answers, or both (fused ranking).",
)
@click.option(
    "--since", type=When(), help="Only interactions at or after: ISO 8601 date/time, or 30m/12h/7d/2w ago."
)
@click.option("--until", type=When(), help="Only interactions before: ISO 8601 date/time, or an age like 7d.")
@click.option("--user", help="Only interactions of this user.")
@click.option(
    "--tag", "tags", multiple=True, metavar="TAG", help="Only interactions with this tag (repeatable)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as a JSON array instead of a table.")
@connection_options
@click.pass_context
def search(
    ctx: click.Context,
    text: str | None,
    image: str | None,
    limit: int,
    offset: int,
    against: str,
    since: str | None,
    until: str | None,
    user: str | None,
    tags: tuple[str, ...],
    as_json: bool,
) -> None:
    """Search past interactions by text, by image, or both.

    Prints a table (id, score, time, question, answer) with the best match first; give an id to
    `visionrag history show` for the whole interaction. At least one of --text and --image is needed.

    \b
    Examples:
      visionrag search --text "payment service"
      visionrag search --image blueprint.png --against images --limit 5
      visionrag search --text "orders table" --since 7d --tag team-a --json
      visionrag search --text kafka --since 2024-05-01 --until 2024-06-01T00:00:00Z
    """
    if not text and not image:
        raise click.UsageError("give --text, --image, or both")
    hits = client_of(ctx).search(
        text=text,
        image=_image_arg(image) if image else None,
        limit=limit,
        offset=offset,
        against=against,
        since=since,
        until=until,
        user=user,
        tags=list(tags) or None,
    )
    if as_json:
        _print_json([hit.to_dict() for hit in hits])
        return
    if not hits:
        click.echo("no matching interactions", err=True)
        return
    rows = [
        [
            h.id,
            f"{h.score:.3f}",
            local_time(h.interaction.created_at),
            h.interaction.query,
            h.interaction.answer,
        ]
        for h in hits
    ]
    click.echo(table(["ID", "SCORE", "TIME", "QUESTION", "ANSWER"], rows, flexible=(3, 4)))


main.add_command(history)
main.add_command(import_command)


if __name__ == "__main__":
    main()
