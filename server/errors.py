"""The server's exceptions and the one place that maps every package's exceptions to HTTP answers.

Every error answer is JSON `{"detail": "..."}`; a message says what failed and what to do about it.
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import HTTPException, RequestValidationError
from fastapi.responses import JSONResponse

from visionrag.search.errors import HistoryError, InvalidQuery, NotFound, StoreUnavailable

log = logging.getLogger(__name__)


class VisionRAGError(Exception):
    """Base of the server's errors; `status_code` is the HTTP answer."""

    status_code = 500

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers


class ConfigError(VisionRAGError):
    """A setting is wrong; raised at start-up, before anything is served."""


class BadRequest(VisionRAGError):
    status_code = 400


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


class GenerationTimeout(VisionRAGError):
    status_code = 504


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


_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    503: "overloaded_error",
    504: "timeout_error",
}


def error_body(detail: str, status: int, path: str = "") -> dict:
    """`{"detail"}` everywhere; on the OpenAI routes also OpenAI's `{"error": {"message", ...}}`, which is
    what the openai client shows its users."""
    detail = detail.encode("utf-8", "backslashreplace").decode("utf-8")  # a lone surrogate would not encode
    body: dict = {"detail": detail}
    if path.startswith("/v1/"):
        body["error"] = {"message": detail, "type": _OPENAI_TYPES.get(status, "server_error"), "code": status}
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
    return JSONResponse(error_body(detail, status, path), status_code=status, headers=headers)


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

    async def http(request: Request, exc: HTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        body = error_body(detail, exc.status_code, request.url.path)
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    app.add_exception_handler(VisionRAGError, known)
    for kind in _FOREIGN_STATUS:
        app.add_exception_handler(kind, known)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(HTTPException, http)
