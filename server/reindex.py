"""`visionrag reindex`: rebuild the vector collection from the journal.

Imports only click at module level, so `visionrag --help` stays fast; the models, Qdrant and the journal
load when the command runs.
"""

from __future__ import annotations

from pathlib import Path

import click

HELP = """Rebuild the history's vector collection from the journal.

Drops the collection (COLLECTION_NAME), creates it again with the vector sizes of the current CLIP
models, and embeds every interaction the journal holds (its stored image and its whole answer), with a
progress bar. Run it after changing TEXT_MODEL / IMAGE_MODEL (or their local paths), or to repair an
index. The journal itself is never modified apart from its indexing marks, so it is safe to re-run.

With the embedded store (no QDRANT_URL) only one process may open it: stop the server first. With
QDRANT_URL, searches see a partial index until the command finishes.

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
        click.echo(
            f"reindexing {total} interactions into {settings.collection_name!r} at {history.store.where}",
            err=True,
        )
        indexed = history.reindex(progress=progress)
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
