"""Exceptions raised by the VisionRAG client.

Every error is a `VisionRAGError`. An answer of the server with a 4xx or 5xx status becomes an `APIError`
(or the subclass for that status) carrying the server's `detail` and the `status`; a server that cannot
be reached raises `ConnectionFailed`, one that does not answer in time raises `Timeout`.
"""

from __future__ import annotations

import re
from typing import Any


class VisionRAGError(Exception):
    """Base of every error the client raises."""


class ConnectionFailed(VisionRAGError, ConnectionError):
    """The server could not be reached (refused, name not resolved, connection dropped)."""


class Timeout(VisionRAGError, TimeoutError):
    """The server did not answer within the client's timeout."""


class InvalidArgument(VisionRAGError, ValueError):
    """An argument cannot be sent as given (empty image, search without text or image)."""


class APIError(VisionRAGError):
    """The server answered with an error status; `detail` is its message."""

    def __init__(self, status: int, detail: str, *, method: str = "", path: str = "") -> None:
        self.status = status
        self.detail = detail
        self.method = method
        self.path = path
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f" ({self.method} {self.path})" if self.method and self.path else ""
        return f"{self.status} {_REASONS.get(self.status, 'error')}{where}: {self.detail}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status!r}, detail={self.detail!r})"


class BadRequest(APIError):
    """400: the request was malformed."""


class Unauthorized(APIError):
    """401: missing or wrong API key."""


class NotFound(APIError):
    """404: no such interaction (or route)."""


class PayloadTooLarge(APIError):
    """413: the image or the body is over the server's limit."""


class UnsupportedMediaType(APIError):
    """415: the bytes are not an image the server can decode."""


class UnprocessableEntity(APIError):
    """422: invalid values, or an image URL the server could not or would not fetch."""


class ServerError(APIError):
    """5xx: the server failed."""


class ServiceUnavailable(ServerError):
    """503: the server is not ready or is overloaded."""


_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}

_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequest,
    401: Unauthorized,
    404: NotFound,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: UnprocessableEntity,
    503: ServiceUnavailable,
}


def api_error(status: int, detail: str, *, method: str = "", path: str = "") -> APIError:
    """The `APIError` subclass for `status`."""
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else APIError)
    return cls(status, detail, method=method, path=path)


def detail_text(detail: Any) -> str:
    """One line from a server's `detail`: a string, or FastAPI's list of validation errors."""
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
                msg = str(item.get("msg", item))
                parts.append(f"{loc}: {msg}" if loc else msg)
            else:
                parts.append(str(item))
        detail = "; ".join(parts)
    elif not isinstance(detail, str):
        detail = str(detail)
    return " ".join(detail.split())


def reason_of(exc: Exception) -> str:
    """A short reason from a requests exception ("Connection refused")."""
    text = str(exc)
    found = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if found:
        return found.group(1).strip()
    for marker in ("Read timed out", "timed out", "Connection aborted", "RemoteDisconnected"):
        if marker in text:
            return marker.lower()
    return text.splitlines()[0][:200] if text else type(exc).__name__
