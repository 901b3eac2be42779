"""runpod/deploy.py, run as a subprocess against a loopback fake of RunPod's REST API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.fake_runpod import API_KEY, FakeRunPod, serve

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "runpod" / "deploy.py"
IMAGE = "docker.io/acme/visionrag:0.1.0"


@pytest.fixture
def fake():
    state = FakeRunPod()
    server, url = serve(state)
    state.url = url
    yield state
    server.shutdown()
    server.server_close()


def run(
    *args: str, key: str | None = API_KEY, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess:
    environ = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RUNPOD_API_KEY", "RUNPOD_API_URL", "VISIONRAG_IMAGE")
    }
    environ.update(env)
    if key is not None:
        environ["RUNPOD_API_KEY"] = key
    return subprocess.run(
        [sys.executable, str(DEPLOY), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environ,
        cwd=REPO,
    )


def api_args(fake: FakeRunPod, *more: str) -> list[str]:
    return ["--api-url", f"{fake.url}/v1", "--image", IMAGE, *more]


def test_creates_the_template_when_none_has_its_name(fake):
    fake.templates.append({"id": "other1", "name": "someone-else", "isServerless": False})
    res = run(*api_args(fake))
    assert res.returncode == 0, res.stderr
    assert fake.violations == []
    calls = [(r.method, r.path) for r in fake.api()]
    assert calls == [("GET", "/v1/templates"), ("POST", "/v1/templates")]
    for r in fake.api():
        assert r.headers["authorization"] == f"Bearer {API_KEY}"
    body = fake.api()[1].body
    assert body["imageName"] == IMAGE
    assert body["ports"] == ["8000/http"]
    assert body["volumeMountPath"] == "/workspace"
    assert body["isServerless"] is False
    assert body["env"]["HF_TOKEN"] == "{{ RUNPOD_SECRET_HF_TOKEN }}"
    assert body["env"]["QDRANT_API_KEY"] == "{{ RUNPOD_SECRET_QDRANT_API_KEY }}"
    assert body["env"]["VISIONRAG_DATA_DIR"] == "/workspace/data"
    assert body["dockerStartCmd"][-1] == "/app/runpod/start.sh"
    assert "100 s" in body["readme"]
    assert "created template" in res.stdout and "tpl0002" in res.stdout


def test_updates_the_template_of_the_same_name(fake):
    fake.templates.append(
        {"id": "tplOLD", "name": "visionrag-test", "imageName": "old:1", "isServerless": False}
    )
    res = run(*api_args(fake, "--name", "visionrag-test", "--qdrant-url", "https://x.cloud.qdrant.io:6333"))
    assert res.returncode == 0, res.stderr
    assert fake.violations == []
    calls = [(r.method, r.path) for r in fake.api()]
    assert calls == [("GET", "/v1/templates"), ("PATCH", "/v1/templates/tplOLD")]
    assert len(fake.templates) == 1
    assert fake.templates[0]["imageName"] == IMAGE
    assert fake.templates[0]["env"]["QDRANT_URL"] == "https://x.cloud.qdrant.io:6333"
    assert "updated template" in res.stdout


def test_refuses_to_patch_a_serverless_template_of_that_name(fake):
    fake.templates.append({"id": "tplSLS", "name": "visionrag-test", "isServerless": True})
    res = run(*api_args(fake, "--name", "visionrag-test"))
    assert res.returncode == 1
    assert "serverless" in res.stderr
    assert [r.method for r in fake.api()] == ["GET"]


def test_pod_is_created_and_health_is_awaited(fake):
    fake.health_after = 2
    res = run(
        *api_args(
            fake,
            "--pod",
            "--api-key-secret",
            "VISIONRAG_API_KEY",
            "--health-url",
            fake.url,
            "--wait",
            "30",
            "--poll",
            "0.05",
        )
    )
    assert res.returncode == 0, res.stderr
    assert fake.violations == []
    calls = [(r.method, r.path) for r in fake.api()]
    assert calls == [("GET", "/v1/templates"), ("POST", "/v1/templates"), ("POST", "/v1/pods")]
    pod = fake.api()[2].body
    assert pod["templateId"] == fake.templates[0]["id"]
    assert pod["gpuTypeIds"] == ["NVIDIA L40S"]
    assert pod["gpuCount"] == 2
    assert pod["env"]["VISIONRAG_API_KEY"] == "{{ RUNPOD_SECRET_VISIONRAG_API_KEY }}"
    assert f"https://{fake.pod_id}-8000.proxy.runpod.net" in res.stdout
    assert fake.health_calls == 3
    assert "503" in res.stdout  # the progress display shows the answers while waiting
    assert "healthy after" in res.stdout


def test_health_wait_is_bounded(fake):
    fake.health_after = None  # never ready
    res = run(*api_args(fake, "--pod", "--health-url", fake.url, "--wait", "0.5", "--poll", "0.1"))
    assert res.returncode == 1
    assert "not healthy after" in res.stderr and fake.pod_id in res.stderr
    assert "Traceback" not in res.stderr
    assert fake.health_calls >= 2


def test_custom_port_and_gpus(fake):
    res = run(
        *api_args(
            fake,
            "--pod",
            "--port",
            "8080",
            "--gpu-count",
            "1",
            "--gpu-type",
            "NVIDIA A40",
            "--wait",
            "0",
            "--env",
            "VISIONRAG_DEFAULT_MAX_TOKENS=1024",
        )
    )
    assert res.returncode == 0, res.stderr
    assert fake.violations == []
    tpl, pod = fake.api()[1].body, fake.api()[2].body
    assert tpl["ports"] == ["8080/http"] and tpl["env"]["PORT"] == "8080"
    assert tpl["env"]["VISIONRAG_DEFAULT_MAX_TOKENS"] == "1024"
    assert pod["gpuTypeIds"] == ["NVIDIA A40"] and pod["gpuCount"] == 1
    assert f"https://{fake.pod_id}-8080.proxy.runpod.net" in res.stdout
    assert fake.health_calls == 0


def test_env_must_name_a_server_setting(fake):
    res = run(*api_args(fake, "--env", "NOT_A_SETTING=1"))
    assert res.returncode != 0
    assert "NOT_A_SETTING" in res.stderr
    assert fake.requests == []


def test_dry_run_prints_the_bodies_and_sends_nothing(fake):
    res = run("--dry-run", "--api-url", f"{fake.url}/v1", key="dummy")
    assert res.returncode == 0, res.stderr
    assert fake.requests == []
    out = res.stdout
    for needle in (
        "visionrag/visionrag:",
        '"8000/http"',
        '"/workspace"',
        "{{ RUNPOD_SECRET_HF_TOKEN }}",
        "{{ RUNPOD_SECRET_QDRANT_API_KEY }}",
        '"NVIDIA L40S"',
        '"gpuCount": 2',
    ):
        assert needle in out, needle
    assert "dummy" not in out  # the key is never printed
    tpl, pod = dry_run_bodies(out)
    assert FakeRunPod().check_template(tpl, creating=True) == []
    assert pod["gpuTypeIds"] == ["NVIDIA L40S"]


def test_dry_run_needs_no_key_and_no_network():
    res = run("--dry-run", key=None, RUNPOD_API_URL="http://127.0.0.1:9/v1")
    assert res.returncode == 0, res.stderr
    assert "http://127.0.0.1:9/v1/templates" in res.stdout


def test_missing_key_is_a_clear_error(fake):
    res = run(*api_args(fake), key=None)
    assert res.returncode == 1
    assert "RUNPOD_API_KEY" in res.stderr and "Traceback" not in res.stderr
    assert fake.requests == []


def test_wrong_key_prints_the_api_message(fake):
    res = run(*api_args(fake), key="wrong-key")
    assert res.returncode == 1
    assert "401" in res.stderr and "Unauthorized: invalid api key" in res.stderr
    assert "Traceback" not in res.stderr
    assert [r.method for r in fake.api()] == ["GET"]


@pytest.mark.parametrize(
    ("status", "answer", "expected"),
    [
        (500, {"error": "internal error: try again later"}, "internal error: try again later"),
        (400, {"message": "gpuTypeIds: no stock for NVIDIA L40S"}, "no stock for NVIDIA L40S"),
        (502, "<html>Bad Gateway</html>", "Bad Gateway"),
    ],
)
def test_api_errors_print_the_message_and_exit_1(fake, status, answer, expected):
    fake.fail_with = (status, answer)
    res = run(*api_args(fake, "--pod"))
    assert res.returncode == 1
    assert str(status) in res.stderr and expected in res.stderr
    assert "Traceback" not in res.stderr


def test_pod_error_after_the_template_step(fake):
    fake.pod_error = (
        400,
        {"error": "There are no longer any instances available with the requested specifications."},
    )
    res = run(*api_args(fake, "--pod"))
    assert res.returncode == 1
    assert "no longer any instances available" in res.stderr and "Traceback" not in res.stderr
    assert [(r.method, r.path) for r in fake.api()][-1] == ("POST", "/v1/pods")
    assert "created template" in res.stdout


def test_zero_gpus_is_refused_before_any_request(fake):
    res = run(*api_args(fake, "--pod", "--gpu-count", "0"))
    assert res.returncode != 0
    assert fake.requests == []


def test_unreachable_api_is_a_clear_error():
    res = run("--api-url", "http://127.0.0.1:9/v1", "--timeout", "2")
    assert res.returncode == 1
    assert "cannot reach the RunPod API" in res.stderr and "Traceback" not in res.stderr


def test_help_documents_every_option():
    res = run("--help", key=None)
    assert res.returncode == 0
    for flag in (
        "--image",
        "--name",
        "--model",
        "--pod",
        "--gpu-type",
        "--gpu-count",
        "--wait",
        "--health-url",
        "--api-url",
        "--dry-run",
        "--qdrant-url",
        "--api-key-secret",
        "--env",
        "RUNPOD_API_KEY",
    ):
        assert flag in res.stdout, flag


def dry_run_bodies(out: str) -> list[dict]:
    decoder = json.JSONDecoder()
    bodies, i = [], 0
    while (i := out.find("\n{", i)) != -1:
        obj, end = decoder.raw_decode(out, i + 1)
        bodies.append(obj)
        i = end
    return bodies
