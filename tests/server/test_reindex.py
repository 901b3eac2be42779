"""`visionrag reindex` (server/reindex.py): rebuilds the collection from the journal with the given settings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.search.helpers import diagram, interaction
from visionrag.search.config import HistoryConfig
from visionrag.search.history import History
from visionrag.server.reindex import reindex_command


@pytest.fixture
def settings(history_config: HistoryConfig) -> HistoryConfig:
    return history_config


def test_reindex_rebuilds_from_the_journal(settings, shared_embedders, monkeypatch) -> None:
    with History(settings, embedders=shared_embedders) as history:
        items = [interaction(f"answer {i}") for i in range(4)]
        for i, item in enumerate(items):
            history.record(item, diagram(i))
    for key in ("QDRANT_URL", "DB_URL", "COLLECTION_NAME", "VISIONRAG_DATA_DIR"):
        monkeypatch.delenv(key, raising=False)
    args = [
        "--data-dir",
        str(settings.data_dir),
        "--text-model-path",
        str(settings.text_model_path),
        "--image-model-path",
        str(settings.image_model_path),
        "--collection",
        settings.collection_name,
        "--no-progress",
    ]
    for _ in range(2):  # idempotent
        result = CliRunner().invoke(reindex_command, args)
        assert result.exit_code == 0, result.output
        assert "indexed 4 of 4 interactions" in result.output
    with History(settings, embedders=shared_embedders) as history:
        assert history.store.count() == 4
        assert history.search(None, diagram(2), limit=1, against="images")[0]["id"] == items[2].id


def test_help_is_complete_and_import_is_light() -> None:
    result = CliRunner().invoke(reindex_command, ["--help"])
    assert result.exit_code == 0
    for flag in ("--data-dir", "--text-model-path", "--image-model-path", "--qdrant-url", "--collection"):
        assert flag in result.output
    code = "import sys, visionrag.server.reindex; print(any(m in sys.modules for m in ('torch', 'fastembed', 'qdrant_client')))"
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "False"


def test_recreate_on_a_shared_store_needs_yes_and_counts_other_writers(
    settings, shared_embedders, monkeypatch
) -> None:
    from tests.search.qdrant_double import QdrantDouble

    double = QdrantDouble()
    try:
        mine = settings.replace(qdrant_url=double.url)
        theirs = mine.replace(data_dir=settings.data_dir.parent / "other")
        for config, n in ((mine, 1), (theirs, 2)):
            with History(config, embedders=shared_embedders) as history:
                for i in range(n):
                    history.record(interaction(f"answer {n} {i}"), diagram(n * 10 + i))
                history.reindex(progress=False)  # indexed now, whatever the indexer thread did
        for key in ("QDRANT_URL", "DB_URL", "COLLECTION_NAME", "VISIONRAG_DATA_DIR"):
            monkeypatch.delenv(key, raising=False)
        args = [
            "--data-dir",
            str(mine.data_dir),
            "--text-model-path",
            str(mine.text_model_path),
            "--image-model-path",
            str(mine.image_model_path),
            "--collection",
            mine.collection_name,
            "--qdrant-url",
            double.url,
            "--no-progress",
            "--recreate",
        ]
        refused = CliRunner().invoke(reindex_command, args)
        assert refused.exit_code == 1
        assert "holds 3 points; 2 of them were written by other writers" in refused.output
        assert "--yes" in refused.output and double.engine.count(mine.collection_name).count == 3
        done = CliRunner().invoke(reindex_command, [*args, "--yes"])
        assert done.exit_code == 0, done.output
        assert "dropping them (--yes)" in done.output and "indexed 1 of 1 interactions" in done.output
        assert double.engine.count(mine.collection_name).count == 1
        assert double.errors == []
    finally:
        double.close()
