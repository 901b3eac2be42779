"""The bounded waits after a pod is created: its status through PROVISIONING/STARTING to RUNNING (failing fast
on ERROR/EXITED/TERMINATED with the last lines of its log), then our own readiness route, /ping, through the
public proxy URL until it answers 200 (204 means the model is still loading)."""

from __future__ import annotations

import json
import sys
import time

import requests
from rest import ApiError, DeployError, RunPod

WAITING = ("PROVISIONING", "STARTING")
FAILED = ("ERROR", "EXITED", "TERMINATED")


def wait_pod_running(api: RunPod, pod_id: str, deadline: float, poll: float) -> None:
    """Poll GET /pods/{id} until RUNNING; an ERROR/EXITED/TERMINATED pod ends the wait at once."""
    last = ""
    while True:
        pod = api.call("GET", f"/pods/{pod_id}")
        status = str(pod.get("status") if isinstance(pod, dict) else "")
        if status != last:
            print(f"pod {pod_id}: {status}", flush=True)
            last = status
        if status == "RUNNING":
            return
        if status in FAILED:
            tail = pod_log_tail(api, pod_id)
            logs = ("; last log lines: " + " | ".join(tail)) if tail else ""
            raise DeployError(
                f"pod {pod_id} is {status} before it ever ran{logs}. Look at its logs in the RunPod console; "
                f"terminate it there (an {status} pod may still hold its volume)"
            )
        if status not in WAITING:
            raise DeployError(f"pod {pod_id} has an unexpected status {status!r}: {json.dumps(pod)[:300]}")
        if time.monotonic() >= deadline:
            raise DeployError(
                f"pod {pod_id} still {status} when the wait ran out. It is billed while it exists: "
                "watch it in the RunPod console, or terminate it there"
            )
        time.sleep(max(0.0, min(poll, deadline - time.monotonic())))


def pod_log_tail(api: RunPod, pod_id: str, lines: int = 5, seconds: float = 5.0) -> list[str]:
    """The last few container log lines (GET /pods/{id}/logs is a Server-Sent Events stream: read a bounded
    backfill, never follow it). Empty when the logs cannot be read; the error at hand matters more."""
    url = f"{api.api_url}/pods/{pod_id}/logs"
    out: list[str] = []
    start = time.monotonic()
    try:
        with api.session.get(
            url, params={"source": "container", "tail": lines}, stream=True, timeout=min(api.timeout, seconds)
        ) as resp:
            if resp.status_code != 200:
                return []
            for raw in resp.iter_lines(decode_unicode=True):
                if raw and raw.startswith("data:"):
                    try:
                        out.append(str(json.loads(raw[5:].strip()).get("line", "")))
                    except (ValueError, AttributeError):
                        out.append(raw[5:].strip())
                if len(out) >= lines or time.monotonic() - start > seconds:
                    break
    except (requests.RequestException, ApiError):
        return []
    return out[-lines:]


def wait_ready(base: str, deadline: float, poll: float, what: str) -> None:
    """Poll {base}/ping until it answers 200; 204 (loading) and errors keep the wait going until `deadline`."""
    url = base.rstrip("/") + "/ping"
    tty = sys.stdout.isatty()
    start = time.monotonic()
    total = max(deadline - start, 0.0)
    last = "no answer yet"
    print(f"waiting up to {int(total)} s for {url} (the first start downloads ~22 GB, then loads the model)")
    while True:
        elapsed = time.monotonic() - start
        try:
            resp = requests.get(url, timeout=min(10.0, max(poll, 1.0)))
            if resp.status_code == 200:
                _progress(tty, elapsed, total, "200 ready", final=True)
                print(f"ready after {int(elapsed)} s")
                return
            last = (
                "204 loading the model" if resp.status_code == 204 else f"{resp.status_code} {_short(resp)}"
            )
        except requests.RequestException as exc:
            last = f"not reachable yet ({type(exc).__name__})"
        _progress(tty, elapsed, total, last)
        if time.monotonic() >= deadline:
            if tty:
                print()
            raise DeployError(
                f"{url} not ready after {int(elapsed)} s (last: {last}). {what} is still running and "
                "billing: read its logs in the RunPod console, wait longer, or stop it there."
            )
        time.sleep(max(0.0, min(poll, deadline - time.monotonic())))


def _progress(tty: bool, elapsed: float, total: float, last: str, final: bool = False) -> None:
    width = 30
    done = int(width * min(1.0, elapsed / total)) if total > 0 else width
    bar = "#" * done + "." * (width - done)
    line = f"[{bar}] {int(elapsed):>5d}/{int(total)} s  /ping: {last}"
    if tty:
        print("\r" + line[:120].ljust(120), end="\n" if final else "", flush=True)
    else:
        print(line, flush=True)


def _short(resp: requests.Response) -> str:
    text = " ".join(resp.text.split())
    return (text[:60] + "...") if len(text) > 60 else text
