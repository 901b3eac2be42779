"""runpod/deploy.py, run as a subprocess against a loopback fake of RunPod's REST API v2 that validates every
request body against RunPod's own request schemas."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.fake_runpod import API_KEY, FIXTURE, SCHEMAS, VALIDATOR, FakeRunPod, serve

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "runpod" / "deploy.py"
IMAGE = "docker.io/acme/visionrag:0.1.0"
SECRET_VALUE = "hf_the-real-token-value-9Qx7"


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
        if k not in ("RUNPOD_API_KEY", "RUNPOD_API_URL", "VISIONRAG_IMAGE", "HF_TOKEN")
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
    return ["--api-url", f"{fake.url}/v2", "--image", IMAGE, *more]


def pod_args(fake: FakeRunPod, *more: str) -> list[str]:
    return api_args(fake, "--pod", "--ready-url", fake.url, "--wait", "30", "--poll", "0.02", *more)


def ok(res: subprocess.CompletedProcess, fake: FakeRunPod) -> None:
    assert res.returncode == 0, res.stderr
    assert fake.violations == []
    assert "Traceback" not in res.stderr


# ---------------------------------------------------------------- templates


def test_creates_the_pod_template_with_v2_fields(fake):
    fake.templates.append({"id": "other1", "name": "someone-else", "serverless": False})
    res = run(*api_args(fake))
    ok(res, fake)
    assert fake.calls() == [("GET", "/v2/templates"), ("POST", "/v2/templates")]
    for r in fake.api():
        assert r.headers["authorization"] == f"Bearer {API_KEY}"
    body = fake.bodies("POST", "/v2/templates")[0]
    assert body["image"] == IMAGE
    assert body["ports"] == ["8000/http"]
    assert body["mounts"] == {"persistent": {"size": 80, "path": "/workspace"}}
    assert body["serverless"] is False and body["category"] == "NVIDIA"
    assert body["startSsh"] is False and body["startJupyter"] is False
    assert body["allowedCudaVersions"][0] == "12.8"
    assert body["env"]["HF_TOKEN"] == "{{ RUNPOD_SECRET_HF_TOKEN }}"
    assert "QDRANT_API_KEY" not in body["env"]  # only with --qdrant-url
    assert body["env"]["VISIONRAG_DATA_DIR"] == "/workspace/data"
    assert not {"imageName", "volumeInGb", "containerDiskInGb", "dockerStartCmd", "readme"} & set(body)
    assert "created template" in res.stdout and "tpl0002" in res.stdout


def test_updates_the_template_of_the_same_name(fake):
    fake.templates.append({"id": "tplOLD", "name": "visionrag-test", "image": "old:1", "serverless": False})
    res = run(*api_args(fake, "--name", "visionrag-test", "--qdrant-url", "https://x.cloud.qdrant.io:6333"))
    ok(res, fake)
    assert fake.calls() == [("GET", "/v2/templates"), ("PATCH", "/v2/templates/tplOLD")]
    patch = fake.bodies("PATCH", "/v2/templates/tplOLD")[0]
    assert "serverless" not in patch  # a template does not change kind
    assert len(fake.templates) == 1
    assert fake.templates[0]["image"] == IMAGE
    assert fake.templates[0]["env"]["QDRANT_URL"] == "https://x.cloud.qdrant.io:6333"
    assert fake.templates[0]["env"]["QDRANT_API_KEY"] == "{{ RUNPOD_SECRET_QDRANT_API_KEY }}"
    assert "updated template" in res.stdout


def test_refuses_to_patch_a_serverless_template_of_that_name(fake):
    fake.templates.append({"id": "tplSLS", "name": "visionrag-test", "serverless": True})
    res = run(*api_args(fake, "--name", "visionrag-test"))
    assert res.returncode == 1
    assert "Serverless template named 'visionrag-test' exists" in res.stderr
    assert fake.calls() == [("GET", "/v2/templates")]


# ---------------------------------------------------------------- pods


def test_pod_is_created_polled_to_running_and_ping_is_awaited(fake):
    res = run(*pod_args(fake, "--api-key-secret", "VISIONRAG_API_KEY"))
    ok(res, fake)
    assert fake.calls()[:4] == [
        ("GET", "/v2/templates"),
        ("POST", "/v2/templates"),
        ("GET", "/v2/catalog/gpus"),
        ("POST", "/v2/pods"),
    ]
    catalog = next(r for r in fake.api() if r.path == "/v2/catalog/gpus")
    assert catalog.query == {
        "include": ["AVAILABILITY"],
        "product": ["POD"],
        "count": ["2"],
        "cloud": ["SECURE"],
    }
    pod = fake.bodies("POST", "/v2/pods")[0]
    assert pod == {
        "name": "visionrag-llama-3.2-vision",
        "templateId": fake.templates[0]["id"],
        "gpu": {"id": "NVIDIA L40S", "count": 2},
        "cloud": "SECURE",
    }
    assert fake.templates[0]["env"]["VISIONRAG_API_KEY"] == "{{ RUNPOD_SECRET_VISIONRAG_API_KEY }}"
    assert fake.pod_gets == 3  # PROVISIONING, STARTING, RUNNING
    for status in ("PROVISIONING", "STARTING", "RUNNING"):
        assert status in res.stdout
    assert "https://pod001abc-8000.proxy.runpod.net" in res.stdout
    assert fake.ping_calls == 3  # 204, 204, 200
    assert "204 loading" in res.stdout and "ready after" in res.stdout


def test_next_gpu_type_when_the_catalog_has_no_stock(fake):
    fake.availability["NVIDIA L40S"] = "NONE"
    res = run(*pod_args(fake, "--gpu-type", "NVIDIA L40S", "--gpu-type", "NVIDIA L40"))
    ok(res, fake)
    assert [b["gpu"]["id"] for b in fake.bodies("POST", "/v2/pods")] == ["NVIDIA L40"]  # L40S never tried
    assert "NVIDIA L40S: no secure stock" in res.stderr
    assert "on 2 x NVIDIA L40 " in res.stdout


def test_next_gpu_type_when_the_create_finds_no_capacity(fake):
    fake.no_capacity.add("NVIDIA L40S")  # the catalog still says HIGH: stock moved since the read
    res = run(*pod_args(fake, "--gpu-type", "NVIDIA L40S", "--gpu-type", "NVIDIA RTX 6000 Ada Generation"))
    ok(res, fake)
    assert [b["gpu"]["id"] for b in fake.bodies("POST", "/v2/pods")] == [
        "NVIDIA L40S",
        "NVIDIA RTX 6000 Ada Generation",
    ]
    assert "no longer any instances available" in res.stderr and "trying the next --gpu-type" in res.stderr
    assert "created pod pod001abc on 2 x NVIDIA RTX 6000 Ada Generation" in res.stdout


def test_every_gpu_type_without_capacity_is_one_clear_error(fake):
    fake.no_capacity |= {"NVIDIA L40S", "NVIDIA L40"}
    res = run(*pod_args(fake, "--gpu-type", "NVIDIA L40S", "--gpu-type", "NVIDIA L40"))
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "no pod could be placed" in res.stderr
    assert "NVIDIA L40S: RunPod API POST /pods answered 400: Bad Request: There are no longer" in res.stderr
    assert fake.pods == {}


def test_unknown_gpu_type_is_named_with_the_catalog_choices(fake):
    res = run(*pod_args(fake, "--gpu-type", "L40S"))
    assert res.returncode == 1
    assert "L40S: not a GPU type id" in res.stderr and "NVIDIA L40S" in res.stderr
    assert fake.bodies("POST", "/v2/pods") == []


@pytest.mark.parametrize("state", ["ERROR", "EXITED"])
def test_pod_that_fails_ends_the_wait_at_once_with_its_logs(fake, state):
    fake.pod_states = ["PROVISIONING", state]
    res = run(*pod_args(fake))
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert f"pod pod001abc is {state}" in res.stderr
    assert "CUDA driver too old" in res.stderr  # the reason, from the pod's log
    assert fake.pod_gets == 2 and fake.ping_calls == 0
    logs = [r for r in fake.api() if r.path.endswith("/logs")]
    assert logs and logs[0].query["source"] == ["container"]


def test_pod_that_never_runs_is_bounded(fake):
    fake.pod_states = ["PROVISIONING"]
    res = run(*api_args(fake, "--pod", "--ready-url", fake.url, "--wait", "0.5", "--poll", "0.05"))
    assert res.returncode == 1
    assert "still PROVISIONING when the wait ran out" in res.stderr
    assert 2 <= fake.pod_gets <= 40


def test_ping_wait_is_bounded(fake):
    fake.ping_after = None  # 204 forever: the model never finishes loading
    res = run(*api_args(fake, "--pod", "--ready-url", fake.url, "--wait", "1", "--poll", "0.05"))
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "/ping not ready after" in res.stderr and "pod001abc" in res.stderr
    assert "204 loading" in res.stderr
    assert fake.ping_calls >= 2


def test_custom_port_gpus_and_env(fake):
    res = run(
        *api_args(
            fake, "--pod", "--port", "8080", "--gpu-count", "1", "--gpu-type", "NVIDIA A40", "--wait", "0"
        ),
        "--env",
        "VISIONRAG_DEFAULT_MAX_TOKENS=1024",
        "--cloud",
        "COMMUNITY",
        "--data-center",
        "EU-RO-1",
    )
    ok(res, fake)
    tpl, pod = fake.bodies("POST", "/v2/templates")[0], fake.bodies("POST", "/v2/pods")[0]
    assert tpl["ports"] == ["8080/http"] and tpl["env"]["PORT"] == "8080"
    assert tpl["env"]["VISIONRAG_DEFAULT_MAX_TOKENS"] == "1024"
    assert pod["gpu"] == {"id": "NVIDIA A40", "count": 1}
    assert pod["cloud"] == "COMMUNITY" and pod["dataCenterIds"] == ["EU-RO-1"]
    assert "https://pod001abc-8080.proxy.runpod.net" in res.stdout
    assert fake.pod_gets == 0 and fake.ping_calls == 0  # --wait 0


# ---------------------------------------------------------------- serverless


def test_serverless_creates_a_load_balancing_endpoint(fake):
    res = run(*api_args(fake, "--serverless", "--max-workers", "5", "--qdrant-url", "https://q.example:6333"))
    ok(res, fake)
    assert fake.calls() == [
        ("GET", "/v2/catalog/gpus"),
        ("GET", "/v2/templates"),
        ("POST", "/v2/templates"),
        ("GET", "/v2/serverless"),
        ("POST", "/v2/serverless"),
    ]
    tpl = fake.bodies("POST", "/v2/templates")[0]
    assert tpl["serverless"] is True and tpl["name"] == "visionrag-llama-3.2-vision-serverless"
    assert "mounts" not in tpl  # Serverless workers have no pod volume
    assert tpl["env"]["PORT"] == tpl["env"]["PORT_HEALTH"] == "8000"
    ep = fake.bodies("POST", "/v2/serverless")[0]
    assert ep["type"] == "LOAD_BALANCER" and ep["templateId"] == fake.templates[0]["id"]
    assert ep["gpu"] == {
        "pools": ["ADA_48_PRO", "AMPERE_48"],
        "count": 1,
        "allowedCudaVersions": ["12.8", "12.9", "13.0"],
    }
    assert ep["workers"]["min"] == 0 and ep["workers"]["max"] == 5
    assert ep["scaling"]["type"] == "REQUEST_COUNT"
    assert "https://ep001xyz.api.runpod.ai" in res.stdout and "/ping" in res.stdout
    assert "X-API-Key" in res.stdout


def test_serverless_updates_the_endpoint_of_the_same_name(fake):
    first = run(*api_args(fake, "--serverless"))
    ok(first, fake)
    assert "each Serverless worker keeps its own history" in first.stderr  # no --qdrant-url
    again = run(
        *api_args(
            fake, "--serverless", "--max-workers", "7", "--pool", "ADA_48_PRO", "--allowed-cuda", "12.9"
        )
    )
    ok(again, fake)
    # the CUDA constraint travels in the PATCH itself (templateId only applies container settings)
    assert fake.bodies("PATCH", "/v2/serverless/ep001xyz")[-1]["gpu"]["allowedCudaVersions"] == ["12.9"]
    assert fake.calls()[-2:] == [("GET", "/v2/serverless"), ("PATCH", "/v2/serverless/ep001xyz")]
    assert len(fake.endpoints) == 1 and len(fake.templates) == 1
    assert fake.endpoints[0]["workers"]["max"] == 7
    assert fake.endpoints[0]["gpu"]["pools"] == ["ADA_48_PRO"]
    assert "updated load-balancing endpoint" in again.stdout


def test_serverless_unknown_pool_is_refused_before_anything_is_created(fake):
    res = run(*api_args(fake, "--serverless", "--pool", "ADA_48"))
    assert res.returncode == 1
    assert "--pool ADA_48: not a Serverless GPU pool" in res.stderr and "ADA_48_PRO" in res.stderr
    assert fake.calls() == [("GET", "/v2/catalog/gpus")]


# ---------------------------------------------------------------- secrets


def test_create_secret_sends_the_value_once_and_never_prints_it(fake):
    res = run(*api_args(fake, "--create-secret", "HF_TOKEN"), HF_TOKEN=SECRET_VALUE)
    ok(res, fake)
    assert fake.calls()[0] == ("POST", "/v2/account/secrets")
    assert fake.secrets == {"HF_TOKEN": SECRET_VALUE}
    assert "created secret HF_TOKEN" in res.stdout
    assert SECRET_VALUE not in res.stdout + res.stderr
    tpl = fake.bodies("POST", "/v2/templates")[0]
    assert tpl["env"]["HF_TOKEN"] == "{{ RUNPOD_SECRET_HF_TOKEN }}"
    assert SECRET_VALUE not in json.dumps(tpl)


def test_existing_secret_409_is_fine(fake):
    fake.secrets["HF_TOKEN"] = "old"
    res = run(*api_args(fake, "--create-secret", "HF_TOKEN"), HF_TOKEN=SECRET_VALUE)
    ok(res, fake)
    assert fake.secrets["HF_TOKEN"] == "old"
    assert "exists already" in res.stdout
    assert ("POST", "/v2/templates") in fake.calls()


def test_secret_missing_from_the_shell_stops_before_anything_is_sent(fake):
    res = run(*api_args(fake, "--create-secret", "HF_TOKEN"))
    assert res.returncode == 1 and "$HF_TOKEN is not set" in res.stderr
    assert fake.requests == []


@pytest.mark.parametrize("name", ["RUNPOD_TOKEN", "1abc", "has space"])
def test_invalid_secret_names_are_refused_by_the_parser(fake, name):
    res = run(*api_args(fake, "--create-secret", name))
    assert res.returncode == 2 and "RunPod secret names" in res.stderr
    assert fake.requests == []


# ---------------------------------------------------------------- dry run


def test_dry_run_prints_every_body_and_sends_nothing(fake):
    res = run(
        "--dry-run",
        "--api-url",
        f"{fake.url}/v2",
        "--create-secret",
        "HF_TOKEN",
        key="dummy",
        HF_TOKEN=SECRET_VALUE,
    )
    assert res.returncode == 0, res.stderr
    assert fake.requests == []
    out = res.stdout
    for needle in (
        "visionrag/visionrag:",
        '"8000/http"',
        '"/workspace"',
        "{{ RUNPOD_SECRET_HF_TOKEN }}",
        '"NVIDIA L40S"',
    ):
        assert needle in out, needle
    assert "dummy" not in out and SECRET_VALUE not in out  # neither the key nor a secret is printed
    secret, tpl, pod = dry_run_bodies(out)
    assert secret["name"] == "HF_TOKEN" and "never shown" in secret["value"]
    assert VALIDATOR.errors(SCHEMAS["CreateSecretRequest"], secret) == []
    assert VALIDATOR.errors(SCHEMAS["CreateTemplateRequest"], tpl) == []
    assert VALIDATOR.errors(SCHEMAS["CreatePodRequest"], pod) == []
    assert pod["gpu"] == {"id": "NVIDIA L40S", "count": 2}


def test_dry_run_serverless_bodies_are_valid_v2(fake):
    res = run("--dry-run", "--serverless", "--api-url", f"{fake.url}/v2", key=None)
    assert res.returncode == 0, res.stderr
    assert fake.requests == []
    tpl, ep = dry_run_bodies(res.stdout)
    assert VALIDATOR.errors(SCHEMAS["CreateTemplateRequest"], tpl) == []
    assert VALIDATOR.errors(SCHEMAS["CreateEndpointRequest"], ep) == []
    assert ep["type"] == "LOAD_BALANCER"


def test_dry_run_needs_no_key_and_no_network():
    res = run("--dry-run", key=None, RUNPOD_API_URL="http://127.0.0.1:9/v2")
    assert res.returncode == 0, res.stderr
    assert "http://127.0.0.1:9/v2/templates" in res.stdout


def test_default_api_is_v2():
    res = run("--dry-run", key=None)
    assert "https://api.runpod.io/v2/templates" in res.stdout
    assert "rest.runpod.io" not in res.stdout


# ---------------------------------------------------------------- errors


def test_missing_key_is_a_clear_error(fake):
    res = run(*api_args(fake), key=None)
    assert res.returncode == 1
    assert "RUNPOD_API_KEY" in res.stderr and "Traceback" not in res.stderr
    assert fake.requests == []


def test_wrong_key_prints_the_problem_in_one_line(fake):
    res = run(*api_args(fake), key="wrong-key")
    assert res.returncode == 1
    assert "answered 401: Unauthorized: invalid api key" in res.stderr
    assert "Traceback" not in res.stderr
    assert fake.calls() == [("GET", "/v2/templates")]


def test_validation_problem_names_the_field(fake):
    fake.fail_with = (
        422,
        {
            "title": "Unprocessable Entity",
            "status": 422,
            "detail": "Request validation failed.",
            "errors": ["$.imageName: unknown field"],
        },
    )
    res = run(*api_args(fake))
    assert res.returncode == 1
    line = [x for x in res.stderr.splitlines() if "error:" in x]
    assert len(line) == 1
    assert "422: Unprocessable Entity: Request validation failed. [$.imageName: unknown field]" in line[0]


@pytest.mark.parametrize(
    ("status", "answer", "expected"),
    [
        (
            500,
            {"title": "Internal Server Error", "status": 500, "detail": "try again later"},
            "try again later",
        ),
        (502, "<html>Bad Gateway</html>", "Bad Gateway"),
    ],
)
def test_api_errors_print_the_message_and_exit_1(fake, status, answer, expected):
    fake.fail_with = (status, answer)
    res = run(*api_args(fake, "--pod"))
    assert res.returncode == 1
    assert str(status) in res.stderr and expected in res.stderr
    assert "Traceback" not in res.stderr


def test_env_must_name_a_server_setting(fake):
    res = run(*api_args(fake, "--env", "NOT_A_SETTING=1"))
    assert res.returncode != 0
    assert "NOT_A_SETTING" in res.stderr
    assert fake.requests == []


def test_zero_gpus_is_refused_before_any_request(fake):
    res = run(*api_args(fake, "--pod", "--gpu-count", "0"))
    assert res.returncode != 0
    assert fake.requests == []


def test_pod_and_serverless_are_exclusive(fake):
    res = run(*api_args(fake, "--pod", "--serverless"))
    assert res.returncode == 2 and fake.requests == []


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (
            ["--serverless", "--gpu-type", "NVIDIA A40", "--wait", "5"],
            "--gpu-type, --wait only apply with --pod",
        ),
        (["--pod", "--max-workers", "7"], "--max-workers only applies with --serverless"),
        (["--pool", "ADA_24"], "--pool only applies with --serverless"),
        (["--serverless", "--volume", "200"], "--volume only applies to pods"),
    ],
)
def test_an_option_of_the_other_mode_is_refused_not_ignored(fake, extra, says):
    res = run(*api_args(fake, *extra))
    assert res.returncode == 2 and says in res.stderr and fake.requests == []


def test_unreachable_api_is_a_clear_error():
    res = run("--api-url", "http://127.0.0.1:9/v2", "--timeout", "2")
    assert res.returncode == 1
    assert "cannot reach the RunPod API" in res.stderr and "Traceback" not in res.stderr


def test_help_documents_every_option():
    res = run("--help", key=None)
    assert res.returncode == 0
    for flag in (
        "--image", "--name", "--model", "--pod", "--serverless", "--gpu-type", "--gpu-count", "--wait",
        "--ready-url", "--api-url", "--dry-run", "--qdrant-url", "--api-key-secret", "--env",
        "--create-secret", "--pool", "--max-workers", "RUNPOD_API_KEY",
    ):  # fmt: skip
        assert flag in res.stdout, flag


# ---------------------------------------------------------------- the fake itself


def test_fake_refuses_v1_fields_with_a_422_problem(fake):
    import requests

    r = requests.post(
        f"{fake.url}/v2/templates",
        json={"name": "x", "imageName": "i", "volumeInGb": 10, "isServerless": False},
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=5,
    )
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["title"] == "Unprocessable Entity" and body["status"] == 422
    assert {"$.imageName: unknown field", "$.image: required", "$.isServerless: unknown field"} <= set(
        body["errors"]
    )
    assert fake.templates == []


def test_fixture_names_its_source_and_covers_every_operation():
    assert "runpod/docs" in FIXTURE["$comment"] and "openapi.json" in FIXTURE["$comment"]
    for op, name in FIXTURE["operations"].items():
        assert name in SCHEMAS, op


def dry_run_bodies(out: str) -> list[dict]:
    decoder = json.JSONDecoder()
    bodies, i = [], 0
    while (i := out.find("\n{", i)) != -1:
        obj, end = decoder.raw_decode(out, i + 1)
        bodies.append(obj)
        i = end
    return bodies
