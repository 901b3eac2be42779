"""The API key: with `settings.api_key` set, every route but `GET /health`, `GET /ping` and the web page's static files
needs `Authorization: Bearer KEY` or `X-API-Key: KEY`.

A pure ASGI middleware (not `BaseHTTPMiddleware`, which would buffer streamed answers) placed around the
whole app, so it covers LitServe's own routes (/info, /docs, /openapi.json), the model endpoints, the
history routes and /metrics alike. Keys are compared with `hmac.compare_digest` (constant time).
LitServe's LIT_SERVER_API_KEY is not used: it is read at import time and would also lock /health.
"""

from __future__ import annotations

import hmac
import json

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from visionrag.server.errors import error_body
from visionrag.server.settings import Settings

# Open without a key (GET and HEAD only): the health and readiness probes and the web page's static files
# (server/ui.py).
PUBLIC_PATHS = frozenset({"/health", "/ping", "/", "/ui", "/ui/", "/favicon.ico"})
PUBLIC_PREFIXES = ("/static/",)
_OPEN_METHODS = frozenset({"GET", "HEAD"})

MISSING = (
    "this server needs an API key: send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
    " (the server's VISIONRAG_API_KEY)"
)
WRONG = (
    "the API key is wrong: send the server's VISIONRAG_API_KEY as 'Authorization: Bearer <key>'"
    " or 'X-API-Key: <key>'"
)


def is_public(method: str, path: str) -> bool:
    return method in _OPEN_METHODS and (path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES))


def presented_keys(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    """Every key the request offers: the token of `Authorization: Bearer ...` and `X-API-Key`."""
    keys = []
    for name, value in headers:
        name = name.lower()
        if name == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                keys.append(token.strip())
        elif name == b"x-api-key" and value.strip():
            keys.append(value.strip())
    return keys


def key_matches(expected: bytes, offered: list[bytes]) -> bool:
    """True if any offered key equals `expected`; every offer is compared, in constant time each."""
    ok = False
    for key in offered:
        ok |= hmac.compare_digest(expected, key)
    return ok


class APIKeyMiddleware:
    def __init__(self, app: ASGIApp, *, api_key: str) -> None:
        self.app = app
        self.expected = api_key.encode("utf-8")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or is_public(scope.get("method", "GET"), scope["path"]):
            await self.app(scope, receive, send)
            return
        offered = presented_keys(scope.get("headers") or [])
        if key_matches(self.expected, offered):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        detail = WRONG if offered else MISSING
        # on /v1/* also OpenAI's envelope, so OpenAI clients show the message, not just "Error code: 401"
        body = json.dumps(error_body(detail, 401, scope["path"], code="invalid_api_key")).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b'Bearer realm="visionrag"'),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def install_auth(app: FastAPI, settings: Settings) -> None:
    """Put the key check around the whole app when a key is configured; without one, change nothing."""
    if settings.api_key:
        app.add_middleware(APIKeyMiddleware, api_key=settings.api_key)
