"""The Dockerfile, .dockerignore and the runpod/ folder, checked by reading them (no docker engine here).

Also: every environment variable the Dockerfile, start.sh and deploy.py's template set is a real
setting of server/settings.py, or one of the few third-party variables listed below on purpose.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from visionrag.server.settings import Settings

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
START = REPO / "runpod" / "start.sh"

# Variables read by libraries, not by our Settings: each one is here for a reason.
THIRD_PARTY_ENV = {
    "HF_HOME": "huggingface_hub cache: the model weights on the /workspace volume",
    "FASTEMBED_CACHE_PATH": "fastembed cache: the CLIP models on the volume (default is /tmp)",
    "PYTHONUNBUFFERED": "log lines reach `docker logs` / the RunPod log at once",
    "PIP_NO_CACHE_DIR": "smaller image",
    "PIP_DISABLE_PIP_VERSION_CHECK": "quiet build",
}


def settings_env_names() -> set[str]:
    return {name for f in fields(Settings) for name in f.metadata["env"]}


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def dockerfile_env() -> dict[str, str]:
    env = {}
    for word, rest in instructions():
        if word == "ENV":
            for token in shlex.split(rest):
                key, _, value = token.partition("=")
                env[key] = value
    return env


def test_base_image_is_a_pinned_cuda_pytorch():
    froms = [rest for word, rest in instructions() if word == "FROM"]
    assert len(froms) == 1
    image = froms[0].split()[0]
    name, _, tag = image.partition(":")
    assert name in ("pytorch/pytorch", "runpod/pytorch")
    assert tag and tag != "latest" and "latest" not in tag
    assert re.match(r"^\d+\.\d+\.\d+-cuda12\.\d+-cudnn\d+-runtime$", tag), tag


def test_installs_the_project_from_pyproject_keeping_the_base_torch():
    runs = " ".join(rest for word, rest in instructions() if word == "RUN")
    installs = re.findall(r"pip install ([^&;]*)", runs)
    assert installs, "no pip install"
    project = [args for args in installs if re.search(r"(^|\s)\.(\s|$)", args)]
    assert project, f"`pip install .` missing: {installs}"
    assert "-c " in project[0] and "torch==" in runs  # constraint: keep the base image's torch
    assert "requirements" not in DOCKERFILE.read_text()
    assert not any(" -r " in f" {args} " for args in installs)
    assert not (REPO / "requirements.txt").exists()


def test_port_healthcheck_volume_paths_and_command():
    ins = instructions()
    assert ("EXPOSE", "8000") in ins
    health = [rest for word, rest in ins if word == "HEALTHCHECK"]
    assert len(health) == 1 and "/health" in health[0]
    start_period = re.search(r"--start-period=(\d+)([sm])", health[0])
    assert start_period, "a start period: loading an 11B model takes minutes"
    seconds = int(start_period[1]) * (60 if start_period[2] == "m" else 1)
    assert seconds >= 600
    env = dockerfile_env()
    assert env["HF_HOME"] == "/workspace/hf"
    assert env["VISIONRAG_DATA_DIR"] == "/workspace/data"
    assert env["FASTEMBED_CACHE_PATH"].startswith("/workspace/")
    cmd = [rest for word, rest in ins if word == "CMD"]
    assert len(cmd) == 1
    assert json.loads(cmd[0]) == ["bash", "/app/runpod/start.sh"]
    assert ("WORKDIR", "/app") in ins
    assert "exec visionrag serve" in START.read_text()


def test_weights_are_not_baked_unless_asked():
    text = DOCKERFILE.read_text()
    assert 'ARG BAKE_MODEL=""' in text
    bake = [rest for word, rest in instructions() if word == "RUN" and "snapshot_download" in rest]
    assert len(bake) == 1 and 'if [ -n "$BAKE_MODEL" ]' in bake[0]
    assert "--mount=type=secret,id=hf_token" in bake[0]  # the token never lands in a layer
    assert "HF_TOKEN" not in dockerfile_env()


def test_every_env_var_set_is_a_setting_or_a_known_library_variable():
    known = settings_env_names() | set(THIRD_PARTY_ENV)
    # Dockerfile ENV
    unknown = set(dockerfile_env()) - known
    assert not unknown, f"Dockerfile sets {unknown}"
    # start.sh defaults (`: "${NAME:=...}"`) and exports
    text = START.read_text()
    set_in_start = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*):=", text))
    for line in re.findall(r"^\s*export\s+(.+)$", text, flags=re.M):
        set_in_start |= {tok.partition("=")[0] for tok in line.split()}
    assert {"HF_HOME", "VISIONRAG_DATA_DIR", "PORT", "HOST", "MODEL_NAME"} <= set_in_start
    assert not set_in_start - known, f"start.sh sets {set_in_start - known}"
    # deploy.py's template env (from its dry run), which must be Settings names only
    res = subprocess.run(
        [
            sys.executable,
            str(REPO / "runpod" / "deploy.py"),
            "--dry-run",
            "--qdrant-url",
            "https://q.example:6333",
            "--api-key-secret",
            "VISIONRAG_API_KEY",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "RUNPOD_API_KEY": "dummy"},
    )
    assert res.returncode == 0, res.stderr
    body = json.JSONDecoder().raw_decode(res.stdout, res.stdout.index("\n{") + 1)[0]
    assert not set(body["env"]) - settings_env_names(), (
        f"template env {set(body['env']) - settings_env_names()}"
    )


def test_serverless_template_env_is_settings_plus_runpods_health_port():
    res = subprocess.run(
        [sys.executable, str(REPO / "runpod" / "deploy.py"), "--dry-run", "--serverless"],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "RUNPOD_API_KEY"},
    )
    assert res.returncode == 0, res.stderr
    body = json.JSONDecoder().raw_decode(res.stdout, res.stdout.index("\n{") + 1)[0]
    assert body["serverless"] is True
    # PORT_HEALTH is read by RunPod's load balancer (it probes /ping there), not by our Settings
    assert set(body["env"]) - settings_env_names() == {"PORT_HEALTH"}


def test_dockerfile_values_agree_with_settings_and_deploy():
    defaults = {f.name: f.default for f in fields(Settings)}
    env = dockerfile_env()
    assert env["PORT"] == str(defaults["port"])
    assert env["HOST"] == defaults["host"]


def dockerignored(path: str) -> bool:
    excluded = False
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        hit = any(
            fnmatch.fnmatch("/".join(parts[: i + 1]), pattern.replace("**/", "")) for i in range(len(parts))
        )
        hit = hit or ("**/" in pattern and any(fnmatch.fnmatch(p, pattern.split("**/")[-1]) for p in parts))
        if hit:
            excluded = not negate
    return excluded


@pytest.mark.parametrize(
    "path",
    [
        "pyproject.toml",
        "README.md",
        "server/settings.py",
        "search/__init__.py",
        "clients/__init__.py",
        "runpod/start.sh",
        "runpod/deploy.py",
    ],
)
def test_build_context_keeps_what_the_build_needs(path):
    assert not dockerignored(path)


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        ".env",
        "data/journal.sqlite3",
        "server/__pycache__/x.pyc",
        "tests/server/test_x.py",
    ],
)
def test_build_context_leaves_out_local_state_and_secrets(path):
    assert dockerignored(path)


def test_no_package_named_runpod_shadows_the_sdk():
    assert not (REPO / "runpod" / "__init__.py").exists()
    assert not [p for p in REPO.rglob("runpod/__init__.py") if ".venv" not in p.parts]


def test_runpod_readme_covers_the_steps():
    text = (REPO / "runpod" / "README.md").read_text()
    for needle in (
        "docker build",
        "docker push",
        "HF_TOKEN",
        "QDRANT_API_KEY",
        "deploy.py",
        "--dry-run",
        "curl",
        "visionrag",
        "proxy.runpod.net",
        "L40S",
        "524",
        "stream",
        "QDRANT_URL",
        "/workspace",
        "estimate",
        "--serverless",
        "LOAD_BALANCER",
        "api.runpod.ai",
        "/ping",
        "5.5 minutes",
        "hub.json",
        "--create-secret",
        "api.runpod.io/v2",
    ):
        assert needle in text, needle
