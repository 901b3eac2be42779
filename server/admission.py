"""The bound on requests waiting or running in the API process (`VISIONRAG_MAX_QUEUE`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from starlette.background import BackgroundTask

from visionrag.server.errors import Overloaded
from visionrag.server.settings import Settings


class Admitting(Protocol):
    """What an Admission counts on: the endpoint's requests in progress and its settings."""

    inflight: int
    settings: Settings


class Admission:
    """Bounds the requests waiting or running; the excess gets 503 with Retry-After, not a longer queue.
    A streamed answer keeps its place until its last line is sent (`after`) or its client goes away
    (`background`, run by the StreamingResponse either way); the place is given back exactly once."""

    def __init__(self, spec: Admitting) -> None:
        self.spec = spec
        self.handed_over = False
        self.released = False

    async def __aenter__(self) -> Admission:
        if self.spec.inflight >= self.spec.settings.max_queue:
            raise Overloaded(
                f"the server is busy ({self.spec.inflight} requests in progress); retry shortly",
                headers={"Retry-After": "2"},
            )
        self.spec.inflight += 1
        return self

    async def __aexit__(self, *exc: object) -> None:
        if not self.handed_over:
            self.release()

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.spec.inflight -= 1

    def after(self, body: AsyncIterator[str]) -> AsyncIterator[str]:
        """The streamed body; from now on the body (not the handler's `async with`) gives the place back."""
        self.handed_over = True
        return self._release_after(body)

    def background(self) -> BackgroundTask:
        """For the StreamingResponse: releases even if the body never ran (client gone before it began)."""
        return BackgroundTask(self.release)

    async def _release_after(self, body: AsyncIterator[str]) -> AsyncIterator[str]:
        try:
            async for part in body:
                yield part
        finally:
            self.release()
