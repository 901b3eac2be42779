"""Fixtures of the client tests: a loopback fake of the server, an image file, a closed port."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clients.fakeserver import PNG, FakeServer


@pytest.fixture
def fake_server() -> Iterator[FakeServer]:
    server = FakeServer().start()
    yield server
    server.stop()


@pytest.fixture
def png_file(tmp_path: Path) -> Path:
    path = tmp_path / "diagram.png"
    path.write_bytes(PNG)
    return path


@pytest.fixture
def closed_url() -> str:
    """An http URL on a loopback port where nothing listens (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
