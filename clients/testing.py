"""Test your code against `VisionRAG` without a server: a requests transport that calls a function.

    from visionrag.clients import VisionRAG
    from visionrag.clients.testing import MockAdapter

    def handler(request):                       # a requests.PreparedRequest
        if request.path_url == "/predict":
            return 200, {}, {"output": "Three services.", "id": "abc", "model": "m", "usage": {}}
        return 404, {}, {"detail": "not found"}

    adapter = MockAdapter(handler)
    rag = VisionRAG("http://rag.test", session=adapter.session())
    assert rag.ask(b"...png bytes...", "How many services?").output == "Three services."
    assert adapter.calls[0].json()["user_query"] == "How many services?"

A handler returns `(status, headers, body)`: body is bytes, str, a dict or list (sent as JSON), or an
iterable of bytes chunks (a streamed body, e.g. newline-delimited JSON for `ask_stream`). It may raise
a `requests` exception (`requests.ConnectionError`, `requests.ReadTimeout`) to simulate a failure.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict
from requests.utils import get_encoding_from_headers

Body = bytes | str | dict | list | Iterable[bytes] | None
Handler = Callable[[requests.PreparedRequest], tuple[int, Mapping[str, str] | None, Body]]


def parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, list[str]], dict[str, tuple]]:
    """Split a multipart/form-data body into (fields, files); files map to (filename, bytes, type)."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    fields: dict[str, list[str]] = {}
    files: dict[str, tuple] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        data = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        if filename is not None:
            files[name] = (filename, data, part.get_content_type())
        else:
            fields.setdefault(name, []).append(data.decode("utf-8"))
    return fields, files


@dataclass
class Call:
    """One request the adapter received, with what requests passed along (timeout, stream)."""

    request: requests.PreparedRequest
    timeout: Any
    stream: bool

    @property
    def method(self) -> str:
        return self.request.method or ""

    @property
    def path(self) -> str:
        return urlsplit(self.request.url or "").path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.request.url or "").query)

    @property
    def headers(self) -> CaseInsensitiveDict:
        return self.request.headers

    @property
    def body(self) -> bytes:
        body = self.request.body
        return body.encode() if isinstance(body, str) else (body or b"")

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> tuple[dict[str, list[str]], dict[str, tuple]]:
        """(fields, files) of a multipart body."""
        return parse_multipart(self.headers.get("Content-Type", ""), self.body)


class _Raw:
    """A body that requests can read whole or stream chunk by chunk."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)

    def stream(self, amt: int | None = None, decode_content: bool = True) -> Iterator[bytes]:
        for chunk in self._chunks:
            if chunk:
                yield chunk

    def read(self, amt: int | None = None, decode_content: bool = True) -> bytes:
        return b"".join(self.stream())

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close:
            close()


class MockAdapter(BaseAdapter):
    """A requests transport answering every request with `handler(request)`; records `calls`."""

    def __init__(self, handler: Handler) -> None:
        super().__init__()
        self.handler = handler
        self.calls: list[Call] = []

    def session(self) -> requests.Session:
        """A new `requests.Session` sending every http(s) request to this adapter."""
        session = requests.Session()
        session.mount("http://", self)
        session.mount("https://", self)
        return session

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: Any = True,
        cert: Any = None,
        proxies: Any = None,
    ) -> requests.Response:
        self.calls.append(Call(request, timeout, stream))
        status, headers, body = self.handler(request)
        headers = CaseInsensitiveDict(headers or {})
        if isinstance(body, dict | list):
            body = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        elif isinstance(body, str):
            body = body.encode()
            headers.setdefault("Content-Type", "text/plain; charset=utf-8")
        chunks = [body] if isinstance(body, bytes) else (body or [])
        response = requests.Response()
        response.status_code = status
        response.headers = headers
        response.raw = _Raw(chunks)
        response.url = request.url or ""
        response.request = request
        response.connection = self
        response.encoding = get_encoding_from_headers(headers)
        try:
            response.reason = HTTPStatus(status).phrase
        except ValueError:
            response.reason = ""
        if not stream:
            _ = response.content
        return response

    def close(self) -> None:
        pass


def ndjson(*events: dict[str, Any]) -> Iterator[bytes]:
    """A streamed body of newline-delimited JSON events (what /predict streams)."""
    for event in events:
        yield json.dumps(event).encode() + b"\n"
