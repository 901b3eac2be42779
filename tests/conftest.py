"""Shared fixtures: tiny random checkpoints built once per session, a loopback image server, and the real
server (`visionrag serve` as a subprocess on 127.0.0.1) started on them."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from PIL import Image, ImageDraw

from tests.checkpoints.clip import build_tiny_clip
from tests.checkpoints.mllama import build_tiny_mllama

VISIONRAG = Path(sys.executable).with_name("visionrag")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll `check` until it is true; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def diagram_png(seed: int = 0, size: tuple[int, int] = (160, 120)) -> bytes:
    """A small synthetic diagram: boxes and arrows, different for each seed."""
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    for i in range(3):
        x = 10 + ((seed * 37 + i * 50) % (size[0] - 50))
        y = 10 + ((seed * 23 + i * 30) % (size[1] - 40))
        color = ((seed * 70 + i * 90) % 256, (seed * 30 + 60) % 256, (i * 120 + seed * 10) % 256)
        draw.rectangle([x, y, x + 40, y + 25], outline=color, width=3)
        draw.line([x + 40, y + 12, min(x + 70, size[0] - 1), y + 12], fill=color, width=2)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# -- checkpoints -------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_mllama(tmp_path_factory.mktemp("tiny-mllama"))


@pytest.fixture
def history_config(tiny_clip_dirs: tuple[Path, Path], tmp_path: Path):
    """History settings for the session's tiny CLIP, loaded offline, with a fresh data dir per test."""
    from visionrag.search.config import HistoryConfig

    text_dir, vision_dir = tiny_clip_dirs
    return HistoryConfig(
        text_model_path=text_dir,
        image_model_path=vision_dir,
        data_dir=tmp_path / "data",
        collection_name="test_history",
    )


@pytest.fixture(scope="session")
def shared_embedders(tiny_clip_dirs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory):
    """One loaded pair of CLIP models for the whole session (loading is the slow part of a History)."""
    from visionrag.search.config import HistoryConfig
    from visionrag.search.embedders import Embedders

    text_dir, vision_dir = tiny_clip_dirs
    embedders = Embedders(
        HistoryConfig(
            text_model_path=text_dir, image_model_path=vision_dir, data_dir=tmp_path_factory.mktemp("unused")
        )
    )
    embedders.load()
    return embedders


@pytest.fixture(scope="session")
def tiny_clip_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


# -- a loopback image server ---------------------------------------------------------------------------
class ImageServer:
    """Serves `files[path] = (content_type, body)` on 127.0.0.1 and counts the requests it saw."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[str, bytes]] = {}
        self.hits: list[str] = []
        files, hits = self.files, self.hits

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(self.path)
                if self.path not in files:
                    self.send_error(404, "not found")
                    return
                kind, body = files[self.path]
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def add(self, path: str, body: bytes, content_type: str = "image/png") -> str:
        self.files[path] = (content_type, body)
        return self.base + path

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="session")
def image_server() -> Iterator[ImageServer]:
    server = ImageServer()
    yield server
    server.close()


# -- the real server -------------------------------------------------------------------------------------
class ServerProcess:
    """`visionrag serve` in its own process group on a loopback port, as a user would run it."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "server.log"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("VISIONRAG_", "QDRANT_", "DB_"))},
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "VISIONRAG_DATA_DIR": str(workdir / "data"),
            "VISIONRAG_ACCELERATOR": "cpu",
            "VISIONRAG_ALLOW_PRIVATE_HOSTS": "127.0.0.1",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        self.proc: subprocess.Popen | None = None

    def spawn(self) -> ServerProcess:
        """Start `visionrag serve` without waiting (tests that watch the loading phase call this)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(VISIONRAG), "serve"],
                cwd=self.workdir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def start(self, timeout: float = 120.0) -> ServerProcess:
        self.spawn()
        try:
            wait_until(self._ready, timeout, f"{self.url}/health")
        except AssertionError:
            self.stop()
            raise AssertionError(f"server did not become ready; log:\n{self.log_tail()}") from None
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"server exited with {self.proc.returncode}; log:\n{self.log_tail()}")
        try:
            return requests.get(f"{self.url}/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self._reap_group()
            return
        self.proc.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout)
        self._reap_group()

    def kill(self) -> None:
        """kill -9 of the whole server (API process, workers, everything)."""
        self._reap_group()

    def _reap_group(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


@pytest.fixture(scope="session")
def server_env(tiny_model_dir: Path, tiny_clip_dirs: tuple[Path, Path]) -> dict[str, str]:
    """The environment every test server starts from: tiny checkpoints, nothing downloaded."""
    text_dir, image_dir = tiny_clip_dirs
    return {
        "MODEL_NAME": str(tiny_model_dir),
        "TEXT_MODEL_PATH": str(text_dir),
        "IMAGE_MODEL_PATH": str(image_dir),
        "VISIONRAG_MAX_BATCH_SIZE": "8",
        "VISIONRAG_BATCH_TIMEOUT": "0.1",
        "VISIONRAG_DEFAULT_MAX_TOKENS": "16",
        # TEST_BATCHING=static runs the server tests against the static-batching fallback
        "VISIONRAG_BATCHING": os.environ.get("TEST_BATCHING", "continuous"),
    }


@pytest.fixture(scope="session")
def start_server(
    tmp_path_factory: pytest.TempPathFactory, server_env: dict[str, str]
) -> Iterator[Callable[..., ServerProcess]]:
    """Start a server with extra environment; every server started is stopped at the end of the session."""
    started: list[ServerProcess] = []

    def start(workdir: Path | None = None, **env: str) -> ServerProcess:
        proc = ServerProcess(workdir or tmp_path_factory.mktemp("server"), {**server_env, **env})
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture(scope="session")
def server(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    """One shared server for tests that do not need their own settings."""
    return start_server()
