"""The server's exceptions and the one place that maps every package's exceptions to HTTP answers.

Every error answer is JSON `{"detail": "..."}`; a message says what failed and what to do about it.
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from visionrag.search.errors import HistoryError, InvalidQuery, NotFound, StoreUnavailable

log = logging.getLogger(__name__)


class VisionRAGError(Exception):
    """Base of the server's errors; `status_code` is the HTTP answer."""

    status_code = 500
    code: str | None = None  # OpenAI's error code (a string), on the /v1/* routes

    def __init__(
        self,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers
        self.param = param  # the request parameter at fault, for OpenAI's envelope
        if code is not None:
            self.code = code


class ConfigError(VisionRAGError):
    """A setting is wrong; raised at start-up, before anything is served."""


class BadRequest(VisionRAGError):
    status_code = 400


class UnsupportedParameter(BadRequest):
    """An OpenAI parameter this server does not implement: refused, never silently ignored."""

    code = "unsupported_parameter"


class Unauthorized(VisionRAGError):
    status_code = 401


class PayloadTooLarge(VisionRAGError):
    status_code = 413


class UnsupportedImage(VisionRAGError):
    """The bytes are not an image we can decode."""

    status_code = 415


class InvalidInput(VisionRAGError):
    """Well-formed JSON whose values are wrong (types, ranges, missing fields)."""

    status_code = 422


class ImageFetchError(VisionRAGError):
    """An image URL could not be fetched: unreachable, refused, timed out, not found."""

    status_code = 422


class Overloaded(VisionRAGError):
    status_code = 503


# Errors of the other packages, mapped here and nowhere else.
_FOREIGN_STATUS: dict[type[Exception], int] = {
    NotFound: 404,
    InvalidQuery: 422,
    StoreUnavailable: 503,
    HistoryError: 500,
}


def status_for(exc: Exception) -> int:
    if isinstance(exc, VisionRAGError):
        return exc.status_code
    for kind, status in _FOREIGN_STATUS.items():
        if isinstance(exc, kind):
            return status
    return 500


def openai_error(detail: str, status: int, *, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error object: `type` is `invalid_request_error` for every 4xx (401 and 404 included, as
    OpenAI answers them) and `server_error` otherwise; `code` is a string or null."""
    kind = "invalid_request_error" if 400 <= status < 500 else "server_error"
    return {"message": detail, "type": kind, "param": param, "code": code}


def error_body(
    detail: str, status: int, path: str = "", *, param: str | None = None, code: str | None = None
) -> dict:
    """`{"detail"}` everywhere; on the OpenAI routes (/v1/*) also OpenAI's `{"error": {"message", "type",
    "param", "code"}}`, which is what the openai client and other OpenAI clients show their users."""
    detail = detail.encode("utf-8", "backslashreplace").decode("utf-8")  # a lone surrogate would not encode
    body: dict = {"detail": detail}
    if path.startswith("/v1/"):
        body["error"] = openai_error(detail, status, param=param, code=code)
    return body


def error_response(exc: Exception, path: str = "") -> JSONResponse:
    status = status_for(exc)
    headers = getattr(exc, "headers", None)
    if status >= 500 and not isinstance(exc, (VisionRAGError, StoreUnavailable)):
        log.error("unhandled error", exc_info=exc)
        return JSONResponse(
            error_body("internal server error; see the server log", 500, path), status_code=500
        )
    detail = str(getattr(exc, "detail", exc))
    body = error_body(
        detail, status, path, param=getattr(exc, "param", None), code=getattr(exc, "code", None)
    )
    return JSONResponse(body, status_code=status, headers=headers)


def describe_validation_error(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{where or 'body'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    async def known(request: Request, exc: Exception) -> JSONResponse:
        return error_response(exc, request.url.path)

    async def validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        body = error_body(describe_validation_error(exc), 422, request.url.path)
        return JSONResponse(body, status_code=422)

    async def http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":  # no such route
            detail = f"no route {request.method} {request.url.path}; see /docs for the routes"
        body = error_body(detail, exc.status_code, request.url.path)
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    app.add_exception_handler(VisionRAGError, known)
    for kind in _FOREIGN_STATUS:
        app.add_exception_handler(kind, known)
    app.add_exception_handler(RequestValidationError, validation)
    # Starlette's class: the router's own 404 / 405 are Starlette HTTPExceptions, which a handler for
    # FastAPI's subclass would not catch
    app.add_exception_handler(StarletteHTTPException, http)
