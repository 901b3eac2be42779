#!/usr/bin/env python3
"""Create or update the VisionRAG RunPod template, and optionally start a pod from it.

Uses RunPod's REST API (https://rest.runpod.io/v1) with the key in RUNPOD_API_KEY:

  GET   /v1/templates              find a template with the same name
  POST  /v1/templates              create it, or
  PATCH /v1/templates/{id}         update it in place (same id, same secrets)
  POST  /v1/pods                   with --pod: a pod from the template on 2 x NVIDIA L40S

then prints the public URL https://{podId}-8000.proxy.runpod.net and waits until /health answers 200.
--dry-run prints the request bodies and sends nothing. Standard library + requests only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from rest import DeployError, RunPod, response_id, wait_healthy

REPO = Path(__file__).resolve().parent.parent
DEFAULT_API_URL = "https://rest.runpod.io/v1"
DEFAULT_MODEL = "meta-llama/Llama-3.2-11B-Vision-Instruct"
DEFAULT_TEMPLATE_NAME = "visionrag-llama-3.2-vision"
START_CMD = ["bash", "/app/runpod/start.sh"]
MOUNT_PATH = "/workspace"


def project_version() -> str:
    try:
        import tomllib

        return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    except Exception:
        return "latest"


DEFAULT_IMAGE = f"visionrag/visionrag:{project_version()}"

TEMPLATE_README = """\
# VisionRAG: Llama 3.2 11B Vision on 2 x L40S

A LitServe model server that answers questions about images (architecture blueprints, ER diagrams,
any diagram) and keeps a searchable history of every answer (CLIP + Qdrant).

* One full copy of the model per GPU (`VISIONRAG_PLACEMENT=replicate`), requests batched dynamically.
* The first start downloads the weights (~22 GB) into `/workspace/hf`; later starts reuse the volume.
  `/health` answers 200 once the model and the history store are ready.
* History lives in `/workspace/data` (embedded Qdrant, owned by the single API process), or in
  Qdrant Cloud when `QDRANT_URL` is set.

Secrets: `HF_TOKEN` (gated model, required), `QDRANT_API_KEY` (only with `QDRANT_URL`), optionally a
`VISIONRAG_API_KEY` secret so that the public URL needs `Authorization: Bearer KEY`.

