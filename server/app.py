"""Assembles the server: LitServer around the model API, the API process's shared state (image loader,
history), routes, health and error handling."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import litserve as ls
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from litserve.utils import WorkerSetupStatus
from starlette.concurrency import run_in_threadpool

from visionrag.server.auth import install_auth
from visionrag.server.errors import ConfigError, install_error_handlers
from visionrag.server.history_import import router as import_router
from visionrag.server.history_routes import router as history_router
from visionrag.server.lifecycle import ShutdownRequested, install_fork_guard, shutdown_on_signals
from visionrag.server.logs import configure_logging
from visionrag.server.metrics import install_metrics
from visionrag.server.openapi import install_openapi
from visionrag.server.ping import ping, readiness
from visionrag.server.preflight import preflight
from visionrag.server.routes import replace_routes
from visionrag.server.settings import Settings
from visionrag.server.spec import VisionSpec
from visionrag.server.ui import register_ui
from visionrag.server.worker import VisionAPI

log = logging.getLogger(__name__)


class VisionServer(ls.LitServer):
    """LitServer that starts answering HTTP while the model loads (so /health can say "loading" instead
    of refusing connections), and stops as a whole when any part of it fails: a model worker that cannot
    load or dies, or an API server process that exits (a failed lifespan, a crash). `failure` then says
    why and `serve` exits non-zero."""

    failure: str | None = None
    stopping: threading.Event | None = None  # set by `serve` when a signal asks for the shutdown
    _api_processes: dict[int, Any] | None = None

    def verify_worker_status(self) -> None:
        threading.Thread(target=self._watch, name="server-watch", daemon=True).start()

    def _start_worker_monitoring(self, manager: Any, uvicorn_workers: Any) -> None:
        """LitServe's monitor would shut down from its own thread while the main thread keeps waiting;
        `_watch` covers the same deaths and lets the main thread run the one shutdown."""

    def _start_server(self, *args: Any, **kwargs: Any) -> dict[int, Any]:
        self._api_processes = super()._start_server(*args, **kwargs)
        return self._api_processes

    def _watch(self) -> None:
        announced = False
        try:
            while not self._shutdown_event.is_set():
                problem = self._problem()
                if problem and self.stopping is not None and self.stopping.is_set():
                    return  # children exiting after SIGTERM / SIGINT: the shutdown, not a failure
                if problem:
                    self.failure = problem
                    log.error("%s; shutting down", problem)
                    self._shutdown_event.set()
                    return
                statuses = list(self.workers_setup_status.values())
                if not announced and statuses and all(s == WorkerSetupStatus.READY for s in statuses):
                    log.info("all %d model workers are ready", len(statuses))
                    announced = True
                time.sleep(0.2)
        except (OSError, EOFError):  # the manager is gone: the server is already shutting down
            return

    def _problem(self) -> str | None:
        if WorkerSetupStatus.ERROR in self.workers_setup_status.values():
            return "a model worker failed to start (see its traceback above)"
        for proc in getattr(self, "inference_workers", None) or []:
            if not proc.is_alive() and proc.exitcode is not None:
                return f"model worker {proc.pid} exited with code {proc.exitcode}"
        for proc in (self._api_processes or {}).values():
            if not proc.is_alive():
                code = getattr(proc, "exitcode", None)
                return f"the API server process exited (code {code}; see the log above)"
        return None

    def _init_manager(self, num_api_servers: int) -> Any:
        """LitServe's manager, plus one shared dict through which the API process tells the model workers
        which requests' clients went away (continuous batching retires those rows at the next step)."""
        manager = super()._init_manager(num_api_servers)
        cancelled = manager.dict()
        for lit_api in self.litapi_connector:
            lit_api.cancelled = cancelled
            if lit_api.spec is not None:
                lit_api.spec.cancelled = cancelled
        return manager

    def worker_states(self) -> dict[str, str]:
        statuses = getattr(self, "workers_setup_status", None)
        return {k: str(v) for k, v in dict(statuses or {}).items()}


