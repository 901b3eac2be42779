"""`visionrag reindex`: rebuild the vector collection from the journal.

Imports only click at module level, so `visionrag --help` stays fast; the models, Qdrant and the journal
load when the command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from visionrag.search.history import History

HELP = """Index the journal's interactions into the history's vector collection again.

By default it embeds every interaction this server's journal holds (its stored image and its whole answer)
and upserts it, with a progress bar: the point id is the interaction id, so re-running is safe and points
this server did not write (other replicas sharing QDRANT_URL) are left alone. Use it to repair an index or
to add image copies to points written by earlier versions.

--recreate drops the collection (COLLECTION_NAME) and creates it again with the vector sizes of the
current CLIP models: needed after changing TEXT_MODEL / IMAGE_MODEL (or their local paths) to a model of
another size. On a Qdrant server (QDRANT_URL) that deletes every other replica's history too, so it also
needs --yes; without it the command only says how many points other writers own. Each replica then
re-adds its own interactions with a plain `visionrag reindex`.

With the embedded store (no QDRANT_URL) only one process may open it: stop the server first. With
QDRANT_URL, searches see a partial index until a --recreate finishes.

Settings come from flags, then the environment, then .env (see `visionrag serve --help`).
"""


@click.command("reindex", help=HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder of the journal and the embedded store [env VISIONRAG_DATA_DIR; default ./data].",
)
@click.option("--text-model", default=None, help="fastembed CLIP text model name [env TEXT_MODEL].")
@click.option("--image-model", default=None, help="fastembed CLIP vision model name [env IMAGE_MODEL].")
@click.option(
    "--text-model-path",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Local folder of the CLIP text model, loaded offline [env TEXT_MODEL_PATH].",
)
@click.option(
    "--image-model-path",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Local folder of the CLIP vision model, loaded offline [env IMAGE_MODEL_PATH].",
)
@click.option(
    "--qdrant-url",
    default=None,
    help="Qdrant server or Qdrant Cloud URL; unset: the embedded store in the data dir [env QDRANT_URL / DB_URL].",
)
@click.option(
    "--qdrant-api-key", default=None, help="API key for --qdrant-url [env QDRANT_API_KEY / DB_API_KEY]."
)
@click.option(
    "--collection", default=None, help="Collection name [env COLLECTION_NAME; default visionrag_history]."
)
@click.option("--recreate", is_flag=True, help="Drop and create the collection first (CLIP model change).")
@click.option(
    "--yes",
    is_flag=True,
    help="Confirm --recreate on a Qdrant server, where it deletes other replicas' points.",
)
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
def reindex_command(
    data_dir: Path | None,
    text_model: str | None,
    image_model: str | None,
    text_model_path: Path | None,
    image_model_path: Path | None,
    qdrant_url: str | None,
    qdrant_api_key: str | None,
    collection: str | None,
    recreate: bool,
    yes: bool,
    progress: bool,
) -> None:
    from visionrag.search.errors import HistoryError
    from visionrag.search.history import History
    from visionrag.server.errors import ConfigError
    from visionrag.server.settings import Settings

    try:
        settings = Settings.load(
            overrides={
                "data_dir": data_dir,
                "text_model": text_model,
                "image_model": image_model,
                "text_model_path": text_model_path,
                "image_model_path": image_model_path,
                "qdrant_url": qdrant_url,
                "qdrant_api_key": qdrant_api_key,
                "collection_name": collection,
            }
        )
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    history = History(settings.history_config())
    try:
        total = history.journal.count()
        if recreate and not _may_recreate(history, settings.collection_name, yes):
            raise SystemExit(1)
        click.echo(
            f"reindexing {total} interactions into {settings.collection_name!r} at {history.store.where}",
            err=True,
        )
        indexed = history.reindex(progress=progress, recreate=recreate)
        failed = history.status().get("failed") or 0
    except HistoryError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        history.close()
    click.echo(
        f"indexed {indexed} of {total} interactions" + (f"; {failed} could not be embedded" if failed else "")
    )
    if failed:
        raise SystemExit(1)


def _may_recreate(history: History, collection: str, yes: bool) -> bool:
    """On a shared store, say what dropping the collection deletes; go ahead there only with --yes."""
    from visionrag.search.store import SharedStore

    store = history.store
    if not (isinstance(store, SharedStore) and store.shared):
        return True
    if not store.collection_exists():
        return True
    total, others = store.count(), store.count_other_writers(history.writer)
    line = (
        f"collection {collection!r} at {store.where} holds {total} points; {others} of them were written by "
        "other writers (replicas whose journals this server does not have)"
    )
    if not yes:
        click.echo(f"{line}.\n--recreate would delete them all: add --yes to go ahead.", err=True)
        return False
    click.echo(f"{line}; dropping them (--yes).", err=True)
    return True
