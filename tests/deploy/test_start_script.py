"""runpod/start.sh with fake `visionrag`, `python` and `nvidia-smi` first on PATH: what it runs, with
which environment."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
START = REPO / "runpod" / "start.sh"
BASH = shutil.which("bash")

RECORDER = """#!{py}
# fake {name}: records argv, stdin (for python) and the environment as one JSON line, then exits
# with the status in $FAKE_{upper}_RC (default 0)
import json, os, sys
stdin = sys.stdin.read() if "{name}" == "python" else ""
record = {{"prog": "{name}", "argv": sys.argv[1:], "stdin": stdin, "env": dict(os.environ)}}
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps(record) + "\\n")
sys.exit(int(os.environ.get("FAKE_{upper}_RC", "0")))
"""


@pytest.fixture
def fakebin(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("visionrag", "python"):
        script = bin_dir / name
        script.write_text(RECORDER.format(py=sys.executable, name=name, upper=name.upper()))
        script.chmod(0o755)
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho '0, NVIDIA L40S, 46068 MiB'\necho '1, NVIDIA L40S, 46068 MiB'\n")
    smi.chmod(0o755)
    return bin_dir


def run_start(fakebin: Path, tmp_path: Path, *args: str, **env: str):
    log = tmp_path / "calls.jsonl"
    environ = {
        "PATH": f"{fakebin}:/usr/bin:/bin",
        "FAKE_LOG": str(log),
        "HOME": str(tmp_path),
    }
    environ.update(env)
    res = subprocess.run([BASH, str(START), *args], capture_output=True, text=True, env=environ, timeout=60)
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return res, calls


def test_runs_visionrag_serve_with_the_documented_defaults(fakebin, tmp_path):
    res, calls = run_start(fakebin, tmp_path)
    assert res.returncode == 0, res.stderr
    assert [c["prog"] for c in calls] == ["python", "visionrag"]
    fetch, serve = calls
    # the weights are fetched (progress bars in the log) before the server starts
    assert fetch["argv"] == ["-", "meta-llama/Llama-3.2-11B-Vision-Instruct"]
    assert "snapshot_download" in fetch["stdin"] and "original/*" in fetch["stdin"]
    assert fetch["env"]["HF_HOME"] == "/workspace/hf"
    assert serve["argv"] == ["serve"]
    env = serve["env"]
    assert env["HF_HOME"] == "/workspace/hf"
    assert env["FASTEMBED_CACHE_PATH"] == "/workspace/fastembed"
    assert env["VISIONRAG_DATA_DIR"] == "/workspace/data"
    assert env["MODEL_NAME"] == "meta-llama/Llama-3.2-11B-Vision-Instruct"
    assert env["HOST"] == "0.0.0.0" and env["PORT"] == "8000"
    assert "gpu 1, NVIDIA L40S" in res.stdout
    assert "embedded store in /workspace/data" in res.stdout
    assert "VISIONRAG_API_KEY is unset" in res.stdout


def test_environment_wins_and_arguments_pass_through(fakebin, tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    res, calls = run_start(
        fakebin,
        tmp_path,
        "--max-batch-size",
        "4",
        PORT="9000",
        HOST="::",
        MODEL_NAME=str(model_dir),
        VISIONRAG_DATA_DIR=str(tmp_path / "d"),
        VISIONRAG_PLACEMENT="shard",
        QDRANT_URL="https://user:pw@abc.cloud.qdrant.io:6333?x=1",
    )
    assert res.returncode == 0, res.stderr
    assert [c["prog"] for c in calls] == ["visionrag"]  # a local model directory is not fetched
    serve = calls[0]
    assert serve["argv"] == ["serve", "--max-batch-size", "4"]
    assert serve["env"]["PORT"] == "9000" and serve["env"]["HOST"] == "::"
    assert serve["env"]["MODEL_NAME"] == str(model_dir)
    assert serve["env"]["VISIONRAG_DATA_DIR"] == str(tmp_path / "d")
    assert "placement=shard" in res.stdout and "listen=:::9000" in res.stdout
    assert "qdrant server https://abc.cloud.qdrant.io:6333" in res.stdout
    assert "pw" not in res.stdout


def test_start_line_never_shows_secrets(fakebin, tmp_path):
    secrets = {
        "HF_TOKEN": "hf_SECRETtoken1",
        "QDRANT_API_KEY": "qdrantSECRET2",
        "VISIONRAG_API_KEY": "apiSECRET3",
    }
    res, calls = run_start(fakebin, tmp_path, **secrets)
    assert res.returncode == 0, res.stderr
    for value in secrets.values():
        assert value not in res.stdout + res.stderr
    assert "hf_token=set" in res.stdout and "api_key=set" in res.stdout
    assert calls[-1]["env"]["HF_TOKEN"] == "hf_SECRETtoken1"  # passed on to the server untouched


def test_unresolved_runpod_secrets(fakebin, tmp_path):
    res, calls = run_start(
        fakebin,
        tmp_path,
        HF_HUB_OFFLINE="1",
        HF_TOKEN="{{ RUNPOD_SECRET_HF_TOKEN }}",
        QDRANT_API_KEY="{{ RUNPOD_SECRET_QDRANT_API_KEY }}",
    )
    assert res.returncode == 0, res.stderr
    assert "HF_TOKEN refers to a RunPod secret that does not exist" in res.stderr
    env = calls[-1]["env"]
    assert "HF_TOKEN" not in env and "QDRANT_API_KEY" not in env
    assert [c["prog"] for c in calls] == ["visionrag"]  # offline: nothing fetched


def test_unresolved_api_key_secret_refuses_to_start(fakebin, tmp_path):
    res, calls = run_start(fakebin, tmp_path, VISIONRAG_API_KEY="{{ RUNPOD_SECRET_VISIONRAG_API_KEY }}")
    assert res.returncode == 1
    assert "refusing to start" in res.stderr
    assert calls == []


def test_failed_download_stops_before_the_server(fakebin, tmp_path):
    res, calls = run_start(fakebin, tmp_path, FAKE_PYTHON_RC="1")
    assert res.returncode == 1
    assert [c["prog"] for c in calls] == ["python"]


def test_start_script_is_executable_and_bash():
    assert os.access(START, os.X_OK)
    assert START.read_text().startswith("#!/usr/bin/env bash")
    assert subprocess.run([BASH, "-n", str(START)]).returncode == 0
