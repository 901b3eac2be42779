"""Generate docs/cli.md from the command line's own help: `python -m visionrag.clients.docs --write`.

Without an option the page is printed; `--check` exits with status 1 when docs/cli.md is out of date.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from visionrag.clients.cli import main

DOC_PATH = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
WIDTH = 100

_INTRO = """\
# The `visionrag` command line

Generated from `visionrag --help` by `python -m visionrag.clients.docs --write`; do not edit by hand
(`tests/clients/test_docs.py` fails when this page is out of date).

Every client command talks to a VisionRAG server: `--url` (or `VISIONRAG_URL`, default
`http://localhost:8000`), `--api-key` (or `VISIONRAG_API_KEY`) and `--timeout` (or `VISIONRAG_TIMEOUT`)
go before the command or after it: `visionrag --url http://gpu-box:8000 search --text kafka` and
`visionrag search --text kafka --url http://gpu-box:8000` do the same; after the command wins.
"""


def _walk(command: click.Command, ctx: click.Context) -> list[tuple[str, str]]:
    """(command path, help text) for `command` and every subcommand, depth first, sorted by name."""
    pages = [(ctx.command_path, command.get_help(ctx).rstrip())]
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is None or sub.hidden:
                continue
            pages += _walk(sub, click.Context(sub, info_name=name, parent=ctx))
    return pages


def render() -> str:
    """The whole docs/cli.md page."""
    settings = {**main.context_settings, "terminal_width": WIDTH, "max_content_width": WIDTH}
    root = click.Context(main, info_name="visionrag", **settings)
    parts = [_INTRO]
    for path, text in _walk(main, root):
        parts.append(f"## `{path}`\n\n```text\n{text}\n```\n")
    return "\n".join(parts)


def cli(argv: list[str]) -> int:
    page = render()
    if "--write" in argv:
        DOC_PATH.write_text(page, encoding="utf-8")
        print(f"wrote {DOC_PATH}", file=sys.stderr)
    elif "--check" in argv:
        current = DOC_PATH.read_text(encoding="utf-8") if DOC_PATH.exists() else ""
        if current != page:
            print(f"{DOC_PATH} is out of date: run python -m visionrag.clients.docs --write", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(page)
    return 0


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
