"""RunPod's REST API v2 as deploy.py uses it: one authenticated session, errors in the API's own words (RFC
9457 problem bodies shown as one line, with the fields that failed). Standard library + requests only (this
folder is not a package: a package named `runpod` would shadow the RunPod SDK; deploy.py imports this file
as a sibling)."""

from __future__ import annotations

import json
from typing import Any

import requests

API_URL = "https://api.runpod.io/v2"


class DeployError(Exception):
    """Anything that should end the script with a message and exit status 1."""


class ApiError(DeployError):
    """The API answered with an error status; `status` lets a caller decide whether to try something else."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class RunPod:
    def __init__(self, api_url: str, api_key: str, timeout: float) -> None:
        self.api_url = api_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers.update({"Authorization": f"Bearer {api_key}", "Accept": "application/json"})

    def call(
        self, method: str, path: str, body: dict[str, Any] | None = None, params: dict[str, Any] | None = None
    ) -> Any:
        """One API call; raises ApiError with the API's message on an error status. The body is never put in
        an error message (it may carry a secret's value)."""
        url = f"{self.api_url}{path}"
        try:
            resp = self.session.request(method, url, json=body, params=params, timeout=self.timeout)
        except requests.RequestException as exc:
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise DeployError(
                f"cannot reach the RunPod API at {self.api_url}: {reason}; check the network, or --api-url / "
                "RUNPOD_API_URL"
            ) from None
        if resp.status_code >= 400:
            hint = ""
            if resp.status_code in (401, 403):
                hint = (
                    " (check RUNPOD_API_KEY: a key with read/write access,"
                    " from the RunPod console > Settings > API Keys)"
                )
            raise ApiError(
                f"RunPod API {method} {path} answered {resp.status_code}: {api_message(resp)}{hint}",
                resp.status_code,
            )
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            raise DeployError(
                f"RunPod API {method} {path} answered with something that is not JSON: {resp.text[:300]!r}"
            ) from None

    def find_by_name(self, path: str, key: str, name: str) -> dict[str, Any] | None:
        """The item called `name` in a v2 listing such as GET /templates -> {"templates": [...]}."""
        listing = self.call("GET", path)
        items = listing.get(key) if isinstance(listing, dict) else None
        if not isinstance(items, list):
            raise DeployError(
                f"RunPod API GET {path} answered without a {key!r} list: {json.dumps(listing)[:300]}"
            )
        return next((i for i in items if isinstance(i, dict) and i.get("name") == name), None)


def api_message(resp: requests.Response) -> str:
    """One line from an error answer: RFC 9457 `title: detail (errors)`, or whatever else the body says."""
    try:
        data = resp.json()
    except ValueError:
        text = " ".join(resp.text.split())
        return text[:500] if text else resp.reason or "no message"
    if isinstance(data, dict) and ("title" in data or "detail" in data):
        head = ": ".join(str(data[k]) for k in ("title", "detail") if data.get(k))
        errors = data.get("errors")
        if isinstance(errors, list) and errors:
            head += " [" + "; ".join(str(e) for e in errors) + "]"
        return head
    if isinstance(data, dict):
        for key in ("error", "message"):
            if isinstance(data.get(key), str):
                return data[key]
    return json.dumps(data)[:500]


def response_id(obj: Any, what: str) -> str:
    if isinstance(obj, dict) and obj.get("id"):
        return str(obj["id"])
    raise DeployError(f"the RunPod API created a {what} but its answer has no id: {json.dumps(obj)[:300]}")