def resolve_devices(settings: Settings) -> tuple[str, int]:
    """(accelerator, number of workers): one worker per GPU to replicate, one worker to shard."""
    if settings.accelerator == "cpu":
        return "cpu", 1
    import torch

    visible = torch.cuda.device_count()
    if visible == 0:
        if settings.accelerator == "cuda":
            raise ConfigError(
                "accelerator is cuda but no GPU is visible; check CUDA_VISIBLE_DEVICES and drivers"
            )
        return "cpu", 1
    wanted = visible if settings.devices == "auto" else int(settings.devices)
    if wanted > visible:
        raise ConfigError(f"devices={wanted} but only {visible} GPUs are visible")
    if settings.placement == "shard":
        return "cuda", 1
    return "cuda", wanted


def build_server(settings: Settings) -> VisionServer:
    accelerator, devices = resolve_devices(settings)
    api = VisionAPI(settings, VisionSpec(settings))
    server = VisionServer(
        api,
        accelerator=accelerator,
        devices=devices,
        workers_per_device=1,
        timeout=settings.generation_timeout or False,
        max_payload_size=settings.max_body_bytes,
        model_metadata={"model": settings.served_name, "placement": settings.placement},
    )
    app = server.app
    app.state.settings = settings
    app.state.server = server
    replace_routes(app, {("GET", "/health")})
    app.add_api_route("/health", _health, methods=["GET"], summary="200 once the model and history are ready")
    app.add_api_route("/ping", ping, methods=["GET"], summary="204 while loading, 200 ready, 503 broken")
    app.include_router(history_router)
    app.include_router(import_router)
    register_ui(app)
    install_error_handlers(app)
    install_auth(app, settings)
    install_metrics(app, api.spec)
    _wrap_lifespan(app, settings)
    install_openapi(app, settings)
    return server


async def _health(request: Request) -> JSONResponse:
    """Ready means: every model worker has loaded the model and the journal is open. The vector index may
    be catching up or unreachable without taking the model endpoints down; its state is reported."""
    state, workers, history_status = await readiness(request)
    body = {
        "status": state,
        "model": request.app.state.settings.served_name,
        "workers": workers,
        "history": history_status,
    }
    return JSONResponse(body, status_code=200 if state == "ok" else 503)


def _wrap_lifespan(app: FastAPI, settings: Settings) -> None:
    """Open the API process's shared state when it starts serving: it runs in exactly one process, so
    the embedded vector store has exactly one owner however many GPU workers there are."""
    from visionrag.search.history import History
    from visionrag.server.fetch import ImageLoader

    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app_: FastAPI) -> AsyncIterator[None]:
        app_.state.images = ImageLoader(settings)
        history = History(settings.history_config())
        await run_in_threadpool(history.start)
        app_.state.history = history
        try:
            async with inner(app_):
                yield
        finally:
            await run_in_threadpool(history.close)

    app.router.lifespan_context = lifespan


def serve(settings: Settings) -> int:
    """Run until SIGTERM / SIGINT (exit 0 after a clean shutdown) or until a part of the server fails
    (exit 1): a model worker that cannot load, an API server whose start-up fails. Checks what can be
    checked before anything is spawned (`preflight`), and makes every child die with this process."""
    configure_logging(settings.log_level)
    log.info("settings: %s", settings.describe())
    preflight(settings)
    install_fork_guard()
    stopping = threading.Event()
    server: VisionServer | None = None
    with shutdown_on_signals(on_signal=stopping.set):
        try:
            server = build_server(settings)
            server.stopping = stopping
            server.uvicorn_graceful_timeout = settings.shutdown_grace
            server.run(
                host=settings.host,
                port=settings.port,
                num_api_servers=1,
                generate_client_file=False,
                log_level=settings.log_level.lower(),
            )
        except ShutdownRequested:  # before LitServe's own shutdown path: the children die with us
            # a signal that lands while a failure is already shutting the server down does not hide it
            if server is None or not server.failure:
                return 0
    if server.failure:
        log.error("server stopped: %s", server.failure)
        return 1
    return 0
