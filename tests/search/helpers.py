"""Small helpers of the history tests: distinct drawing-like images, interactions, polling."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

from PIL import Image, ImageDraw

from visionrag.search.interaction import Interaction

T = TypeVar("T")


# The fields every search result carries (DESIGN.md's HTTP contract).
RESULT_FIELDS = {
    "id",
    "score",
    "created_at",
    "image_url",
    "query",
    "answer",
    "model",
    "user",
    "tags",
    "image",
}


def diagram(seed: int, size: tuple[int, int] = (160, 120)) -> Image.Image:
    """A diagram-like picture (boxes and lines, few colours) that differs clearly from seed to seed."""
    import random

    rnd = random.Random(seed)
    img = Image.new("RGB", size, tuple(rnd.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    w, h = size
    for _ in range(6):
        x0, y0 = rnd.randrange(w - 20), rnd.randrange(h - 20)
        x1, y1 = x0 + rnd.randrange(10, w // 2), y0 + rnd.randrange(10, h // 2)
        draw.rectangle((x0, y0, x1, y1), fill=tuple(rnd.randrange(256) for _ in range(3)))
        draw.line(
            (rnd.randrange(w), rnd.randrange(h), rnd.randrange(w), rnd.randrange(h)), fill=(0, 0, 0), width=3
        )
    return img


def interaction(
    answer: str = "an answer",
    *,
    query: str = "what does this show?",
    user: str | None = None,
    tags: tuple[str, ...] = (),
    created_at: datetime | None = None,
) -> Interaction:
    made = Interaction.create(
        image_url="upload",
        query=query,
        answer=answer,
        model="tiny",
        image_bytes=answer.encode(),
        user=user,
        tags=tags,
    )
    if created_at is not None:
        made.created_at = created_at
        made.__post_init__()
    return made


def wait_for(
    check: Callable[[], T], timeout: float = 20.0, interval: float = 0.02, what: str = "condition"
) -> T:
    """Poll `check` until it returns something truthy, failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
