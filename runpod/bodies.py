"""The request bodies deploy.py sends to RunPod's REST API v2, built from its command line. v2 rejects unknown
fields (`unevaluatedProperties: false`), so these carry v2 names only; tests validate each one against the
schemas of RunPod's OpenAPI file."""

from __future__ import annotations

import argparse
from typing import Any

MOUNT_PATH = "/workspace"
# The Dockerfile's base image is built for CUDA 12.8: a host's driver must offer 12.8 or newer.
IMAGE_CUDA = "12.8"
CUDA_VERSIONS = ["12.8", "12.9", "13.0"]


def secret_ref(name: str) -> str:
    """How a template refers to a RunPod secret; RunPod puts the value in at boot, so it is never sent."""
    return "{{ RUNPOD_SECRET_" + name + " }}"


def template_env(args: argparse.Namespace, *, serverless: bool) -> dict[str, str]:
    """The container environment: the server's settings (see server/settings.py) and secret references."""
    env = {
        "MODEL_NAME": args.model,
        "VISIONRAG_DATA_DIR": f"{MOUNT_PATH}/data",
        "VISIONRAG_DEVICES": "auto",
        "VISIONRAG_PLACEMENT": args.placement,
        "VISIONRAG_MAX_BATCH_SIZE": str(args.max_batch_size),
        "HOST": "0.0.0.0",
        "PORT": str(args.port),
    }
    if serverless:
        # A load-balancing endpoint sends traffic to PORT and probes PORT_HEALTH at /ping (204 loading, 200
        # ready): one server answers both.
        env["PORT_HEALTH"] = str(args.port)
    if args.hf_secret:
        env["HF_TOKEN"] = secret_ref(args.hf_secret)
    if args.qdrant_url:
        env["QDRANT_URL"] = args.qdrant_url
        if args.qdrant_secret:
            env["QDRANT_API_KEY"] = secret_ref(args.qdrant_secret)
    if args.api_key_secret:
        env["VISIONRAG_API_KEY"] = secret_ref(args.api_key_secret)
    for item in args.env:
        key, _, value = item.partition("=")
        env[key] = value
    return env


def template_body(args: argparse.Namespace, serverless: bool) -> dict[str, Any]:
    """POST /templates. No `args`: the image's CMD (runpod/start.sh) starts the server. No SSH or Jupyter:
    the image starts neither, and Jupyter's injected password would only be noise. Pods get a volume at
    /workspace; Serverless workers have none, so the weights go to a bigger container disk."""
    body: dict[str, Any] = {
        "name": serverless_template_name(args) if serverless else args.name,
        "image": args.image,
        "disk": args.container_disk or (80 if serverless else 40),
        "ports": [f"{args.port}/http"],
        "env": template_env(args, serverless=serverless),
        "category": "NVIDIA",
        "allowedCudaVersions": list(args.allowed_cuda or CUDA_VERSIONS),
        "startSsh": False,
        "startJupyter": False,
        "serverless": serverless,
    }
    if not serverless:
        body["mounts"] = {"persistent": {"size": args.volume, "path": MOUNT_PATH}}
    return body


def serverless_template_name(args: argparse.Namespace) -> str:
    return f"{args.name}-serverless"


def update_body(create_body: dict[str, Any]) -> dict[str, Any]:
    """PATCH /templates/{id}: the same fields but `serverless` (a template does not change kind)."""
    return {k: v for k, v in create_body.items() if k != "serverless"}


def pod_body(args: argparse.Namespace, template_id: str, gpu_id: str) -> dict[str, Any]:
    """POST /pods: the template brings image, disk, volume, ports, env and the CUDA constraint."""
    body: dict[str, Any] = {
        "name": args.pod_name or args.name,
        "templateId": template_id,
        "gpu": {"id": gpu_id, "count": args.gpu_count or 2},
        "cloud": args.cloud,
    }
    if args.data_center:
        body["dataCenterIds"] = list(args.data_center)
    return body


def endpoint_body(args: argparse.Namespace, template_id: str) -> dict[str, Any]:
    """POST /serverless: a load-balancing endpoint whose workers scale with the requests in flight."""
    body: dict[str, Any] = {
        "name": args.endpoint_name or args.name,
        "type": "LOAD_BALANCER",
        **endpoint_update_body(args, template_id),
    }
    return body


def endpoint_update_body(args: argparse.Namespace, template_id: str) -> dict[str, Any]:
    """PATCH /serverless/{id}: everything deploy.py sets but the name and the type."""
    body: dict[str, Any] = {
        "templateId": template_id,
        # the CUDA constraint on the endpoint itself: a PATCH with templateId does not carry it over
        "gpu": {
            "pools": list(args.pool),
            "count": args.gpu_count or 1,
            "allowedCudaVersions": list(args.allowed_cuda or CUDA_VERSIONS),
        },
        "workers": {"min": args.min_workers, "max": args.max_workers, "idleTimeout": args.idle_timeout},
        "scaling": {"type": "REQUEST_COUNT", "requestCount": args.requests_per_worker},
        "flashboot": args.flashboot,
    }
    if args.data_center:
        body["dataCenterIds"] = list(args.data_center)
    return body


def secret_body(name: str, value: str) -> dict[str, str]:
    """POST /account/secrets. Only ever sent, never printed: dry runs show `secret_placeholder` instead."""
    return {"name": name, "value": value}


def secret_placeholder(name: str) -> dict[str, str]:
    return {"name": name, "value": f"<the value of ${name} in this shell, never shown>"}
