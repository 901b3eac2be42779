"""The fixture the fake validates against stays true to RunPod's OpenAPI file, and the small validator agrees
with a full JSON Schema implementation where one is installed."""

from __future__ import annotations

import json

import pytest

from tests.deploy.schema_check import Validator
from tests.deploy.schema_fixture import REFERENCE, build, load

FIXTURE = load()
SCHEMAS = FIXTURE["components"]["schemas"]

SAMPLES = {
    "CreateTemplateRequest": [
        {
            "name": "t",
            "image": "i:1",
            "disk": 40,
            "mounts": {"persistent": {"size": 80, "path": "/workspace"}},
        },
        {"name": "t", "image": "i:1", "imageName": "i:1"},  # a v1 field
        {"name": "t"},  # no image
        {"name": "t", "image": "i", "mounts": {"persistent": {"size": 5, "path": "/w"}}},  # below the minimum
        {"name": "t", "image": "i", "allowedCudaVersions": ["12"]},  # pattern
        {"name": "t", "image": "i", "env": {"A": 1}},
    ],
    "CreatePodRequest": [
        {"name": "p", "templateId": "t", "gpu": {"id": "NVIDIA L40S", "count": 2}, "cloud": "SECURE"},
        {"name": "p", "templateId": "t", "gpuTypeIds": ["NVIDIA L40S"], "gpuCount": 2},  # v1 names
        {"name": "p", "gpu": {"id": "x"}},  # image needed without a template
        {"name": "p", "templateId": "t", "gpu": {"id": "x", "count": 0}},
        {"name": "p", "templateId": "t", "cloud": "ALL"},
    ],
    "CreateEndpointRequest": [
        {
            "name": "e",
            "type": "LOAD_BALANCER",
            "templateId": "t",
            "gpu": {"pools": ["ADA_48_PRO"], "count": 1},
            "workers": {"min": 0, "max": 3, "idleTimeout": 300},
            "scaling": {"type": "REQUEST_COUNT", "requestCount": 4},
        },
        {
            "name": "e",
            "type": "LOAD_BALANCER",
            "templateId": "t",
            "scaling": {"type": "QUEUE_DELAY", "queueDelay": 4},
        },
        {
            "name": "e",
            "type": "QUEUE",
            "templateId": "t",
            "scaling": {"type": "QUEUE_DELAY", "queueDelay": 4},
        },
        {
            "name": "e",
            "type": "LB",
            "templateId": "t",
            "scaling": {"type": "REQUEST_COUNT", "requestCount": 1},
        },
        {
            "name": "e",
            "type": "QUEUE",
            "templateId": "t",
            "scaling": {"type": "QUEUE_DELAY", "queueDelay": 4},
            "x": 1,
        },
    ],
    "UpdateEndpointRequest": [
        {"workers": {"max": 2}},
        {"gpu": {"excludedTypes": ["NVIDIA L40"]}},
        {"type": "QUEUE"},
    ],
    "CreateSecretRequest": [{"name": "HF_TOKEN", "value": "v"}, {"name": "1x", "value": "v"}, {"name": "a"}],
}


@pytest.mark.skipif(
    not REFERENCE.exists(), reason=f"{REFERENCE} is not here (it is in CI, beside the checkout)"
)
def test_fixture_matches_the_reference_openapi_file():
    assert build(json.loads(REFERENCE.read_text())) == FIXTURE, "run: python -m tests.deploy.schema_fixture"


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_validator_agrees_with_a_full_implementation(name):
    jsonschema_rs = pytest.importorskip("jsonschema_rs")
    mine = Validator(FIXTURE)
    schema = {**SCHEMAS[name], "components": FIXTURE["components"]}
    full = jsonschema_rs.Draft202012Validator(schema)
    verdicts = []
    for body in SAMPLES[name]:
        verdicts.append(not mine.errors(SCHEMAS[name], body))
        assert verdicts[-1] == full.is_valid(body), body
    assert True in verdicts and False in verdicts  # each schema is tried both ways
