"""Route-table surgery shared by the app and the web page: LitServe registers some routes itself
(`GET /`, `GET /health`) that we serve differently."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.routing import APIRoute


def replace_routes(app: FastAPI, drop: set[tuple[str, str]]) -> None:
    """Remove the routes whose (method, path) is in `drop`, so ours can take their place."""
    kept = []
    for route in app.router.routes:
        if isinstance(route, APIRoute) and any((m, route.path) in drop for m in route.methods):
            continue
        kept.append(route)
    app.router.routes[:] = kept
