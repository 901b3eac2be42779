"""The web page: `GET /` and `GET /ui` serve server/static/index.html, `/static/...` its scripts and styles.

The page is plain HTML/CSS/JS shipped as package data (no CDN, no build step: a pod may have no internet).
It talks to the same HTTP contract as every other client, so it needs no routes of its own; these paths
carry no data and stay public when an API key is set (server/auth.py); the page asks for the key when a
route answers 401.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from visionrag.server.routes import replace_routes

STATIC_DIR = Path(__file__).with_name("static")
PAGE_PATHS = ("/", "/ui")
STATIC_PREFIX = "/static"


async def _page() -> FileResponse:
    # no-cache: the page is small, and a stale copy after an upgrade would load stale scripts.
    return FileResponse(
        STATIC_DIR / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"}
    )


def register_ui(app: FastAPI) -> None:
    """Serve the page at / and /ui (replacing LitServe's "litserve running" at /) and /static/*."""
    replace_routes(app, {("GET", path) for path in PAGE_PATHS})
    for path in PAGE_PATHS:
        app.add_api_route(path, _page, methods=["GET"], include_in_schema=False)
    app.mount(STATIC_PREFIX, StaticFiles(directory=STATIC_DIR), name="static")
