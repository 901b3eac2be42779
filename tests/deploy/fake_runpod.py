"""A loopback HTTP server that plays RunPod's REST API v1 (and a pod's /health) for deploy.py's tests.

Every request is recorded and checked against the documented shape (method, path, Bearer header,
required body fields and their types); a request that breaks the shape gets a 400 with the reason,
and the reason is kept in `violations` so a test can assert there were none.

Documented shapes (docs.runpod.io/api-reference, server https://rest.runpod.io/v1):
  GET   /templates              -> JSON array of templates
  POST  /templates              name, imageName, containerDiskInGb, volumeInGb, volumeMountPath, ports,
                                env (object), dockerStartCmd (array of strings), readme, isServerless
  PATCH /templates/{templateId} the same fields but isServerless
  POST  /pods                   templateId, gpuTypeIds (array), gpuCount, name, cloudType (SECURE/COMMUNITY)
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

API_KEY = "rpa_test_key_123"
PORT_RE = re.compile(r"^\d{1,5}/(http|tcp)$")

TEMPLATE_FIELDS: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "imageName": str,
    "containerDiskInGb": int,
    "volumeInGb": int,
    "volumeMountPath": str,
    "ports": list,
    "env": dict,
    "dockerStartCmd": list,
    "readme": str,
}
POD_FIELDS: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "templateId": str,
    "gpuTypeIds": list,
    "gpuCount": int,
    "cloudType": str,
}
# fields the v1 PodCreateInput / TemplateCreateInput know; anything else is a mistake on our side
POD_KNOWN = set(POD_FIELDS) | {
    "imageName",
    "containerDiskInGb",
    "volumeInGb",
    "volumeMountPath",
    "ports",
    "env",
    "dataCenterIds",
    "allowedCudaVersions",
    "interruptible",
    "supportPublicIp",
    "networkVolumeId",
    "dockerStartCmd",
}
TEMPLATE_KNOWN = set(TEMPLATE_FIELDS) | {
    "isServerless",
    "isPublic",
    "containerRegistryAuthId",
    "dockerEntrypoint",
}


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeRunPod:
    templates: list[dict[str, Any]] = field(default_factory=list)
    requests: list[Recorded] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    # (status, body) forced for every API request when set, e.g. (401, {"error": "..."})
    fail_with: tuple[int, Any] | None = None
    # (status, body) forced for POST /pods only (the template steps succeed)
    pod_error: tuple[int, Any] | None = None
    # how many /health calls answer 503 before one answers 200; None: always 503
    health_after: int | None = 2
    health_calls: int = 0
    pod_id: str = "pod1abc2def"
    url: str = ""

    def api(self) -> list[Recorded]:
        return [r for r in self.requests if r.path.startswith("/v1/")]

    # ------------------------------------------------------------------ checks

    def check_template(self, body: Any, *, creating: bool) -> list[str]:
        errs = _check_fields(body, TEMPLATE_FIELDS, TEMPLATE_KNOWN)
        if errs:
            return errs
        if creating and body.get("isServerless") is not False:
            errs.append("isServerless must be false for a pod template")
        if not creating and "isServerless" in body:
            errs.append("PATCH /templates/{id} does not take isServerless")
        if not all(isinstance(p, str) and PORT_RE.match(p) for p in body["ports"]):
            errs.append(f"ports must look like '8000/http': {body['ports']!r}")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in body["env"].items()):
            errs.append("env must map strings to strings")
        if not all(isinstance(c, str) for c in body["dockerStartCmd"]):
            errs.append("dockerStartCmd must be an array of strings")
        if not body["volumeMountPath"].startswith("/"):
            errs.append("volumeMountPath must be absolute")
        return errs

    def check_pod(self, body: Any) -> list[str]:
        errs = _check_fields(body, POD_FIELDS, POD_KNOWN)
        if errs:
            return errs
        if body["cloudType"] not in ("SECURE", "COMMUNITY", "ALL"):
            errs.append(f"cloudType {body['cloudType']!r}")
        if not body["gpuTypeIds"] or not all(isinstance(g, str) for g in body["gpuTypeIds"]):
            errs.append("gpuTypeIds must be a non-empty array of strings")
        if body["templateId"] not in {t["id"] for t in self.templates}:
            errs.append(f"unknown templateId {body['templateId']!r}")
        return errs


def _check_fields(body: Any, required: dict[str, Any], known: set[str]) -> list[str]:
    if not isinstance(body, dict):
        return ["body must be a JSON object"]
    errs = []
    for name, kind in required.items():
        if name not in body:
            errs.append(f"missing field {name}")
        elif (isinstance(body[name], bool) and kind is int) or not isinstance(body[name], kind):
            errs.append(f"{name} must be {getattr(kind, '__name__', kind)}, not {type(body[name]).__name__}")
    unknown = set(body) - known
    if unknown:
        errs.append(f"unknown fields {sorted(unknown)}")
    return errs


def serve(state: FakeRunPod) -> tuple[ThreadingHTTPServer, str]:
    """Start the fake on 127.0.0.1 (an ephemeral port); returns the server and its base URL."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep pytest output clean
            pass

        def _answer(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode() if not isinstance(body, bytes) else body
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            rec = Recorded(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            state.requests.append(rec)

            if self.path == "/health":
                state.health_calls += 1
                if state.health_after is not None and state.health_calls > state.health_after:
                    return self._answer(200, {"status": "ok"})
                return self._answer(503, {"detail": "loading model"})

            if not self.path.startswith("/v1/"):
                state.violations.append(f"{self.command} {self.path}: not under /v1")
                return self._answer(404, {"error": "not found"})
            if rec.headers.get("authorization") != f"Bearer {API_KEY}":
                if state.fail_with is None:
                    state.violations.append(f"{self.command} {self.path}: bad Authorization header")
                return self._answer(401, {"error": "Unauthorized: invalid api key"})
            if state.fail_with is not None:
                status, answer = state.fail_with
                return self._answer(status, answer)

            path = self.path[len("/v1") :]
            errs: list[str] = []
            if self.command == "GET" and path == "/templates":
                return self._answer(200, state.templates)
            if self.command == "POST" and path == "/templates":
                errs = state.check_template(body, creating=True)
                if not errs:
                    tpl = dict(body, id=f"tpl{len(state.templates) + 1:04d}")
                    state.templates.append(tpl)
                    return self._answer(200, tpl)
            elif self.command == "PATCH" and path.startswith("/templates/"):
                tid = path.rsplit("/", 1)[1]
                match = [t for t in state.templates if t["id"] == tid]
                errs = state.check_template(body, creating=False) or ([] if match else [f"no template {tid}"])
                if not errs:
                    match[0].update(body)
                    return self._answer(200, match[0])
            elif self.command == "POST" and path == "/pods":
                errs = state.check_pod(body)
                if not errs and state.pod_error is not None:
                    return self._answer(*state.pod_error)
                if not errs:
                    return self._answer(
                        201, {"id": state.pod_id, "desiredStatus": "RUNNING", "costPerHr": 1.72}
                    )
            else:
                errs = [f"unexpected {self.command} {self.path}"]
            state.violations.extend(f"{self.command} {self.path}: {e}" for e in errs)
            return self._answer(400, {"error": "; ".join(errs)})

        do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"
