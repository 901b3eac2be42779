"""The history part of the HTTP contract (DESIGN.md): search by text and/or image, list, get, image, delete.

The routes only translate HTTP to `History` calls (`request.app.state.history`); an image given by URL or
upload enters through the one image loader (`request.app.state.images`), with its SSRF and size rules.
Blocking work (CLIP, Qdrant, SQLite, fetching) runs in the thread pool. Errors are raised as the packages'
exceptions; server/errors.py turns them into `{"detail": ...}` with the right status.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from visionrag.search.errors import InvalidQuery
from visionrag.server.bodies import is_multipart, read_form, read_json
from visionrag.server.errors import BadRequest, InvalidInput

router = APIRouter(tags=["history"])

_SEARCH_FIELDS = {"text", "image_url", "limit", "offset", "against", "since", "until", "user", "tags"}


def _optional_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{key} must be a string, not {type(value).__name__}")
    return value


def _int(body: dict[str, Any], key: str, default: int) -> int:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{key} must be an integer, not {value!r}")
    return value


def _tags(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [t.strip() for t in value.split(",") if t.strip()]
    if isinstance(value, list) and all(isinstance(t, str) for t in value):
        return value
    raise InvalidInput("tags must be a list of strings (or a comma-separated string)")


async def _read_json(request: Request) -> dict[str, Any]:
    body = await read_json(request, request.app.state.settings)
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


@router.post("/history/search", summary="Find past interactions by text and/or image")
async def search_history(request: Request) -> JSONResponse:
    """JSON `{"text"?, "image_url"?, "limit"?, "offset"?, "against"?, "since"?, "until"?, "user"?, "tags"?}`
    or a multipart form with the same fields and an `image` file."""
    started = time.perf_counter()
    upload: bytes | None = None
    if is_multipart(request):
        body, upload = await read_form(request, request.app.state.settings)
    else:
        body = await _read_json(request)
    unknown = set(body) - _SEARCH_FIELDS
    if unknown:
        raise InvalidInput(f"unknown fields: {', '.join(sorted(unknown))}")
    text = _optional_str(body, "text")
    image_url = _optional_str(body, "image_url")
    if upload is not None and image_url:
        raise InvalidInput("send either image_url or an image file, not both")
    if not (text and text.strip()) and not image_url and upload is None:
        raise InvalidQuery("give text, image_url or an image file (or text and an image) to search with")
    images = request.app.state.images
    image = None
    if upload is not None:
        image = (await run_in_threadpool(images.load_bytes, upload)).image
    elif image_url:
        image = (await run_in_threadpool(images.load_url, image_url)).image
    history = request.app.state.history
    results = await run_in_threadpool(
        history.search,
        text,
        image,
        limit=_int(body, "limit", 10),
        offset=_int(body, "offset", 0),
        against=_optional_str(body, "against") or "both",
        since=_optional_str(body, "since"),
        until=_optional_str(body, "until"),
        user=_optional_str(body, "user"),
        tags=_tags(body.get("tags")),
    )
    took_ms = round((time.perf_counter() - started) * 1000, 1)
    return JSONResponse({"results": results, "took_ms": took_ms})


@router.get("/history", summary="Past interactions, newest first")
async def list_history(
    request: Request,
    limit: int = Query(20, ge=1, le=100),
    offset: int = Query(0, ge=0),
    user: str | None = Query(None),
) -> JSONResponse:
    results = await run_in_threadpool(request.app.state.history.list, limit, offset, user)
    return JSONResponse({"results": results})


@router.get("/history/{id}", summary="One interaction")
async def get_interaction(request: Request, id: str) -> JSONResponse:
    return JSONResponse(await run_in_threadpool(request.app.state.history.get, id))


@router.get(
    "/history/{id}/image", summary="The stored copy of an interaction's image (longest side <= 512 px)"
)
async def get_interaction_image(request: Request, id: str) -> Response:
    data, media_type = await run_in_threadpool(request.app.state.history.image, id)
    # Immutable per id; `private` because the server may sit behind an API key.
    return Response(content=data, media_type=media_type, headers={"Cache-Control": "private, max-age=86400"})


@router.delete("/history/{id}", summary="Remove an interaction from the journal and the index")
async def delete_interaction(request: Request, id: str) -> JSONResponse:
    await run_in_threadpool(request.app.state.history.delete, id)
    return JSONResponse({"id": id, "deleted": True})
