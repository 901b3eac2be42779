"""GET /ping: readiness for load balancers (RunPod's load-balancing Serverless endpoints probe it on
PORT_HEALTH): 204 while the model loads, 200 once /health would say ready, 503 when a model worker failed
or the journal cannot be read. It never needs the API key (server/auth.py) and says nothing more than its
status, so a public probe learns nothing; /health keeps the details."""

from __future__ import annotations

from typing import Any

from fastapi import Request, Response
from litserve.utils import WorkerSetupStatus
from starlette.concurrency import run_in_threadpool

PING_STATUS = {"loading": 204, "ok": 200, "error": 503}


async def readiness(request: Request) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """("loading" | "ok" | "error", the workers' states, the history's status): the one reading behind
    /ping and /health. Ready: every model worker has loaded the model and the journal is open; broken: a
    worker failed, or the journal cannot be read once the workers are up."""
    workers = request.app.state.server.worker_states()
    history = getattr(request.app.state, "history", None)
    history_status: dict[str, Any] = (
        await run_in_threadpool(history.status) if history is not None else {"journal": "starting"}
    )
    if WorkerSetupStatus.ERROR in workers.values():
        return "error", workers, history_status
    if not workers or history is None or any(s != WorkerSetupStatus.READY for s in workers.values()):
        return "loading", workers, history_status
    return ("ok" if history_status.get("journal") == "ok" else "error"), workers, history_status


async def ping(request: Request) -> Response:
    state, _, _ = await readiness(request)
    return Response(status_code=PING_STATUS[state])
