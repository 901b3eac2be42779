"""Preflight: a setting that cannot work fails before anything is spawned, in seconds, with one line that
names the setting and says what to do; a hub that refuses or never answers fails within its deadline."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import VISIONRAG, free_port
from visionrag.server.preflight import Hub, PreflightError, preflight
from visionrag.server.settings import DEFAULT_MODEL, Settings

OFFLINE = Hub(offline=True, endpoint="http://127.0.0.1:9")


def settings(model: str | Path, clip: tuple[Path, Path], **changes: object) -> Settings:
    return Settings(model_name=str(model), text_model_path=clip[0], image_model_path=clip[1]).replace(
        **changes
    )


def refused(message: str, s: Settings, hub: Hub = OFFLINE) -> None:
    with pytest.raises(PreflightError) as info:
        preflight(s, hub)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_a_good_local_setup_passes(tiny_model_dir: Path, tiny_clip_dirs: tuple[Path, Path]) -> None:
    preflight(settings(tiny_model_dir, tiny_clip_dirs), OFFLINE)


def test_model_paths_that_cannot_work(tmp_path: Path, tiny_clip_dirs: tuple[Path, Path]) -> None:
    refused("MODEL_NAME=/x/nothing: no such directory", settings("/x/nothing", tiny_clip_dirs))
    refused("MODEL_NAME=./nothing: no such directory", settings("./nothing", tiny_clip_dirs))
    empty = tmp_path / "empty"
    empty.mkdir()
    refused(f"MODEL_NAME={empty}: no config.json", settings(empty, tiny_clip_dirs))
    (empty / "config.json").write_text("{}")
    refused(f"MODEL_NAME={empty}: no preprocessor_config.json", settings(empty, tiny_clip_dirs))


def test_hub_ids_without_a_copy(tiny_clip_dirs: tuple[Path, Path]) -> None:
    refused(
        "MODEL_NAME=someone/not-cached: no cached copy and HF_HUB_OFFLINE=1",
        settings("someone/not-cached", tiny_clip_dirs),
    )
    online_without_token = Hub(offline=False, endpoint="http://127.0.0.1:9")
    online_without_token.token = None
    refused(
        f"MODEL_NAME={DEFAULT_MODEL}: a gated model and HF_TOKEN is not set",
        settings(DEFAULT_MODEL, tiny_clip_dirs),
        online_without_token,
    )


def test_clip_models_neither_given_nor_cached(
    tmp_path: Path, tiny_model_dir: Path, tiny_clip_dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    text, image = tiny_clip_dirs
    refused(
        f"TEXT_MODEL_PATH={tmp_path / 'no'}: no such directory",
        settings(tiny_model_dir, (tmp_path / "no", image)),
    )
    refused(f"IMAGE_MODEL_PATH={tmp_path}: no .onnx model", settings(tiny_model_dir, (text, tmp_path)))
    monkeypatch.setenv("FASTEMBED_CACHE_PATH", str(tmp_path / "fastembed"))  # read by fastembed
    s = Settings(model_name=str(tiny_model_dir), image_model_path=image)
    refused("TEXT_MODEL=Qdrant/clip-ViT-B-32-text: not in fastembed's cache and HF_HUB_OFFLINE=1", s)


def test_a_refused_hub_fails_at_once_with_a_hint(tiny_model_dir: Path, tmp_path: Path) -> None:
    hub = Hub(offline=False, endpoint=f"http://127.0.0.1:{free_port()}", deadline=10)
    start = time.monotonic()
    refused(
        "MODEL_NAME=someone/not-cached: cannot reach the model hub at http://127.0.0.1:",
        settings("someone/not-cached", (tmp_path, tmp_path)),
        hub,
    )
    assert time.monotonic() - start < 10


def test_a_hub_that_never_answers_fails_within_the_deadline(tmp_path: Path) -> None:
    with socket.socket() as black_hole:  # accepts connections (the kernel's backlog) and never answers
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(8)
        hub = Hub(offline=False, endpoint=f"http://127.0.0.1:{black_hole.getsockname()[1]}", deadline=2)
        start = time.monotonic()
        with pytest.raises(PreflightError) as info:
            preflight(settings("someone/not-cached", (tmp_path, tmp_path)), hub)
        elapsed = time.monotonic() - start
    assert "did not answer within 2 s" in str(info.value)
    assert "HF_HUB_OFFLINE=1" in str(info.value) and "HF_TOKEN" in str(info.value)
    assert elapsed < 5


def run_serve(tmp_path: Path, timeout: float, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    environ = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("VISIONRAG_", "HF_", "MODEL_NAME"))},
        "VISIONRAG_DATA_DIR": str(tmp_path / "data"),
        "FASTEMBED_CACHE_PATH": str(tmp_path / "fastembed"),
        "HF_HOME": str(tmp_path / "hf"),
        "PORT": str(free_port()),
        "HOST": "127.0.0.1",
        **env,
    }
    start = time.monotonic()
    done = subprocess.run(
        [str(VISIONRAG), "serve"], cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=timeout
    )
    return done, time.monotonic() - start


def test_serve_says_what_is_wrong_in_one_line(tmp_path: Path, tiny_clip_dirs: tuple[Path, Path]) -> None:
    done, elapsed = run_serve(
        tmp_path,
        60,
        MODEL_NAME="/x/nothing",
        TEXT_MODEL_PATH=str(tiny_clip_dirs[0]),
        IMAGE_MODEL_PATH=str(tiny_clip_dirs[1]),
    )
    assert done.returncode == 1
    assert "error: MODEL_NAME=/x/nothing: no such directory" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert "inference-worker" not in done.stderr  # nothing was spawned
    assert elapsed < 45  # no model load: the interpreter's start on a loaded 2-core box


def test_serve_with_an_unreachable_hub_fails_within_30_s(tmp_path: Path) -> None:
    done, elapsed = run_serve(
        tmp_path, 90, MODEL_NAME="someone/not-cached", HF_ENDPOINT=f"http://127.0.0.1:{free_port()}"
    )
    assert done.returncode == 1, done.stderr
    assert "cannot reach the model hub at http://127.0.0.1:" in done.stderr
    assert "HF_HUB_OFFLINE=1" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert elapsed < 30 + 15  # the bound, plus the interpreter's start on a loaded 2-core box
