"""`VisionRAG`: the Python client of a VisionRAG server (requests-based).

    from visionrag.clients import VisionRAG

    rag = VisionRAG("http://localhost:8000", api_key="...")
    answer = rag.ask("diagram.png", "Which services talk to the database?")
    for piece in (stream := rag.ask_stream("https://example.com/er.png", "List the tables.")):
        print(piece, end="", flush=True)
    print(stream.answer.id)
    hits = rag.search(text="payment service", limit=5)

Pass your own `requests.Session` to add proxies or adapters, or to test without a server
(see `clients.testing.MockAdapter`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import requests

from visionrag.clients.errors import (
    ConnectionFailed,
    InvalidArgument,
    Timeout,
    VisionRAGError,
    api_error,
    detail_text,
    reason_of,
)
from visionrag.clients.stream import Stream
from visionrag.clients.types import Answer, Imported, Interaction, SearchHit

DEFAULT_URL = "http://localhost:8000"
DEFAULT_TIMEOUT: tuple[float, float] = (10.0, 300.0)
"""(connect, read) seconds; the read timeout bounds the wait for each piece of an answer."""

ImageInput = str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes]
ContextSpec = bool | int | dict[str, Any] | None
"""`context` of `ask`: True (the server's defaults: 3 earlier interactions), a number of them (1..20), or
the options `{"k", "against", "min_score", "user", "tags"}`; None or False: no context."""
TimeoutSpec = float | tuple[float, float]

_URL_SCHEMES = ("http://", "https://", "data:")
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)


def _sniff(data: bytes) -> str:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((mime for magic, mime in _MAGIC if data.startswith(magic)), "application/octet-stream")


def _image_source(image: ImageInput) -> tuple[str | None, tuple[str, bytes, str] | None]:
    """(image_url, None) for a URL string, else (None, multipart file part)."""
    if isinstance(image, str) and image.strip().lower().startswith(_URL_SCHEMES):
        return image.strip(), None
    if isinstance(image, bytes | bytearray | memoryview):
        data, name = bytes(image), "image"
    elif isinstance(image, str | os.PathLike):
        path = Path(image).expanduser()
        data, name = path.read_bytes(), path.name
    elif hasattr(image, "read"):
        data, name = image.read(), Path(str(getattr(image, "name", "image"))).name
    else:
        raise TypeError(
            f"image must be a path, an http(s) or data URL, bytes or a binary file, not {image!r}"
        )
    if not data:
        raise InvalidArgument(f"the image {name!r} is empty")
    mime = _sniff(data)
    if "." not in name and mime.startswith("image/"):
        name = f"{name}.{mime.split('/')[1]}"
    return None, (name, data, mime)


def _time(value: datetime | str | None) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else value


def _form_value(value: Any) -> Any:
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    return str(value)


def _context_field(context: ContextSpec) -> dict[str, Any]:
    if context is None or context is False:
        return {}
    if context is True or isinstance(context, dict):
        return {"context": context}
    if isinstance(context, int):
        return {"context": {"k": context}}
    raise TypeError(f"context must be True, a number of interactions or a dict of options, not {context!r}")


class VisionRAG:
    """Client of one VisionRAG server.

    url: server address (default: $VISIONRAG_URL or http://localhost:8000). api_key: sent as
    `Authorization: Bearer KEY` (default: $VISIONRAG_API_KEY). timeout: seconds, or (connect, read).
    retries: extra attempts after a connection error, for reads and deletes only (never `ask`).
    session: a `requests.Session` to use instead of a new one (it is not closed by `close()`).
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        timeout: TimeoutSpec = DEFAULT_TIMEOUT,
        retries: int = 2,
        session: requests.Session | None = None,
        backoff: float = 0.25,
    ) -> None:
        self.url = (url or os.environ.get("VISIONRAG_URL") or DEFAULT_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("VISIONRAG_API_KEY") or None
        self.timeout = timeout
        self.retries = max(0, int(retries))
        self.backoff = backoff
        self._owns_session = session is None
        self.session = session or requests.Session()

    def __repr__(self) -> str:
        return f"VisionRAG(url={self.url!r})"

    def close(self) -> None:
        """Close the HTTP session if this client created it."""
        if self._owns_session:
            self.session.close()

    def __enter__(self) -> VisionRAG:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- questions ---------------------------------------------------------------------------------

    def ask(
        self,
        image: ImageInput,
        question: str,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        user: str | None = None,
        tags: list[str] | None = None,
        store: bool = True,
        context: ContextSpec = None,
    ) -> Answer:
        """Ask `question` about `image` (a local path or bytes are uploaded; a URL is sent as is).

        `context=3` answers with the 3 most similar earlier interactions from the history put into the
        prompt (see `ContextSpec`); `answer.context` lists the ones used."""
        fields = self._ask_fields(question, max_tokens, temperature, top_p, user, tags, store, False)
        fields.update(_context_field(context))
        response = self._post_with_image("/predict", image, fields, idempotent=False)
        return Answer.from_dict(self._json(response))

    def ask_stream(
        self,
        image: ImageInput,
        question: str,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        user: str | None = None,
        tags: list[str] | None = None,
        store: bool = True,
        context: ContextSpec = None,
    ) -> Stream:
        """Like `ask`, but returns a `Stream` yielding the answer's text as it is generated.

        Iterate it for the pieces; `stream.answer` holds the final `Answer` (id, model, usage, context)
        after.
        """
        fields = self._ask_fields(question, max_tokens, temperature, top_p, user, tags, store, True)
        fields.update(_context_field(context))
        response = self._post_with_image("/predict", image, fields, idempotent=False, stream=True)
        return Stream(response)

    @staticmethod
    def _ask_fields(question, max_tokens, temperature, top_p, user, tags, store, stream) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "user_query": question,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "user": user,
            "tags": list(tags) if tags else None,
            "store": None if store else False,
            "stream": True if stream else None,
        }
        return {k: v for k, v in fields.items() if v is not None}

    # -- history -----------------------------------------------------------------------------------

    def search(
        self,
        text: str | None = None,
        image: ImageInput | None = None,
        limit: int = 10,
        offset: int = 0,
        against: str = "both",
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        user: str | None = None,
        tags: list[str] | None = None,
    ) -> list[SearchHit]:
        """Find past interactions like `text` and/or `image`; `against` is "images", "answers" or "both"."""
        if not text and image is None:
            raise InvalidArgument("search needs text, an image, or both")
        fields: dict[str, Any] = {
            "text": text or None,
            "limit": limit,
            "offset": offset or None,
            "against": against,
            "since": _time(since),
            "until": _time(until),
            "user": user,
            "tags": list(tags) if tags else None,
        }
        fields = {k: v for k, v in fields.items() if v is not None}
        if image is None:
            response = self._request("POST", "/history/search", json=fields, idempotent=True)
        else:
            response = self._post_with_image("/history/search", image, fields, idempotent=True)
        return [SearchHit.from_dict(item) for item in self._json(response).get("results", [])]

    def add(
        self,
        image: ImageInput,
        answer: str,
        query: str = "",
        user: str | None = None,
        tags: list[str] | None = None,
        created_at: datetime | str | None = None,
    ) -> Imported:
        """Store a document (an image and its caption or description, as `answer`) in the history without
        asking the model; it is then searchable and used as context like an answer. Sending the same
        image and text again stores nothing new: `Imported.created` is False then."""
        if not answer or not answer.strip():
            raise InvalidArgument("answer (the caption or description) must not be empty")
        fields: dict[str, Any] = {
            "answer": answer,
            "query": query or None,
            "user": user,
            "tags": list(tags) if tags else None,
            "created_at": _time(created_at),
        }
        fields = {k: v for k, v in fields.items() if v is not None}
        # idempotent on the server (the id is derived from the image and the text), so it may be retried
        response = self._post_with_image("/history", image, fields, idempotent=True)
        return Imported(Interaction.from_dict(self._json(response)), created=response.status_code == 201)

    def history(self, limit: int = 20, offset: int = 0, user: str | None = None) -> list[Interaction]:
        """Stored interactions, newest first."""
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if user:
            params["user"] = user
        response = self._request("GET", "/history", params=params, idempotent=True)
        return [Interaction.from_dict(item) for item in self._json(response).get("results", [])]

    def iter_history(self, user: str | None = None, page_size: int = 100) -> Iterator[Interaction]:
        """Every stored interaction, newest first, fetched page by page (each yielded once)."""
        seen: set[str] = set()
        offset = 0
        while True:
            page = self.history(limit=page_size, offset=offset, user=user)
            for item in page:
                if item.id not in seen:
                    seen.add(item.id)
                    yield item
            if len(page) < page_size:
                return
            offset += len(page)

    def get(self, id: str) -> Interaction:
        """One interaction; raises `NotFound` if unknown."""
        return Interaction.from_dict(self._json(self._request("GET", self._item(id), idempotent=True)))

    def delete(self, id: str) -> None:
        """Remove an interaction from the journal and the index; raises `NotFound` if unknown."""
        self._request("DELETE", self._item(id), idempotent=True).close()

    def image(self, id: str) -> bytes:
        """The stored copy of an interaction's image (longest side at most 512 px)."""
        return self._request("GET", self._item(id) + "/image", idempotent=True).content

    def health(self) -> dict[str, Any]:
        """The server's health report; raises `ServiceUnavailable` while it is not ready."""
        response = self._request("GET", "/health", idempotent=True)
        try:
            body = response.json()
        except ValueError:
            return {"status": response.text.strip() or "ok"}
        return body if isinstance(body, dict) else {"status": body}

    @staticmethod
    def _item(id: str) -> str:
        if not id:
            raise InvalidArgument("an interaction id is required")
        return "/history/" + quote(str(id), safe="")

    # -- HTTP --------------------------------------------------------------------------------------

    def _post_with_image(
        self, path: str, image: ImageInput, fields: dict[str, Any], *, idempotent: bool, stream: bool = False
    ) -> requests.Response:
        url, part = _image_source(image)
        if url is not None:
            return self._request(
                "POST", path, json={"image_url": url, **fields}, idempotent=idempotent, stream=stream
            )
        form = {k: _form_value(v) for k, v in fields.items()}
        return self._request(
            "POST", path, data=form, files={"image": part}, idempotent=idempotent, stream=stream
        )

    def _request(self, method: str, path: str, *, idempotent: bool, **kwargs: Any) -> requests.Response:
        """Send one request; retry connection errors `retries` times when `idempotent`; map errors."""
        headers = {"Accept": "application/json", "User-Agent": "visionrag-client"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        attempts = 1 + (self.retries if idempotent else 0)
        for attempt in range(attempts):
            retry = attempt + 1 < attempts
            try:
                response = self.session.request(
                    method, self.url + path, headers=headers, timeout=self.timeout, **kwargs
                )
            except requests.exceptions.ConnectTimeout as exc:
                error: VisionRAGError = Timeout(f"connecting to {self.url} timed out ({reason_of(exc)})")
            except requests.exceptions.Timeout as exc:
                raise Timeout(f"{method} {path}: the server at {self.url} did not answer in time") from exc
            except requests.exceptions.ConnectionError as exc:
                error = ConnectionFailed(f"cannot reach the VisionRAG server at {self.url}: {reason_of(exc)}")
            except requests.exceptions.RequestException as exc:
                raise VisionRAGError(f"{method} {path}: {exc}") from exc
            else:
                if response.status_code >= 400:
                    raise self._error(response, method, path)
                return response
            if not retry:
                raise error
            time.sleep(self.backoff * 2**attempt)
        raise AssertionError("unreachable")

    @staticmethod
    def _error(response: requests.Response, method: str, path: str) -> VisionRAGError:
        try:
            body = response.json()
            detail = body.get("detail", body) if isinstance(body, dict) else body
        except ValueError:
            detail = response.text[:300] or response.reason or "no detail"
        finally:
            response.close()
        return api_error(response.status_code, detail_text(detail), method=method, path=path)

    @staticmethod
    def _json(response: requests.Response) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError as exc:
            raise VisionRAGError(f"the server sent invalid JSON: {response.text[:200]!r}") from exc
        if not isinstance(body, dict):
            raise VisionRAGError(f"the server sent unexpected JSON: {str(body)[:200]}")
        return body
