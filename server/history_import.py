"""`POST /history`: store a document (an image and its caption or description) without generating.

A team with a folder of captioned diagrams puts them into the history this way (`visionrag import` calls
it per document); they are then found by /history/search and used as context like answers are. The image
enters through the one image loader (same fetch rules and limits as /predict), the row is durable in the
journal before the 201 goes out, and the indexer embeds it off the request path.

Importing is idempotent: the id is derived from the image's sha256, the question and the answer, so sending
the same document again stores nothing new and answers 200 with the interaction already there (a re-run
of an interrupted import skips what it already sent).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictStr
from starlette.concurrency import run_in_threadpool

from visionrag.search.history import parse_time
from visionrag.search.interaction import Interaction
from visionrag.server.bodies import is_multipart, read_form, read_json, validate
from visionrag.server.errors import BadRequest, InvalidInput
from visionrag.server.inputs import Tags

router = APIRouter(tags=["history"])

IMPORT_MODEL = "import"  # the `model` of an interaction no model generated
MAX_ANSWER_CHARS = 100_000
# Fixed forever: ids of imported documents are uuid5(DOCUMENT_NAMESPACE, "sha256\nquery\nanswer").
DOCUMENT_NAMESPACE = uuid.UUID("5f0c8a4e-3b7d-4f7e-9a61-2c4d8e1b9f30")


class ImportBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image_url: StrictStr | None = None
    answer: StrictStr
    query: StrictStr = ""
    user: Annotated[StrictStr, Field(max_length=200)] | None = None
    tags: Tags = Field(default_factory=list)
    created_at: StrictStr | None = None


def document_id(image_sha256: str, query: str, answer: str) -> str:
    """The id of an imported document: the same image bytes and text always give the same id."""
    return str(uuid.uuid5(DOCUMENT_NAMESPACE, f"{image_sha256}\n{query}\n{answer}"))


def _created_at(value: str | None) -> datetime:
    if value is None or not value.strip():
        return datetime.now(UTC)
    try:
        return datetime.fromtimestamp(parse_time(value, "created_at"), UTC)
    except (OverflowError, ValueError, OSError):  # a valid ISO date whose UTC time leaves years 1-9999
        raise InvalidInput(
            f"created_at is out of range: {value!r}; send a date between years 1 and 9999"
        ) from None


@router.post(
    "/history",
    status_code=201,
    summary="Store a document (image + caption) in the history without generating",
)
async def import_document(request: Request) -> JSONResponse:
    """JSON `{"image_url", "answer", "query"?, "user"?, "tags"?, "created_at"?}` or a multipart form with
    the same fields and an `image` file. 201 with the stored interaction; 200 with it when the same
    document (same image bytes, query and answer) is already stored."""
    settings = request.app.state.settings
    upload: bytes | None = None
    data: Any
    if is_multipart(request):
        data, upload = await read_form(request, settings)
    else:
        data = await read_json(request, settings)
        if not isinstance(data, dict):
            raise BadRequest("the body must be a JSON object")
    if isinstance(data, dict) and "answer" not in data:
        raise InvalidInput("answer is missing: send the document's caption or description as answer")
    body: ImportBody = validate(ImportBody, data)
    if (body.image_url is None) == (upload is None):
        raise InvalidInput("send the image as image_url (http(s) or data URL) or as an 'image' file, once")
    if not body.answer.strip():
        raise InvalidInput("answer is empty; send the document's caption or description")
    if len(body.answer) > MAX_ANSWER_CHARS:
        raise InvalidInput(f"answer is {len(body.answer)} characters; the limit is {MAX_ANSWER_CHARS}")
    if len(body.query) > settings.max_query_chars:
        raise InvalidInput(f"query is {len(body.query)} characters; the limit is {settings.max_query_chars}")
    created_at = _created_at(body.created_at)
    images = request.app.state.images
    if upload is not None:
        image = await run_in_threadpool(images.load_bytes, upload, "upload")
    else:
        image = await run_in_threadpool(images.load_url, body.image_url)
    interaction = Interaction(
        id=document_id(image.sha256, body.query, body.answer),
        created_at=created_at,
        image_url=image.source,
        query=body.query,
        answer=body.answer,
        model=IMPORT_MODEL,
        user=body.user,
        tags=tuple(body.tags),
        image_sha256=image.sha256,
    )
    history = request.app.state.history
    headers = {"Location": f"/history/{interaction.id}", "X-Interaction-Id": interaction.id}
    if await run_in_threadpool(history.record, interaction, image.image):
        return JSONResponse(interaction.to_dict(), status_code=201, headers=headers)
    stored = await run_in_threadpool(history.get, interaction.id)
    return JSONResponse(stored, status_code=200, headers=headers)
