"""deploy.py's command line: its flags, their defaults and the checks argparse can make before any request
is sent (split from deploy.py, which holds the steps)."""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from rest import API_URL

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

    _refuse_other_mode(p, args)
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


# Options that only one mode reads: given without it, they would be dropped without a word.
POD_ONLY = ("pod_name", "gpu_type", "cloud", "wait", "poll", "ready_url")
SERVERLESS_ONLY = (
    "endpoint_name",
    "pool",
    "min_workers",
    "max_workers",
    "idle_timeout",
    "requests_per_worker",
    "flashboot",
)


def _refuse_other_mode(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    flags = {a.dest: a.option_strings[0] for a in p._actions if a.option_strings}
    for names, needed, mode in (
        (POD_ONLY, args.pod, "--pod"),
        (SERVERLESS_ONLY, args.serverless, "--serverless"),
    ):
        given = [flags[n] for n in names if getattr(args, n) != p.get_default(n)]
        if given and not needed:
            p.error(f"{', '.join(given)} only appl{'ies' if len(given) == 1 else 'y'} with {mode}")
    if args.serverless and args.volume != p.get_default("volume"):
        p.error("--volume only applies to pods (Serverless workers have no pod volume)")


def unknown_settings(names: list[str]) -> list[str]:
    """Names that are not environment variables of the server's Settings. The check needs the project
    installed (`pip install -e .`); without it, it says so and lets the names through."""
    if not names:
        return []
    try:
        from dataclasses import fields

        from visionrag.server.settings import Settings
    except ImportError as exc:
        print(f"note: --env names not checked ({exc}); `pip install -e .` enables the check", file=sys.stderr)
        return []
    known = {env for f in fields(Settings) for env in f.metadata.get("env", ())}
    return [n for n in names if n not in known]
