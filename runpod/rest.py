"""RunPod's REST API as deploy.py uses it: one authenticated session, errors in the API's own words, and a
bounded wait for the pod's /health. Standard library + requests only (this folder is not a package: a
package named `runpod` would shadow the RunPod SDK; deploy.py imports this file as a sibling)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import requests


class DeployError(Exception):
    """Anything that should end the script with a message and exit status 1."""


# ---------------------------------------------------------------- request bodies


class RunPod:
    def __init__(self, api_url: str, api_key: str, timeout: float) -> None:
        self.api_url = api_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers.update({"Authorization": f"Bearer {api_key}", "Accept": "application/json"})

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        url = f"{self.api_url}{path}"
        try:
            resp = self.session.request(method, url, json=body, timeout=self.timeout)
        except requests.RequestException as exc:
            raise DeployError(f"cannot reach the RunPod API at {url}: {exc}") from None
        if resp.status_code >= 400:
            hint = ""
            if resp.status_code in (401, 403):
                hint = (
                    " (check RUNPOD_API_KEY: a key with read/write access,"
                    " from the RunPod console > Settings > API Keys)"
                )
            raise DeployError(
                f"RunPod API {method} {path} answered {resp.status_code}: {api_message(resp)}{hint}"
            )
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            raise DeployError(
                f"RunPod API {method} {path} answered with something that is not JSON: {resp.text[:300]!r}"
            ) from None

    def find_template(self, name: str) -> dict[str, Any] | None:
        listing = self.call("GET", "/templates")
        if isinstance(listing, dict):  # tolerate {"templates": [...]} / {"data": [...]}
            listing = listing.get("templates") or listing.get("data") or []
        for tpl in listing or []:
            if isinstance(tpl, dict) and tpl.get("name") == name:
                return tpl
        return None


def api_message(resp: requests.Response) -> str:
    """The API's own words for an error, whatever shape the body has."""
    try:
        data = resp.json()
    except ValueError:
        text = resp.text.strip()
        return text[:500] if text else resp.reason or "no message"
    if isinstance(data, dict):
        for key in ("error", "message", "detail", "errors"):
            value = data.get(key)
            if value:
                return value if isinstance(value, str) else json.dumps(value)
    return json.dumps(data)[:500]


def wait_healthy(base: str, wait: float, poll: float, pod_id: str) -> None:
    """Poll {base}/health until 200, showing elapsed time and the last answer, for at most `wait` s."""
    url = base.rstrip("/") + "/health"
    tty = sys.stdout.isatty()
    start = time.monotonic()
    last = "no answer yet"
    print(
        f"waiting up to {int(wait)} s for {url} (first start downloads ~22 GB, then loads one model per GPU)"
    )
    while True:
        elapsed = time.monotonic() - start
        try:
            resp = requests.get(url, timeout=min(10.0, max(poll, 1.0)))
            if resp.status_code == 200:
                _progress(tty, elapsed, wait, "200 ready", final=True)
                print(f"healthy after {int(elapsed)} s")
                return
            last = f"{resp.status_code} {_short(resp)}"
        except requests.RequestException as exc:
            last = f"not reachable yet ({type(exc).__name__})"
        _progress(tty, elapsed, wait, last)
        if elapsed >= wait:
            if tty:
                print()
            raise DeployError(
                f"{url} not healthy after {int(wait)} s (last: {last}). "
                f"The pod {pod_id} is still running and "
                "billing: read its logs in the RunPod console, wait longer, or stop it there."
            )
        time.sleep(min(poll, wait - elapsed))


def _progress(tty: bool, elapsed: float, wait: float, last: str, final: bool = False) -> None:
    width = 30
    done = int(width * min(1.0, elapsed / wait)) if wait > 0 else width
    bar = "#" * done + "." * (width - done)
    line = f"[{bar}] {int(elapsed):>5d}/{int(wait)} s  /health: {last}"
    if tty:
        print("\r" + line[:120].ljust(120), end="\n" if final else "", flush=True)
    else:
        print(line, flush=True)


def _short(resp: requests.Response) -> str:
    text = " ".join(resp.text.split())
    return (text[:60] + "...") if len(text) > 60 else text


def response_id(obj: Any, what: str) -> str:
    if isinstance(obj, dict) and obj.get("id"):
        return str(obj["id"])
    raise DeployError(f"the RunPod API created a {what} but its answer has no id: {json.dumps(obj)[:300]}")
