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
import sys
import time
from typing import Any

from bodies import (
    endpoint_body,
    endpoint_update_body,
    pod_body,
    secret_body,
    secret_placeholder,
    template_body,
    update_body,
)
from options import parse_args
from rest import ApiError, DeployError, RunPod, response_id
from waits import wait_pod_running, wait_ready


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
            if exc.status != 400:  # 403: the key may not; 422: our body is wrong; 402: no balance; 5xx
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
    template_id = upsert_template(api, template_body(args, serverless=True))
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
        tpl = template_body(args, serverless=True)
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
        template_body(args, serverless=False),
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
        template_id = upsert_template(api, template_body(args, serverless=False))
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
