"""Fixtures of the history tests: a tiny random CLIP built once per session in fastembed's layout, and
settings that load it offline with a fresh data directory per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from visionrag.search.config import HistoryConfig


@pytest.fixture(scope="session")
def tiny_clip(tiny_clip_dirs: tuple[Path, Path]) -> tuple[Path, Path]:
    """The session's tiny CLIP (tests/conftest.py builds it with tests/checkpoints/clip.py)."""
    return tiny_clip_dirs


@pytest.fixture
def settings(history_config: HistoryConfig) -> HistoryConfig:
    return history_config


@pytest.fixture
def history(settings: HistoryConfig, shared_embedders) -> Iterator:
    from visionrag.search.history import History

    h = History(settings, embedders=shared_embedders)
    h.start()
    yield h
    h.close()
