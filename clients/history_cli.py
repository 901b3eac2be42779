"""`visionrag history`: list, show, delete and export remembered interactions."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import IO

import click
from tqdm import tqdm

from visionrag.clients.clitools import client_of, connection_options, describe, local_time, table
from visionrag.clients.types import Interaction


@click.group()
@connection_options
def history() -> None:
    """Manage remembered interactions: list, show, delete, export.

    \b
    Examples:
      visionrag history list --limit 5
      visionrag history show 3f2b0c1e-8a4d-4c55-9a51-0d6f1c2b7e90
      visionrag history delete 3f2b0c1e-8a4d-4c55-9a51-0d6f1c2b7e90 --yes
      visionrag history export history.jsonl
    """


@history.command("list")
@click.option(
    "--limit", type=click.IntRange(1, 100), default=20, show_default=True, help="Most interactions to show."
)
@click.option(
    "--offset",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Interactions to skip (paging).",
)
@click.option("--user", help="Only interactions of this user.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead of a table.")
@connection_options
@click.pass_context
def list_(ctx: click.Context, limit: int, offset: int, user: str | None, as_json: bool) -> None:
    """List stored interactions, newest first.

    \b
    Examples:
      visionrag history list
      visionrag history list --limit 50 --offset 50 --user alice
      visionrag history list --json | jq -r '.[].id'
    """
    items = client_of(ctx).history(limit=limit, offset=offset, user=user)
    if as_json:
        click.echo(json.dumps([item.to_dict() for item in items], indent=2, ensure_ascii=False))
        return
    if not items:
        click.echo("no interactions", err=True)
        return
    rows = [[i.id, local_time(i.created_at), i.user or "-", i.query, i.answer] for i in items]
    click.echo(table(["ID", "TIME", "USER", "QUESTION", "ANSWER"], rows, flexible=(3, 4)))


@history.command()
@click.argument("id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print the interaction as a JSON object.")
@click.option(
    "--save-image",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    metavar="FILE",
    help="Also download the stored copy of the image into FILE.",
)
@connection_options
@click.pass_context
def show(ctx: click.Context, id: str, as_json: bool, save_image: Path | None) -> None:
    """Show the interaction ID in full.

    Prints its fields, the whole question and the whole answer.

    \b
    Examples:
      visionrag history show 3f2b0c1e-8a4d-4c55-9a51-0d6f1c2b7e90
      visionrag history show 3f2b0c1e-8a4d-4c55-9a51-0d6f1c2b7e90 --json
      visionrag history show 3f2b0c1e-8a4d-4c55-9a51-0d6f1c2b7e90 --save-image diagram.png
    """
    client = client_of(ctx)
    item = client.get(id)
    if as_json:
        click.echo(json.dumps(item.to_dict(), indent=2, ensure_ascii=False))
    else:
        click.echo(describe(item))
    if save_image is not None:
        data = client.image(id)
        save_image.write_bytes(data)
        click.echo(f"saved the image to {save_image} ({len(data)} bytes)", err=True)


@history.command()
@click.argument("id", metavar="ID")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@connection_options
@click.pass_context
def delete(ctx: click.Context, id: str, yes: bool) -> None:
    """Delete the interaction ID from the history and the index.

    Asks for confirmation unless --yes is given.

    \b
    Examples:
      visionrag history delete 3f2b0c1e-8a4d-4c55-9a51-0d6f1c2b7e90
      visionrag history delete 3f2b0c1e-8a4d-4c55-9a51-0d6f1c2b7e90 --yes
    """
    if not yes:
        click.confirm(f"Delete interaction {id}?", abort=True, err=True)
    client_of(ctx).delete(id)
    click.echo(f"deleted {id}", err=True)


@history.command()
@click.argument("file", metavar="FILE", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path))
@click.option("--user", help="Only interactions of this user.")
@click.option(
    "--page-size",
    type=click.IntRange(1, 100),
    default=100,
    show_default=True,
    help="Interactions fetched per request.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@connection_options
@click.pass_context
def export(ctx: click.Context, file: Path, user: str | None, page_size: int, quiet: bool) -> None:
    """Export every interaction to FILE as JSON Lines.

    One JSON object per line, newest first, paging through the whole history. Give - as FILE to
    write to standard output; a file is replaced only when the export completes.

    \b
    Examples:
      visionrag history export history.jsonl
      visionrag history export - --user alice | gzip > alice.jsonl.gz
    """
    items = client_of(ctx).iter_history(user=user, page_size=page_size)
    if str(file) == "-":
        count = _write_jsonl(items, sys.stdout, quiet)
    else:
        partial = file.with_name(f".{file.name}.partial")
        try:
            with partial.open("w", encoding="utf-8") as out:
                count = _write_jsonl(items, out, quiet)
            partial.replace(file)
        finally:
            partial.unlink(missing_ok=True)
    click.echo(f"exported {count} interactions to {file}", err=True)


def _write_jsonl(items: Iterable[Interaction], out: IO[str], quiet: bool) -> int:
    count = 0
    bar = tqdm(desc="exporting", unit=" interactions", disable=quiet, file=sys.stderr, delay=0.5, leave=False)
    with bar:
        for item in items:
            out.write(json.dumps(item.to_dict(), ensure_ascii=False) + "\n")
            count += 1
            bar.update(1)
    return count
