"""`visionrag import`: put existing documents (diagrams with captions) into a server's history.

Each document goes to the server with `VisionRAG.add` (POST /history). The server derives a document's id
from its image bytes and text, so a re-run stores nothing twice: what is already there comes back as
"skipped", and an interrupted import is resumed by running it again.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

from visionrag.clients.clitools import client_of, connection_options
from visionrag.clients.errors import ConnectionFailed, Unauthorized, VisionRAGError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp")
CAPTION_SUFFIXES = (".txt", ".md")
LINE_FIELDS = {"image", "caption", "answer", "query", "tags", "user", "created_at"}
_URL_SCHEMES = ("http://", "https://", "data:")


@dataclass
class Document:
    """One document to import, or the reason it cannot be (`problem`)."""

    where: str  # "file.jsonl:3" or the image's path, for messages
    image: str = ""
    answer: str = ""
    query: str = ""
    tags: list[str] = field(default_factory=list)
    user: str | None = None
    created_at: str | None = None
    problem: str | None = None


def from_jsonl(path: Path) -> Iterator[Document]:
    """Documents of a JSON Lines file: `{"image": path or URL, "caption" | "answer", "query"?, "tags"?,
    "user"?, "created_at"?}` per line; relative image paths are relative to the file."""
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if line.strip():
                yield _from_line(line, f"{path.name}:{number}", path.parent)


def _from_line(line: str, where: str, base: Path) -> Document:
    try:
        data = json.loads(line)
    except ValueError as exc:
        return Document(where, problem=f"not valid JSON ({exc})")
    if not isinstance(data, dict):
        return Document(where, problem="a line must be a JSON object")
    unknown = set(data) - LINE_FIELDS
    if unknown:
        return Document(where, problem=f"unknown fields {', '.join(sorted(unknown))}")
    image, answer = data.get("image"), data.get("caption", data.get("answer"))
    if not isinstance(image, str) or not image.strip():
        return Document(where, problem='"image" (a path or URL) is missing')
    if not isinstance(answer, str) or not answer.strip():
        return Document(where, problem='"caption" (or "answer") is missing or empty')
    tags = data.get("tags") or []
    if isinstance(tags, str):
        tags = [t.strip() for t in tags.split(",") if t.strip()]
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        return Document(where, problem='"tags" must be a list of strings')
    for key in ("query", "user", "created_at"):
        if data.get(key) is not None and not isinstance(data[key], str):
            return Document(where, problem=f'"{key}" must be a string')
    if not image.strip().lower().startswith(_URL_SCHEMES):
        image = str((base / image).expanduser())
    return Document(
        where,
        image=image,
        answer=answer,
        query=data.get("query") or "",
        tags=tags,
        user=data.get("user"),
        created_at=data.get("created_at"),
    )


def from_folder(folder: Path) -> Iterator[Document]:
    """Documents of a folder (and its subfolders): every image with a same-named .txt or .md caption."""
    for image in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
        where = str(image.relative_to(folder))
        caption = next((c for c in (image.with_suffix(s) for s in CAPTION_SUFFIXES) if c.is_file()), None)
        if caption is None:
            yield Document(where, problem=f"no caption: add {image.stem}.txt or {image.stem}.md beside it")
            continue
        text = caption.read_text(encoding="utf-8", errors="replace").strip()
        if not text:
            yield Document(where, problem=f"the caption {caption.name} is empty")
            continue
        yield Document(where, image=str(image), answer=text)


@click.command("import")
@click.argument("source", metavar="SOURCE", type=click.Path(exists=True, path_type=Path))
@click.option("--user", help="Store the documents as this user's (a line's own \"user\" wins).")
@click.option(
    "--tag", "tags", multiple=True, metavar="TAG", help="A tag added to every document (repeatable)."
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object on stdout.")
@connection_options
@click.pass_context
def import_command(
    ctx: click.Context, source: Path, user: str | None, tags: tuple[str, ...], quiet: bool, as_json: bool
) -> None:
    """Import documents (diagrams with captions) into the history, without asking the model.

    SOURCE is a JSON Lines file or a folder. A file holds one JSON object per line: {"image": path or
    URL, "caption": text, "query"?, "tags"?, "user"?, "created_at"?} ("answer" may stand for "caption";
    relative paths are relative to the file). A folder holds images (.png .jpg .jpeg .gif .webp .bmp, subfolders too), each with a
    same-named .txt or .md caption. Imported documents are found by `visionrag search` and used as
    context by `visionrag ask --context`.

    Re-running an import skips what is already in the history (same image and text), so an interrupted
    import is resumed by running it again. A summary of imported, skipped and failed documents (with
    reasons) goes to standard error; the exit status is 1 if any failed.

    \b
    Examples:
      visionrag import diagrams.jsonl --tag team-a
      visionrag import ./blueprints --user alice
      visionrag import diagrams.jsonl --json | jq .failed
    """
    documents = list(from_jsonl(source) if source.is_file() else from_folder(source))
    client = client_of(ctx)
    imported: list[str] = []
    skipped: list[str] = []
    failed: list[dict[str, str]] = []
    stopped: str | None = None
    bar = tqdm(total=len(documents), desc="importing", unit=" docs", disable=quiet, file=sys.stderr)
    with bar:
        for doc in documents:
            bar.update(1)
            if doc.problem is not None:
                failed.append({"document": doc.where, "reason": doc.problem})
                continue
            try:
                result = client.add(
                    doc.image,
                    doc.answer,
                    query=doc.query,
                    user=doc.user or user,
                    tags=[*doc.tags, *(t for t in tags if t not in doc.tags)] or None,
                    created_at=doc.created_at,
                )
            except (ConnectionFailed, Unauthorized) as exc:  # nothing after this one can succeed
                stopped = str(exc)
                failed.append({"document": doc.where, "reason": stopped})
                break
            except (VisionRAGError, OSError) as exc:
                reason = f"{exc.strerror}: {exc.filename}" if isinstance(exc, OSError) else str(exc)
                failed.append({"document": doc.where, "reason": reason})
                continue
            (imported if result.created else skipped).append(result.id)
    _summarise(len(documents), imported, skipped, failed, stopped, as_json)
    if failed:
        ctx.exit(1)


def _summarise(
    total: int,
    imported: list[str],
    skipped: list[str],
    failed: list[dict[str, str]],
    stopped: str | None,
    as_json: bool,
) -> None:
    summary: dict[str, Any] = {
        "documents": total,
        "imported": len(imported),
        "skipped": len(skipped),
        "failed": failed,
        "ids": imported,
    }
    if stopped:
        summary["stopped"] = stopped
    if as_json:
        click.echo(json.dumps(summary, indent=2, ensure_ascii=False))
    click.echo(
        f"imported {len(imported)}, skipped {len(skipped)} (already in the history), failed {len(failed)}"
        f" of {total} documents",
        err=True,
    )
    for failure in failed:
        click.echo(f"  failed {failure['document']}: {failure['reason']}", err=True)
    if stopped:
        click.echo(f"stopped early, the rest was not sent: {stopped}", err=True)
