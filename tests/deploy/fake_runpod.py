"""A loopback HTTP server that plays RunPod's REST API v2 (and a pod's or worker's /ping) for deploy.py's tests.

It refuses what the real API refuses: every request body is validated against the request schema of its
operation (tests/deploy/runpod_v2_schemas.json, an excerpt of RunPod's OpenAPI file), so an unknown field,
a wrong type or a missing required field is a 422 in RFC 9457 form (`title`, `status`, `detail`,
`errors`), as is a bad query on the GPU catalog; a request without the Bearer key is a 401. Every request
is recorded, and every refusal the script should never have provoked is kept in `violations`, so a test
can assert there were none.

What a test can set: `no_capacity` (GPU type ids whose pod create answers 400, as RunPod does when no
machine can be placed), `availability` (the catalog's stock level per GPU type), `pod_states` (the
statuses successive GET /v2/pods/{id} walk through, e.g. ending in ERROR), `secrets` (names that exist, so
creating one again answers 409), `ping_after` (how many /ping answers are 204 before 200), `fail_with`.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.deploy.schema_check import Validator
from tests.deploy.schema_fixture import load

API_KEY = "rpa_test_key_123"
FIXTURE = load()
VALIDATOR = Validator(FIXTURE)
SCHEMAS = FIXTURE["components"]["schemas"]

# The catalog the fake answers with (GET /v2/catalog/gpus): 48 GB cards and their serverless pools.
GPUS = [
    {"id": "NVIDIA L40S", "name": "L40S", "pool": "ADA_48_PRO", "memory": 48, "price": 0.86},
    {"id": "NVIDIA L40", "name": "L40", "pool": "ADA_48_PRO", "memory": 48, "price": 0.69},
    {"id": "NVIDIA RTX 6000 Ada Generation", "name": "RTX 6000 Ada", "pool": "ADA_48_PRO", "memory": 48, "price": 0.77},
    {"id": "NVIDIA A40", "name": "A40", "pool": "AMPERE_48", "memory": 48, "price": 0.40},
    {"id": "NVIDIA RTX A6000", "name": "RTX A6000", "pool": "AMPERE_48", "memory": 48, "price": 0.49},
    {"id": "NVIDIA GeForce RTX 4090", "name": "RTX 4090", "pool": "ADA_24", "memory": 24, "price": 0.59},
]  # fmt: skip


def problem(status: int, detail: str, errors: list[str] | None = None) -> dict[str, Any]:
    titles = {
        400: "Bad Request",
        401: "Unauthorized",
        404: "Not Found",
        409: "Conflict",
        422: "Unprocessable Entity",
    }
    body: dict[str, Any] = {"title": titles.get(status, "Error"), "status": status, "detail": detail}
    if errors:
        body["errors"] = errors
    return body


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


@dataclass
class FakeRunPod:
    templates: list[dict[str, Any]] = field(default_factory=list)
    endpoints: list[dict[str, Any]] = field(default_factory=list)
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)  # name -> value (kept to assert it arrived)
    requests: list[Recorded] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    fail_with: tuple[int, Any] | None = None  # forced answer to every API request
    no_capacity: set[str] = field(default_factory=set)
    availability: dict[str, str] = field(default_factory=dict)  # GPU id -> NONE/LOW/MEDIUM/HIGH
    pod_states: list[str] = field(default_factory=lambda: ["PROVISIONING", "STARTING", "RUNNING"])
    pod_logs: list[str] = field(default_factory=lambda: ["pulling image", "CUDA driver too old"])
    ping_after: int | None = 2  # /ping answers 204 this many times, then 200; None: 204 forever
    ping_calls: int = 0
    pod_gets: int = 0
    url: str = ""

    def api(self) -> list[Recorded]:
        return [r for r in self.requests if r.path.startswith("/v2/")]

    def calls(self) -> list[tuple[str, str]]:
        return [(r.method, r.path) for r in self.api()]

    def bodies(self, method: str, path: str) -> list[Any]:
        return [r.body for r in self.api() if (r.method, r.path) == (method, path)]

    # ------------------------------------------------------------------ the API

    def handle(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        route = re.sub(r"^/v2/(templates|serverless|pods)/[^/]+$", r"/v2/\1/{id}", path)
        route = re.sub(r"^/v2/pods/[^/]+/logs$", "/v2/pods/{id}/logs", route)
        key = f"{method} {route}"
        schema_name = FIXTURE["operations"].get(key)
        if schema_name:
            errors = VALIDATOR.errors(SCHEMAS[schema_name], body)
            if errors:
                return 422, problem(422, "Request validation failed.", errors)
        handler = {
            "GET /v2/templates": self.list_templates,
            "POST /v2/templates": self.create_template,
            "PATCH /v2/templates/{id}": self.update_template,
            "GET /v2/catalog/gpus": self.catalog,
            "POST /v2/pods": self.create_pod,
            "GET /v2/pods/{id}": self.get_pod,
            "GET /v2/serverless": self.list_endpoints,
            "POST /v2/serverless": self.create_endpoint,
            "PATCH /v2/serverless/{id}": self.update_endpoint,
            "POST /v2/account/secrets": self.create_secret,
        }.get(key)
        if handler is None:
            return 404, problem(404, f"no route {method} {path}")
        return handler(path.rsplit("/", 1)[1], query, body)

    def list_templates(self, _id: str, _q: dict, _b: Any) -> tuple[int, Any]:
        return 200, {"templates": self.templates}

    def create_template(self, _id: str, _q: dict, body: dict[str, Any]) -> tuple[int, Any]:
        if any(t["name"] == body["name"] for t in self.templates):
            return 400, problem(400, f"a template named {body['name']} already exists")
        tpl = {
            "id": f"tpl{len(self.templates) + 1:04d}",
            "args": "",
            "disk": 10,
            "mounts": {},
            "ports": [],
            "env": {},
            "registry": None,
            "serverless": False,
            "public": False,
            "category": "NVIDIA",
            "startSsh": True,
            "startJupyter": True,
            "allowedCudaVersions": [],
            **body,
        }
        self.templates.append(tpl)
        return 201, tpl

    def update_template(self, tid: str, _q: dict, body: dict[str, Any]) -> tuple[int, Any]:
        match = [t for t in self.templates if t["id"] == tid]
        if not match:
            return 404, problem(404, f"template {tid} not found")
        match[0].update(body)
        return 200, match[0]

    def catalog(self, _id: str, query: dict[str, list[str]], _b: Any) -> tuple[int, Any]:
        include = query.get("include", [""])[0]
        if include not in ("", "AVAILABILITY"):
            return 422, problem(422, "Request validation failed.", [f"include: unknown value {include!r}"])
        if bool(include) != ("product" in query):
            return 400, problem(400, "product is required with include=AVAILABILITY, and valid only with it")
        if not include and ({"count", "cloud"} & set(query)):
            return 400, problem(400, "count and cloud are valid only with include=AVAILABILITY")
        gpus = []
        for g in GPUS:
            item = {
                "id": g["id"],
                "name": g["name"],
                "pool": g["pool"],
                "manufacturer": "NVIDIA",
                "memory": g["memory"],
                "secure": True,
                "community": True,
                "price": {
                    "secure": g["price"],
                    "community": round(g["price"] * 0.8, 2),
                    "serverless": g["price"] * 2,
                },
                "maxCount": {"secure": 8, "community": 8},
            }
            if include:
                item["availability"] = self.availability.get(g["id"], "HIGH")
            gpus.append(item)
        return 200, {"gpus": gpus}

    def create_pod(self, _id: str, _q: dict, body: dict[str, Any]) -> tuple[int, Any]:
        if ("gpu" in body) == ("cpu" in body):
            return 400, problem(400, "exactly one of gpu or cpu must be set")
        tpl = next((t for t in self.templates if t["id"] == body.get("templateId")), None)
        if body.get("templateId") and tpl is None:
            return 404, problem(404, f"template {body['templateId']} not found")
        if tpl is not None and tpl.get("serverless"):
            return 422, problem(422, "templateId refers to a serverless template")
        gpu = body["gpu"]
        if gpu["id"] not in {g["id"] for g in GPUS}:
            return 400, problem(400, f"unknown GPU type {gpu['id']!r}")
        if gpu["id"] in self.no_capacity:
            return 400, problem(
                400, "There are no longer any instances available with the requested specifications."
            )
        pod_id = f"pod{len(self.pods) + 1:03d}abc"
        price = next(g["price"] for g in GPUS if g["id"] == gpu["id"])
        pod = {
            "id": pod_id,
            "name": body["name"],
            "status": "PROVISIONING",
            "gpu": gpu,
            "cost": price * gpu.get("count", 1),
        }
        self.pods[pod_id] = pod
        return 201, pod

    def get_pod(self, pod_id: str, _q: dict, _b: Any) -> tuple[int, Any]:
        pod = self.pods.get(pod_id)
        if pod is None:
            return 404, problem(404, f"pod {pod_id} not found")
        self.pod_gets += 1
        pod["status"] = self.pod_states[min(self.pod_gets - 1, len(self.pod_states) - 1)]
        return 200, pod

    def list_endpoints(self, _id: str, _q: dict, _b: Any) -> tuple[int, Any]:
        return 200, {"endpoints": self.endpoints}

    def create_endpoint(self, _id: str, _q: dict, body: dict[str, Any]) -> tuple[int, Any]:
        if ("gpu" in body) == ("cpu" in body):
            return 400, problem(400, "exactly one of gpu or cpu must be set")
        tpl = next((t for t in self.templates if t["id"] == body.get("templateId")), None)
        if tpl is None or not tpl.get("serverless"):
            return 422, problem(422, "templateId must refer to one of your serverless templates")
        pools = {g["pool"] for g in GPUS}
        unknown = [p for p in body["gpu"]["pools"] if p not in pools]
        if unknown:
            return 400, problem(400, f"unknown GPU pool(s) {unknown}")
        ep_id = f"ep{len(self.endpoints) + 1:03d}xyz"
        ep = {
            "id": ep_id,
            **body,
            "requestUrls": {
                "base": f"https://{ep_id}.api.runpod.ai",
                "health": f"https://{ep_id}.api.runpod.ai/ping",
            },
        }
        self.endpoints.append(ep)
        return 201, ep

    def update_endpoint(self, ep_id: str, _q: dict, body: dict[str, Any]) -> tuple[int, Any]:
        match = [e for e in self.endpoints if e["id"] == ep_id]
        if not match:
            return 404, problem(404, f"endpoint {ep_id} not found")
        match[0].update(body)
        return 200, match[0]

    def create_secret(self, _id: str, _q: dict, body: dict[str, Any]) -> tuple[int, Any]:
        if body["name"].upper().startswith("RUNPOD"):
            return 422, problem(422, "Request validation failed.", ["name: the RUNPOD prefix is reserved"])
        if body["name"] in self.secrets:
            return 409, problem(409, f"a secret named {body['name']} already exists")
        self.secrets[body["name"]] = body["value"]
        return 201, {
            "id": f"sec{len(self.secrets)}",
            "name": body["name"],
            "createdAt": "2026-11-22T10:00:00Z",
        }


# Refusals the script provokes on purpose in some tests; anything else refused is a violation.
EXPECTED = {409}


def serve(state: FakeRunPod) -> tuple[ThreadingHTTPServer, str]:
    """Start the fake on 127.0.0.1 (an ephemeral port); returns the server and its base URL."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep pytest output clean
            pass

        def _answer(self, status: int, body: Any, kind: str = "application/json") -> None:
            data = b"" if status == 204 else body if isinstance(body, bytes) else json.dumps(body).encode()
            if status >= 400 and isinstance(body, dict) and "title" in body:
                kind = "application/problem+json"
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            parts = urlsplit(self.path)
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            headers = {k.lower(): v for k, v in self.headers.items()}
            state.requests.append(Recorded(self.command, parts.path, parse_qs(parts.query), headers, body))

            if parts.path == "/ping":
                state.ping_calls += 1
                ready = state.ping_after is not None and state.ping_calls > state.ping_after
                return self._answer(200 if ready else 204, {"status": "ok"} if ready else b"")
            if not parts.path.startswith("/v2/"):
                state.violations.append(f"{self.command} {self.path}: not under /v2")
                return self._answer(404, problem(404, "not found"))
            if headers.get("authorization") != f"Bearer {API_KEY}":
                if state.fail_with is None:
                    state.violations.append(f"{self.command} {parts.path}: bad Authorization header")
                return self._answer(401, problem(401, "invalid api key"))
            if state.fail_with is not None:
                return self._answer(*state.fail_with)
            if raw and "json" not in headers.get("content-type", ""):
                state.violations.append(f"{self.command} {parts.path}: body without a JSON content type")
            if re.fullmatch(r"/v2/pods/[^/]+/logs", parts.path):
                lines = [
                    json.dumps({"source": "container", "line": x, "ts": "2026-11-22T10:00:00Z"})
                    for x in state.pod_logs
                ]
                sse = "".join(f"id: {i}\ndata: {line}\n\n" for i, line in enumerate(lines)).encode()
                return self._answer(200, sse, "text/event-stream")
            status, answer = state.handle(self.command, parts.path, parse_qs(parts.query), body)
            if (
                status >= 400
                and status not in EXPECTED
                and not (
                    status == 400
                    and isinstance(body, dict)
                    and body.get("gpu", {}).get("id") in state.no_capacity
                )
            ):
                state.violations.append(f"{self.command} {parts.path}: {status} {answer}")
            return self._answer(status, answer)

        do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"
