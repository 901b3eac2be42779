#!/usr/bin/env python3
"""Deploy VisionRAG on RunPod through its REST API v2 (https://api.runpod.io/v2, key in RUNPOD_API_KEY).

  default        create or update the pod template by name   GET/POST /templates, PATCH /templates/{id}
  --pod          ... then start a pod on 2 x NVIDIA L40S     GET /catalog/gpus, POST /pods, GET /pods/{id}
                 and wait for https://{podId}-8000.proxy.runpod.net/ping to answer 200
  --serverless   a load-balancing Serverless endpoint        GET/POST/PATCH /templates, /serverless
  --create-secret NAME   create a missing RunPod secret from $NAME   POST /account/secrets

--dry-run prints every request body and sends nothing. Standard library + requests only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from bodies import (
    endpoint_body,
    endpoint_update_body,
    pod_body,
    pod_template_body,
    secret_body,
    secret_placeholder,
    serverless_template_body,
    update_body,
)
from rest import API_URL, ApiError, DeployError, RunPod, response_id
from waits import wait_pod_running, wait_ready

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = "meta-llama/Llama-3.2-11B-Vision-Instruct"
DEFAULT_TEMPLATE_NAME = "visionrag-llama-3.2-vision"
DEFAULT_GPU = "NVIDIA L40S"
# Serverless GPU pools of 48 GB cards: L40S / L40 / RTX 6000 Ada, and A6000 / A40.
DEFAULT_POOLS = ["ADA_48_PRO", "AMPERE_48"]
# RunPod secret names (docs.runpod.io/api-reference-v2/account/create-a-secret)
SECRET_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_.\-/]{0,190}$")


def project_version() -> str:
    try:
        import tomllib

        return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    except Exception:
        return "latest"


def proxy_url(pod_id: str, port: int) -> str:
    return f"https://{pod_id}-{port}.proxy.runpod.net"


def endpoint_url(endpoint_id: str) -> str:
    return f"https://{endpoint_id}.api.runpod.ai"


# ---------------------------------------------------------------- steps


def create_secrets(api: RunPod, names: list[str]) -> None:
    """Create each secret from the local environment; one that exists already (409) is left as it is."""
    for name in names:
        value = os.environ.get(name, "")
        if not value:
            raise DeployError(f"--create-secret {name}: ${name} is not set in this shell; export it first")
        try:
            api.call("POST", "/account/secrets", secret_body(name, value))
            print(f"created secret {name}")
        except ApiError as exc:
            if exc.status != 409:
                raise
            print(f"secret {name} exists already; left as it is")


def upsert_template(api: RunPod, body: dict[str, Any]) -> str:
    """Create the template, or update the one of the same name in place (same id, same secrets)."""
    name, serverless = body["name"], body["serverless"]
    existing = api.find_by_name("/templates", "templates", name)
    if existing is None:
        template_id = response_id(api.call("POST", "/templates", body), "template")
        print(f"created template {name!r} ({template_id}) with image {body['image']}")
        return template_id
    if bool(existing.get("serverless")) != serverless:
        kind = "a Serverless" if existing.get("serverless") else "a pod"
        raise DeployError(f"{kind} template named {name!r} exists; pick another --name")
    template_id = response_id(existing, "template")
    api.call("PATCH", f"/templates/{template_id}", update_body(body))
    print(f"updated template {name!r} ({template_id}) with image {body['image']}")
    return template_id


def pod_candidates(api: RunPod, args: argparse.Namespace) -> list[str]:
    """The --gpu-type entries the catalog says can be had now for this count and cloud, in the order given."""
    catalog = api.call(
        "GET",
        "/catalog/gpus",
        params={
            "include": "AVAILABILITY",
            "product": "POD",
            "count": args.gpu_count or 2,
            "cloud": args.cloud,
        },
    )
    levels = {g.get("id"): g.get("availability", "NONE") for g in (catalog or {}).get("gpus", [])}
    out = []
    for gpu in args.gpu_type:
        if gpu not in levels:
            big = sorted(i for i, g in _by_id(catalog).items() if int(g.get("memory") or 0) >= 48)
            print(
                f"{gpu}: not a GPU type id in RunPod's catalog (48 GB and up: {', '.join(big)})",
                file=sys.stderr,
            )
        elif levels[gpu] == "NONE":
            print(f"{gpu}: no {args.cloud.lower()} stock for {args.gpu_count or 2} GPUs now", file=sys.stderr)
        else:
            out.append(gpu)
    if not out:
        raise DeployError(
            f"none of the GPU types {args.gpu_type} can be had now ({args.cloud} cloud, "
            f"{args.gpu_count or 2} per pod): try later, another --cloud, or add --gpu-type NVIDIA A40 etc."
        )
    return out


def _by_id(catalog: Any) -> dict[str, dict[str, Any]]:
    return {g["id"]: g for g in (catalog or {}).get("gpus", []) if isinstance(g, dict) and "id" in g}


def create_pod(api: RunPod, args: argparse.Namespace, template_id: str) -> str:
    """POST /pods on the first candidate GPU type that can be placed: v2 never falls back by itself."""
    tried = []
    for gpu in pod_candidates(api, args):
        try:
            pod = api.call("POST", "/pods", pod_body(args, template_id, gpu))
        except ApiError as exc:
            if exc.status not in (400, 403):  # 422: our body is wrong; 402: no balance; 5xx: RunPod
                raise
            print(f"{gpu}: {exc}; trying the next --gpu-type", file=sys.stderr)
            tried.append(f"{gpu}: {exc}")
            continue
        pod_id = response_id(pod, "pod")
        cost = pod.get("cost") if isinstance(pod, dict) else None
        price = f", {cost} $/h" if cost else ""
        print(f"created pod {pod_id} on {args.gpu_count or 2} x {gpu} ({args.cloud} cloud{price})")
        print(f"URL: {proxy_url(pod_id, args.port)}   readiness: {proxy_url(pod_id, args.port)}/ping")
        return pod_id
    raise DeployError("no pod could be placed: " + " | ".join(tried))


def deploy_serverless(api: RunPod, args: argparse.Namespace) -> str:
    catalog = _by_id(api.call("GET", "/catalog/gpus"))
    pools = {g.get("pool") for g in catalog.values() if g.get("pool")}
    unknown = [p for p in args.pool if p not in pools]
    if unknown:
        big = sorted(
            {str(g["pool"]) for g in catalog.values() if g.get("pool") and int(g.get("memory") or 0) >= 48}
        )
        raise DeployError(
            f"--pool {', '.join(unknown)}: not a Serverless GPU pool (48 GB and up: {', '.join(big)})"
        )
    template_id = upsert_template(api, serverless_template_body(args))
    name = args.endpoint_name or args.name
    existing = api.find_by_name("/serverless", "endpoints", name)
    if existing is None:
        endpoint_id = response_id(
            api.call("POST", "/serverless", endpoint_body(args, template_id)), "endpoint"
        )
        print(f"created load-balancing endpoint {name!r} ({endpoint_id})")
    else:
        if existing.get("type") not in (None, "LOAD_BALANCER"):
            raise DeployError(f"a queue-based endpoint named {name!r} exists; pick another --endpoint-name")
        endpoint_id = response_id(existing, "endpoint")
        api.call("PATCH", f"/serverless/{endpoint_id}", endpoint_update_body(args, template_id))
        print(f"updated load-balancing endpoint {name!r} ({endpoint_id})")
    base = endpoint_url(endpoint_id)
    print(f"URL: {base}   health: {base}/ping   workers {args.min_workers}..{args.max_workers}")
    print(
        "requests to it need 'Authorization: Bearer $RUNPOD_API_KEY'; send the server's own key as "
        "'X-API-Key'. The first request starts a worker (cold start: minutes)."
    )
    return endpoint_id


def dry_run(args: argparse.Namespace) -> None:
    api = args.api_url.rstrip("/")

    def show(line: str, body: dict[str, Any] | None = None) -> None:
        print(line)
        if body is not None:
            print(json.dumps(body, indent=2))
        print()

    print(
        f"# dry run: nothing is sent. With RUNPOD_API_KEY as 'Authorization: Bearer ***', deploy.py would call {api}:"
    )
    print()
    for name in args.create_secret:
        show(f"POST {api}/account/secrets  # a 409 (exists) is fine", secret_placeholder(name))
    if args.serverless:
        tpl = serverless_template_body(args)
        show(f"GET {api}/catalog/gpus  # are the --pool ids Serverless pools?")
        show(f"GET {api}/templates  # look for a template named {tpl['name']!r}")
        show(
            f"POST {api}/templates  # when none exists; otherwise PATCH {api}/templates/{{id}} without 'serverless'",
            tpl,
        )
        show(f"GET {api}/serverless  # look for an endpoint named {args.endpoint_name or args.name!r}")
        show(
            f"POST {api}/serverless  # when none exists; otherwise PATCH {api}/serverless/{{id}} without name and type",
            endpoint_body(args, "<id of the template above>"),
        )
        print(f"then: URL {endpoint_url('<endpointId>')}, health /ping")
        return
    show(f"GET {api}/templates  # look for a template named {args.name!r}")
    show(
        f"POST {api}/templates  # when none exists; otherwise PATCH {api}/templates/{{id}} without 'serverless'",
        pod_template_body(args),
    )
    note = "" if args.pod else "  # only with --pod"
    show(
        f"GET {api}/catalog/gpus?include=AVAILABILITY&product=POD&count={args.gpu_count or 2}&cloud={args.cloud}{note}"
    )
    show(
        f"POST {api}/pods{note}  # first --gpu-type in stock; on 400 (no capacity) the next: {', '.join(args.gpu_type)}",
        pod_body(args, "<id of the template above>", args.gpu_type[0]),
    )
    print(
        f"then: GET {api}/pods/<podId> until RUNNING, URL {proxy_url('<podId>', args.port)}, "
        f"wait up to {int(args.wait)} s for /ping to answer 200"
    )


# ---------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="deploy.py",
        description=(
            "Deploy VisionRAG on RunPod through its REST API v2. By default: create (or update, when one of "
            "the same name exists) the pod template. --pod: also start a pod on 2 x NVIDIA L40S (the next "
            "--gpu-type when one has no capacity), print its proxy URL and wait for /ping. --serverless: a "
            "load-balancing Serverless endpoint instead (many workers, one URL). The API key is read from "
            "RUNPOD_API_KEY. The template refers to RunPod secrets as {{ RUNPOD_SECRET_name }}; "
            "--create-secret creates a missing one from this shell's environment (its value is never "
            "printed). Errors print the API's message and exit with status 1."
        ),
        epilog=(
            "environment: RUNPOD_API_KEY (required unless --dry-run), RUNPOD_API_URL (default for --api-url), "
            "VISIONRAG_IMAGE (default for --image). Example: HF_TOKEN=hf_... python runpod/deploy.py --image "
            "docker.io/you/visionrag:0.1.0 --create-secret HF_TOKEN --api-key-secret VISIONRAG_API_KEY --pod"
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    t = p.add_argument_group("template (pods and Serverless workers)")
    t.add_argument(
        "--image",
        default=os.environ.get("VISIONRAG_IMAGE") or f"visionrag/visionrag:{project_version()}",
        help="container image (build and push it first; see runpod/README.md)",
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
        help="VISIONRAG_PLACEMENT: one model copy per GPU, or one copy sharded over all",
    )
    t.add_argument("--max-batch-size", type=int, default=8, help="VISIONRAG_MAX_BATCH_SIZE")
    t.add_argument("--port", type=int, default=8000, help="PORT the server listens on, exposed as PORT/http")
    t.add_argument(
        "--container-disk",
        type=int,
        default=None,
        help="disk in GB (default 40 for pods, whose weights live on the volume; 80 for Serverless workers)",
    )
    t.add_argument("--volume", type=int, default=80, help="pods: GB of the persistent volume at /workspace")
    t.add_argument(
        "--allowed-cuda",
        action="append",
        default=[],
        metavar="VERSION",
        help="allowedCudaVersions entry (repeatable); default: 12.8 and newer, as the image needs",
    )
    t.add_argument(
        "--hf-secret", default="HF_TOKEN", help="RunPod secret passed as HF_TOKEN ('' to leave out)"
    )
    t.add_argument(
        "--qdrant-url",
        default=None,
        help="QDRANT_URL of a Qdrant server / Qdrant Cloud; without it history uses the embedded store",
    )
    t.add_argument(
        "--qdrant-secret",
        default="QDRANT_API_KEY",
        help="RunPod secret passed as QDRANT_API_KEY with --qdrant-url ('' to leave out)",
    )
    t.add_argument(
        "--api-key-secret",
        default=None,
        metavar="SECRET",
        help="RunPod secret passed as VISIONRAG_API_KEY, so every route but /health and /ping needs it "
        "(recommended: the URLs are public)",
    )
    t.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra server setting (repeatable), e.g. VISIONRAG_DEFAULT_MAX_TOKENS=1024; KEY must be a "
        "setting from server/settings.py",
    )
    t.add_argument(
        "--create-secret",
        action="append",
        default=[],
        metavar="NAME",
        help="create the RunPod secret NAME from $NAME in this shell unless it exists (repeatable)",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--pod", action="store_true", help="after the template, start a pod and wait for /ping")
    mode.add_argument(
        "--serverless", action="store_true", help="create or update a load-balancing Serverless endpoint"
    )
    d = p.add_argument_group("pod")
    d.add_argument("--pod-name", default=None, help="pod name (default: the template name)")
    d.add_argument(
        "--gpu-type",
        action="append",
        default=None,
        metavar="ID",
        help=f"GPU type id, repeatable, tried in order (default: {DEFAULT_GPU}); e.g. --gpu-type "
        "'NVIDIA L40S' --gpu-type 'NVIDIA L40'",
    )
    d.add_argument(
        "--gpu-count",
        type=int,
        default=None,
        help="GPUs per pod (default 2) or per Serverless worker (default 1)",
    )
    d.add_argument(
        "--cloud", "--cloud-type", choices=("SECURE", "COMMUNITY"), default="SECURE", help="cloud tier"
    )
    d.add_argument(
        "--data-center", action="append", default=[], metavar="ID", help="dataCenterIds entry (repeatable)"
    )
    d.add_argument(
        "--wait", type=float, default=1800, help="seconds to wait for RUNNING and /ping (0: don't wait)"
    )
    d.add_argument("--poll", type=float, default=10, help="seconds between checks")
    d.add_argument(
        "--ready-url",
        "--health-url",
        default=None,
        help="base URL to poll for /ping instead of https://{podId}-PORT.proxy.runpod.net",
    )
    s = p.add_argument_group("Serverless (load-balancing endpoint)")
    s.add_argument("--endpoint-name", default=None, help="endpoint name (default: the template name)")
    s.add_argument(
        "--pool",
        action="append",
        default=None,
        metavar="POOL",
        help=f"Serverless GPU pool, repeatable (default: {' '.join(DEFAULT_POOLS)}: the 48 GB cards)",
    )
    s.add_argument("--min-workers", type=int, default=0, help="workers kept running (0: scale to zero)")
    s.add_argument("--max-workers", type=int, default=3, help="most workers at once")
    s.add_argument("--idle-timeout", type=int, default=300, help="seconds an idle worker stays up (1..3600)")
    s.add_argument(
        "--requests-per-worker", type=int, default=4, help="REQUEST_COUNT scaling: requests per worker"
    )
    s.add_argument(
        "--flashboot",
        choices=("OFF", "FLASHBOOT", "PRIORITY_FLASHBOOT"),
        default="FLASHBOOT",
        help="FlashBoot (faster cold starts)",
    )
    a = p.add_argument_group("API")
    a.add_argument(
        "--api-url", default=os.environ.get("RUNPOD_API_URL") or API_URL, help="RunPod REST API v2 base URL"
    )
    a.add_argument("--timeout", type=float, default=30, help="seconds per API request")
    a.add_argument("--dry-run", action="store_true", help="print every request body and send nothing")
    args = p.parse_args(argv)

    args.gpu_type = args.gpu_type or [DEFAULT_GPU]
    args.pool = args.pool or list(DEFAULT_POOLS)
    for item in args.env:
        if "=" not in item or not item.partition("=")[0]:
            p.error(f"--env wants KEY=VALUE, not {item!r}")
    unknown = unknown_settings([item.partition("=")[0] for item in args.env])
    if unknown:
        p.error(f"--env: not a server setting: {', '.join(unknown)} (see server/settings.py)")
    for name in args.create_secret:
        if not SECRET_NAME.match(name) or name.upper().startswith("RUNPOD"):
            p.error(
                f"--create-secret {name!r}: RunPod secret names start with a letter or _, hold letters, digits "
                "and _.-/ (at most 191), and must not start with RUNPOD"
            )
    if (args.gpu_count is not None and args.gpu_count < 1) or args.volume < 10:
        p.error("--gpu-count must be at least 1 and --volume at least 10 (GB)")
    if args.container_disk is not None and args.container_disk < 1:
        p.error("--container-disk must be at least 1")
    if not 1024 <= args.port <= 65535:
        p.error("--port must be between 1024 and 65535")
    if not (0 <= args.min_workers <= args.max_workers and args.max_workers >= 1):
        p.error("--max-workers must be at least 1 and at least --min-workers (>= 0)")
    if not 1 <= args.idle_timeout <= 3600 or args.requests_per_worker < 1:
        p.error("--idle-timeout must be 1..3600 and --requests-per-worker at least 1")
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
        create_secrets(api, args.create_secret)
        if args.serverless:
            if not args.qdrant_url:
                print(
                    "note: no --qdrant-url: each Serverless worker keeps its own history on its container "
                    "disk, lost when it scales down; use Qdrant (Cloud) for one shared history",
                    file=sys.stderr,
                )
            deploy_serverless(api, args)
            return 0
        template_id = upsert_template(api, pod_template_body(args))
        if not args.pod:
            print("template ready; start a pod from it in the console, or run again with --pod")
            return 0
        pod_id = create_pod(api, args, template_id)
        if args.wait > 0:
            deadline = time.monotonic() + args.wait
            wait_pod_running(api, pod_id, deadline, args.poll)
            wait_ready(
                args.ready_url or proxy_url(pod_id, args.port), deadline, args.poll, f"The pod {pod_id}"
            )
        return 0
    except DeployError as exc:
        print(f"deploy.py: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("deploy.py: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
