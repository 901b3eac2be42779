"""GET /ping, the readiness route load balancers probe (RunPod's load-balancing endpoints): 204 while the model
loads, 200 when ready, 503 when broken, and never behind the API key."""

from __future__ import annotations

import contextlib
import time
from types import SimpleNamespace

import pytest
import requests
from fastapi import FastAPI
from fastapi.testclient import TestClient
from litserve.utils import WorkerSetupStatus

from tests.conftest import ServerProcess
from visionrag.server.ping import ping

KEY = "ping-test-key-" + "Z3k8" * 4


def test_ping_answers_204_while_loading_then_200_with_a_key_set(tmp_path, server_env) -> None:
    """A real server, watched from its first answer: /ping goes 204 -> 200 and never back, without a key,
    while every other route but /health still needs it."""
    proc = ServerProcess(tmp_path, {**server_env, "VISIONRAG_API_KEY": KEY}).spawn()
    seen: list[int] = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and (not seen or seen[-1] != 200):
            assert proc.proc.poll() is None, f"server exited; log:\n{proc.log_tail()}"
            with contextlib.suppress(requests.ConnectionError):  # not listening yet
                seen.append(requests.get(f"{proc.url}/ping", timeout=5).status_code)
            time.sleep(0.02)
        assert seen and seen[-1] == 200, f"/ping never answered 200: {seen[-20:]}\n{proc.log_tail()}"
        assert set(seen) <= {204, 200}, seen
        assert seen[0] == 204, "the server should answer while the model loads"
        assert 204 not in seen[seen.index(200) :], "once ready, /ping stays 200"

        ready = requests.get(f"{proc.url}/ping", timeout=5)
        assert ready.status_code == 200 and "www-authenticate" not in ready.headers
        assert requests.get(f"{proc.url}/health", timeout=5).json()["status"] == "ok"  # unchanged
        assert (
            requests.get(f"{proc.url}/history", timeout=5).status_code == 401
        )  # the key still guards the rest
        assert requests.post(f"{proc.url}/ping", timeout=5).status_code == 401  # only GET is open
    finally:
        proc.stop()


class _Server:
    def __init__(self, states: dict[str, WorkerSetupStatus]) -> None:
        self.states = states

    def worker_states(self) -> dict[str, str]:
        return {k: str(v) for k, v in self.states.items()}


def _app(workers: dict[str, WorkerSetupStatus], journal: str | None) -> TestClient:
    app = FastAPI()
    app.state.server = _Server(workers)
    if journal is not None:
        app.state.history = SimpleNamespace(status=lambda: {"journal": journal})
    app.add_api_route("/ping", ping, methods=["GET"])
    return TestClient(app)


@pytest.mark.parametrize(
    ("workers", "journal", "status"),
    [
        ({}, None, 204),  # nothing started yet
        ({"w0": WorkerSetupStatus.STARTING}, "ok", 204),
        (
            {"w0": WorkerSetupStatus.READY, "w1": WorkerSetupStatus.STARTING},
            "ok",
            204,
        ),  # one GPU still loading
        ({"w0": WorkerSetupStatus.READY}, None, 204),  # history not open yet
        ({"w0": WorkerSetupStatus.READY, "w1": WorkerSetupStatus.READY}, "ok", 200),
        (
            {"w0": WorkerSetupStatus.READY, "w1": WorkerSetupStatus.ERROR},
            "ok",
            503,
        ),  # a worker failed to load
        ({"w0": WorkerSetupStatus.READY}, "error", 503),  # journal unreadable
    ],
    ids=["nothing", "loading", "one-loading", "no-history", "ready", "worker-error", "journal-error"],
)
def test_ping_states(workers, journal, status) -> None:
    """Each state of the worker table and the journal maps to the balancer's contract; the broken states
    cannot be produced on demand in a real server, so these use the real route on a small app."""
    r = _app(workers, journal).get("/ping")
    assert r.status_code == status
    assert r.content == b""  # a public probe says nothing but its status