Use it at `https://{POD_ID}-8000.proxy.runpod.net`: the web page at `/`, `POST /predict`,
`POST /v1/chat/completions` (OpenAI), `POST /history/search`. RunPod's proxy cuts a request at
100 s (Cloudflare 524): ask for long answers with `"stream": true`.
"""


def secret_ref(name: str) -> str:
    return "{{ RUNPOD_SECRET_" + name + " }}"


def template_env(args: argparse.Namespace) -> dict[str, str]:
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
    if args.hf_secret:
        env["HF_TOKEN"] = secret_ref(args.hf_secret)
    if args.qdrant_secret:
        env["QDRANT_API_KEY"] = secret_ref(args.qdrant_secret)
    if args.qdrant_url:
        env["QDRANT_URL"] = args.qdrant_url
    if args.api_key_secret:
        env["VISIONRAG_API_KEY"] = secret_ref(args.api_key_secret)
    for item in args.env:
        key, _, value = item.partition("=")
        env[key] = value
    return env


def template_body(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "name": args.name,
        "imageName": args.image,
        "containerDiskInGb": args.container_disk,
        "volumeInGb": args.volume,
        "volumeMountPath": MOUNT_PATH,
        "ports": [f"{args.port}/http"],
        "env": template_env(args),
        "dockerStartCmd": list(START_CMD),
        "readme": TEMPLATE_README,
        "isServerless": False,
    }


def update_body(args: argparse.Namespace) -> dict[str, Any]:
    # PATCH /templates/{id} takes the same fields except isServerless (a template cannot change kind).
    body = template_body(args)
    body.pop("isServerless")
    return body


def pod_body(args: argparse.Namespace, template_id: str) -> dict[str, Any]:
    # templateId brings the template's settings; the container fields are repeated so the pod gets the
    # same disk, volume, ports and env even where the API does not fill them in from the template.
    tpl = template_body(args)
    body: dict[str, Any] = {
        "name": args.pod_name or args.name,
        "templateId": template_id,
        "imageName": tpl["imageName"],
        "gpuTypeIds": [args.gpu_type],
        "gpuCount": args.gpu_count,
        "cloudType": args.cloud_type,
        "containerDiskInGb": tpl["containerDiskInGb"],
        "volumeInGb": tpl["volumeInGb"],
        "volumeMountPath": tpl["volumeMountPath"],
        "ports": tpl["ports"],
        "env": tpl["env"],
    }
    if args.data_center:
        body["dataCenterIds"] = list(args.data_center)
    if args.allowed_cuda:
        body["allowedCudaVersions"] = list(args.allowed_cuda)
    return body


def proxy_url(pod_id: str, port: int) -> str:
    return f"https://{pod_id}-{port}.proxy.runpod.net"


# ---------------------------------------------------------------- steps


def deploy_template(api: RunPod, args: argparse.Namespace) -> str:
    existing = api.find_template(args.name)
    if existing is None:
        created = api.call("POST", "/templates", template_body(args))
        template_id = response_id(created, "template")
        print(f"created template {args.name!r} ({template_id}) with image {args.image}")
        return template_id
    if existing.get("isServerless"):
        raise DeployError(f"a serverless template named {args.name!r} exists; pick another --name")
    template_id = str(existing.get("id") or "")
    if not template_id:
        raise DeployError(f"the template named {args.name!r} has no id in the API's answer")
    api.call("PATCH", f"/templates/{template_id}", update_body(args))
    print(f"updated template {args.name!r} ({template_id}) with image {args.image}")
    return template_id


def create_pod(api: RunPod, args: argparse.Namespace, template_id: str) -> str:
    pod = api.call("POST", "/pods", pod_body(args, template_id))
    pod_id = response_id(pod, "pod")
    cost = pod.get("costPerHr") if isinstance(pod, dict) else None
    price = f", {cost} $/h" if cost else ""
    print(f"created pod {pod_id} on {args.gpu_count} x {args.gpu_type} ({args.cloud_type} cloud{price})")
    print(f"URL: {proxy_url(pod_id, args.port)}")
    print(f"     web page {proxy_url(pod_id, args.port)}/   health {proxy_url(pod_id, args.port)}/health")
    return pod_id


def dry_run(args: argparse.Namespace) -> None:
    api = args.api_url.rstrip("/")
    print(
        "# dry run: nothing is sent. With RUNPOD_API_KEY as 'Authorization: Bearer ***', "
        f"deploy.py would call {api}:"
    )
    print()
    print(f"GET {api}/templates  # look for a template named {args.name!r}")
    print()
    print(
        f"POST {api}/templates  # when none exists; "
        f"otherwise PATCH {api}/templates/{{id}} (same body, no isServerless)"
    )
    print(json.dumps(template_body(args), indent=2))
    print()
    note = "" if args.pod else "  # only with --pod"
    print(f"POST {api}/pods{note}")
    print(json.dumps(pod_body(args, "<id of the template above>"), indent=2))
    print()
    print(f"then: URL {proxy_url('<podId>', args.port)}, wait up to {int(args.wait)} s for /health")


# ---------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="deploy.py",
        description=(
            "Create (or update, when one of the same name exists) the VisionRAG RunPod template through "
            "RunPod's REST API, and with --pod start a pod from it on 2 x NVIDIA L40S, print its proxy URL "
            "and wait for /health. The API key is read from RUNPOD_API_KEY. Create the RunPod secrets "
            "HF_TOKEN (and QDRANT_API_KEY when using Qdrant Cloud) first: the template refers to them as "
            "{{ RUNPOD_SECRET_name }}. Errors print the API's message and exit with status 1."
        ),
        epilog=(
            "environment: RUNPOD_API_KEY (required unless --dry-run), "
            "RUNPOD_API_URL (default for --api-url), "
            "VISIONRAG_IMAGE (default for --image). Example: python runpod/deploy.py --image "
            "docker.io/you/visionrag:0.1.0 --api-key-secret VISIONRAG_API_KEY --pod"
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    t = p.add_argument_group("template")
    t.add_argument(
        "--image",
        default=os.environ.get("VISIONRAG_IMAGE") or DEFAULT_IMAGE,
        help="container image the template runs (build and push it first; see runpod/README.md)",
    )
    t.add_argument("--name", default=DEFAULT_TEMPLATE_NAME, help="template name; an existing one is updated")
    t.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="MODEL_NAME: hub id, or /opt/model for an image built with BAKE_MODEL",
    )
    t.add_argument(
        "--placement",
        choices=("replicate", "shard"),
        default="replicate",
        help="VISIONRAG_PLACEMENT: one model copy per GPU, or one copy sharded over both",
    )
    t.add_argument("--max-batch-size", type=int, default=8, help="VISIONRAG_MAX_BATCH_SIZE")
    t.add_argument("--port", type=int, default=8000, help="PORT the server listens on, exposed as PORT/http")
    t.add_argument(
        "--container-disk", type=int, default=40, help="containerDiskInGb (image layers, temp files)"
    )
    t.add_argument(
        "--volume",
        type=int,
        default=80,
        help="volumeInGb of the pod volume at /workspace (weights ~22 GB, CLIP, history)",
    )
    t.add_argument(
        "--hf-secret",
        default="HF_TOKEN",
        help="RunPod secret holding the Hugging Face token, passed as HF_TOKEN ('' to leave out)",
    )
    t.add_argument(
        "--qdrant-secret",
        default="QDRANT_API_KEY",
        help="RunPod secret holding the Qdrant API key, passed as QDRANT_API_KEY ('' to leave out); "
        "unused unless --qdrant-url is given",
    )
    t.add_argument(
        "--qdrant-url",
        default=None,
        help="QDRANT_URL of a Qdrant server / Qdrant Cloud; without it history uses the embedded "
        "store on the volume",
    )
    t.add_argument(
        "--api-key-secret",
        default=None,
        metavar="SECRET",
        help="RunPod secret passed as VISIONRAG_API_KEY, so every route but /health needs it "
        "(recommended: the proxy URL is public)",
    )
    t.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra server setting for the template env (repeatable), e.g. "
        "VISIONRAG_DEFAULT_MAX_TOKENS=1024; KEY must be a setting from server/settings.py",
    )
    d = p.add_argument_group("pod")
    d.add_argument(
        "--pod", action="store_true", help="after the template, create a pod from it and wait for /health"
    )
    d.add_argument("--pod-name", default=None, help="pod name (default: the template name)")
    d.add_argument("--gpu-type", default="NVIDIA L40S", help="gpuTypeIds entry")
    d.add_argument("--gpu-count", type=int, default=2, help="gpuCount")
    d.add_argument("--cloud-type", choices=("SECURE", "COMMUNITY"), default="SECURE", help="cloudType")
    d.add_argument(
        "--data-center",
        action="append",
        default=[],
        metavar="ID",
        help="dataCenterIds entry (repeatable), e.g. EU-RO-1; default: anywhere with stock",
    )
    d.add_argument(
        "--allowed-cuda",
        action="append",
        default=[],
        metavar="VERSION",
        help="allowedCudaVersions entry (repeatable), e.g. 12.8; hosts whose driver supports it",
    )
    d.add_argument(
        "--wait",
        type=float,
        default=1800,
        help="seconds to wait for /health after creating the pod (0: don't)",
    )
    d.add_argument("--poll", type=float, default=10, help="seconds between /health checks")
    d.add_argument(
        "--health-url",
        default=None,
        help="base URL to poll for /health instead of https://{podId}-PORT.proxy.runpod.net",
    )
    a = p.add_argument_group("API")
    a.add_argument(
        "--api-url",
        default=os.environ.get("RUNPOD_API_URL") or DEFAULT_API_URL,
        help="RunPod REST API base URL",
    )
    a.add_argument("--timeout", type=float, default=30, help="seconds per API request")
    a.add_argument("--dry-run", action="store_true", help="print the request bodies and send nothing")
    args = p.parse_args(argv)

    for item in args.env:
        if "=" not in item or not item.partition("=")[0]:
            p.error(f"--env wants KEY=VALUE, not {item!r}")
    unknown = unknown_settings([item.partition("=")[0] for item in args.env])
    if unknown:
        p.error(f"--env: not a server setting: {', '.join(unknown)} (see server/settings.py)")
    if args.gpu_count < 1 or args.volume < 1 or args.container_disk < 1:
        p.error("--gpu-count, --volume and --container-disk must be at least 1")
    if not 1024 <= args.port <= 65535:
        p.error("--port must be between 1024 and 65535")
    return args


def unknown_settings(names: list[str]) -> list[str]:
    """Names that are not environment variables of server.settings.Settings (unchecked if it won't import)."""
    if not names:
        return []
    sys.path.insert(0, str(REPO))
    try:
        from dataclasses import fields

        from visionrag.server.settings import Settings
    except Exception:
        return []
    finally:
        sys.path.remove(str(REPO))
    known = {env for f in fields(Settings) for env in f.metadata.get("env", ())}
    return [n for n in names if n not in known]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        dry_run(args)
        return 0
    key = os.environ.get("RUNPOD_API_KEY", "").strip()
    try:
        if not key:
            raise DeployError(
                "RUNPOD_API_KEY is not set: create an API key in the RunPod console (Settings > API Keys) "
                "and export RUNPOD_API_KEY=..."
            )
        if not args.api_key_secret and "VISIONRAG_API_KEY" not in {e.partition("=")[0] for e in args.env}:
            print(
                "note: no --api-key-secret: the server will answer anyone who knows its URL", file=sys.stderr
            )
        api = RunPod(args.api_url, key, args.timeout)
        template_id = deploy_template(api, args)
        if not args.pod:
            print("template ready; start a pod from it in the console, or run again with --pod")
            return 0
        pod_id = create_pod(api, args, template_id)
        if args.wait > 0:
            wait_healthy(args.health_url or proxy_url(pod_id, args.port), args.wait, args.poll, pod_id)
        return 0
    except DeployError as exc:
        print(f"deploy.py: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("deploy.py: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
