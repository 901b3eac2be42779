"""GET /ping: readiness for load balancers (RunPod's load-balancing Serverless endpoints probe it on
PORT_HEALTH): 204 while the model loads, 200 once /health would say ready, 503 when a model worker failed
or the journal cannot be read. It never needs the API key (server/auth.py) and says nothing more than its
status, so a public probe learns nothing; /health keeps the details."""

from __future__ import annotations

from fastapi import Request, Response
from litserve.utils import WorkerSetupStatus
from starlette.concurrency import run_in_threadpool


async def ping(request: Request) -> Response:
    workers = request.app.state.server.worker_states()
    if WorkerSetupStatus.ERROR in workers.values():
        return Response(status_code=503)
    history = getattr(request.app.state, "history", None)
    if not workers or history is None or any(s != WorkerSetupStatus.READY for s in workers.values()):
        return Response(status_code=204)
    journal = (await run_in_threadpool(history.status)).get("journal")
    return Response(status_code=200 if journal == "ok" else 503)
