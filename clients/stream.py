"""`Stream`: an answer of `VisionRAG.ask_stream` read as it is generated (newline-delimited JSON)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import requests

from visionrag.clients.errors import (
    ConnectionFailed,
    Timeout,
    VisionRAGError,
    api_error,
    detail_text,
    reason_of,
)
from visionrag.clients.types import Answer


class Stream:
    """The answer of `ask_stream` as it is generated: iterate for text pieces, then read `answer`.

    Use it as a context manager (or call `close()`) to drop the connection when you stop early.
    """

    def __init__(self, response: requests.Response) -> None:
        self._response = response
        self._pieces: list[str] = []
        self._consumed = False
        self.answer: Answer | None = None

    @property
    def text(self) -> str:
        """The text received so far."""
        return "".join(self._pieces)

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._response.close()

    def __iter__(self) -> Iterator[str]:
        if self._consumed:
            raise VisionRAGError("a Stream can be iterated only once")
        self._consumed = True
        try:
            for line in self._lines():
                piece = self._handle(line)
                if piece:
                    self._pieces.append(piece)
                    yield piece
        finally:
            self.close()
        if self.answer is None:
            raise VisionRAGError("the server closed the stream before the answer was complete")

    def _handle(self, line: bytes) -> str | None:
        try:
            event = json.loads(line)
        except ValueError as exc:
            raise VisionRAGError(f"the server sent an invalid stream line: {line[:200]!r}") from exc
        if not isinstance(event, dict):
            return None
        if "error" in event:
            error = event["error"] if isinstance(event["error"], dict) else {"detail": event["error"]}
            status = int(error.get("status") or 500)
            raise api_error(status, detail_text(error.get("detail", "error during generation")))
        piece = event.get("delta")
        if event.get("done") or ("output" in event and piece is None):
            self.answer = Answer.from_dict({**event, "output": event.get("output", self.text)})
            return None
        return piece if isinstance(piece, str) else None

    def _lines(self) -> Iterator[bytes]:
        pending = b""
        try:
            for chunk in self._response.iter_content(chunk_size=None):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                yield from (line for line in lines if line.strip())
        except requests.exceptions.Timeout as exc:
            raise Timeout("the server stopped sending the answer (read timed out)") from exc
        except requests.exceptions.RequestException as exc:
            if "timed out" in str(exc).lower():  # requests wraps read timeouts in ConnectionError here
                raise Timeout("the server stopped sending the answer (read timed out)") from exc
            raise ConnectionFailed(f"the connection was lost during the answer: {reason_of(exc)}") from exc
        if pending.strip():
            yield pending
