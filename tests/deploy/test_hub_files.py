"""The RunPod Hub listing (.runpod/hub.json, .runpod/tests.json), checked against the fields RunPod's Hub
publishing guide documents (docs.runpod.io/hub/publishing-guide; runpod/docs hub/publishing-guide.mdx) and
against what deploy.py and the server actually use, so the listing cannot drift from the code."""

from __future__ import annotations

import base64
import io
import json
import re
import sys
from dataclasses import fields
from pathlib import Path

from PIL import Image

from visionrag.server.inputs import PredictBody
from visionrag.server.settings import Settings

REPO = Path(__file__).resolve().parents[2]
HUB = json.loads((REPO / ".runpod" / "hub.json").read_text())
TESTS = json.loads((REPO / ".runpod" / "tests.json").read_text())

# The publishing guide's tables: field -> required?
HUB_TOP = {
    "title": True,
    "description": True,
    "type": True,
    "category": True,
    "iconUrl": False,
    "config": True,
}
HUB_CONFIG = {
    "runsOn": True,
    "endpointType": False,
    "containerDiskInGb": True,
    "cpuFlavor": False,
    "gpuCount": False,  # required when runsOn is GPU
    "gpuIds": False,  # required when runsOn is GPU
    "allowedCudaVersions": False,
    "env": False,
    "presets": False,
}
INPUT_TYPES = {"string", "number", "boolean", "huggingface"}
INPUT_FIELDS = {
    "name",
    "type",
    "description",
    "default",
    "advanced",
    "options",
    "min",
    "max",
    "trueValue",
    "falseValue",
}
TEST_CASE = {"name": True, "input": True, "timeout": False}
TEST_CONFIG = {
    "gpuTypeId": False,
    "gpuCount": False,
    "cpuFlavor": False,
    "env": False,
    "allowedCudaVersions": False,
}
RUNPOD_ENV = {"PORT_HEALTH"}  # read by RunPod's load balancer, not by our Settings


def deploy_module(name: str):
    sys.path.insert(0, str(REPO / "runpod"))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(REPO / "runpod"))


def check_fields(obj: dict, spec: dict[str, bool], where: str) -> None:
    assert isinstance(obj, dict), where
    assert not set(obj) - set(spec), f"{where}: undocumented fields {set(obj) - set(spec)}"
    missing = [k for k, required in spec.items() if required and k not in obj]
    assert not missing, f"{where}: missing {missing}"


def settings_env() -> set[str]:
    return {name for f in fields(Settings) for name in f.metadata["env"]}


def test_hub_json_has_the_documented_fields_and_values():
    check_fields(HUB, HUB_TOP, "hub.json")
    assert HUB["type"] == "serverless"
    assert HUB["category"] == "language"
    assert HUB["title"].strip() and len(HUB["description"]) > 40
    config = HUB["config"]
    check_fields(config, HUB_CONFIG, "hub.json config")
    assert config["runsOn"] == "GPU" and "gpuCount" in config and "gpuIds" in config
    assert config["endpointType"] == "LB"
    assert (
        isinstance(config["containerDiskInGb"], int) and config["containerDiskInGb"] >= 60
    )  # image + ~22 GB
    assert isinstance(config["gpuCount"], int) and config["gpuCount"] >= 1


def test_hub_gpus_and_cuda_match_deploy_and_the_image():
    bodies = deploy_module("bodies")
    options = deploy_module("options")
    config = HUB["config"]
    pools = [p.strip() for p in config["gpuIds"].split(",")]
    assert pools == options.DEFAULT_POOLS  # the 48 GB pools, as deploy.py --serverless uses
    assert config["allowedCudaVersions"] == bodies.CUDA_VERSIONS
    assert TESTS["config"]["allowedCudaVersions"] == bodies.CUDA_VERSIONS
    # the image's CUDA is the lowest version allowed
    base = re.search(r"^FROM \S+cuda(\d+\.\d+)", (REPO / "Dockerfile").read_text(), re.M)
    assert base and base[1] == bodies.IMAGE_CUDA == min(
        bodies.CUDA_VERSIONS, key=lambda v: tuple(map(int, v.split(".")))
    )


def test_hub_env_entries_are_well_formed_and_real_settings():
    entries = HUB["config"]["env"]
    keys = [e["key"] for e in entries]
    assert len(keys) == len(set(keys))
    for key in (
        "MODEL_NAME",
        "HF_TOKEN",
        "QDRANT_URL",
        "QDRANT_API_KEY",
        "VISIONRAG_API_KEY",
        "PORT",
        "PORT_HEALTH",
    ):
        assert key in keys, key
    assert not set(keys) - settings_env() - RUNPOD_ENV, "hub.json sets a variable nothing reads"
    for e in entries:
        assert set(e) in ({"key", "value"}, {"key", "input"}), e
        if "value" in e:
            assert isinstance(e["value"], str)
            continue
        inp = e["input"]
        assert not set(inp) - INPUT_FIELDS, inp
        assert inp["type"] in INPUT_TYPES and inp["name"].strip(), inp
        if inp["type"] == "number":
            assert inp["min"] <= inp["default"] <= inp["max"]
    by_key = {e["key"]: e for e in entries}
    assert by_key["MODEL_NAME"]["input"]["type"] == "huggingface"
    assert by_key["PORT"]["value"] == by_key["PORT_HEALTH"]["value"] == "8000"  # /ping is on the same port
    for secret in ("HF_TOKEN", "QDRANT_API_KEY", "VISIONRAG_API_KEY"):
        assert by_key[secret]["input"]["default"] == "", "no secret value ships in the listing"


def test_tests_json_has_the_documented_fields():
    check_fields(TESTS, {"tests": True, "config": True}, "tests.json")
    assert TESTS["tests"]
    for case in TESTS["tests"]:
        check_fields(case, TEST_CASE, "tests.json test")
        assert isinstance(case["input"], dict)
        assert isinstance(case.get("timeout", 0), int)
    config = TESTS["config"]
    check_fields(config, TEST_CONFIG, "tests.json config")
    assert config["gpuTypeId"] == "NVIDIA L40S" and config["gpuCount"] == 1
    for e in config["env"]:
        assert set(e) == {"key", "value"} and isinstance(e["value"], str)
        assert e["key"] in settings_env() | RUNPOD_ENV


def test_tests_json_input_is_a_valid_predict_request():
    for case in TESTS["tests"]:
        body = PredictBody.model_validate(case["input"])
        assert body.image_url and body.image_url.startswith("data:image/png;base64,")
        Image.open(io.BytesIO(base64.b64decode(body.image_url.split(",", 1)[1]))).verify()
        assert body.store is False  # a Hub build test leaves no history behind
