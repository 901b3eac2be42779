"""Reading request bodies: JSON or multipart, with the size caps checked before and while reading, and the
one way a body is validated against a pydantic model (a 422 whose message names the field). Every route
that takes a body (model endpoints, history search, history import) reads it here."""

from __future__ import annotations

import json
from typing import Any

from fastapi import HTTPException, Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from visionrag.server.errors import BadRequest, InvalidInput, PayloadTooLarge
from visionrag.server.settings import Settings, parse_bool


def _check_declared_size(request: Request, settings: Settings) -> None:
    """Refuse a body whose Content-Length is over the limit before reading any of it."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > settings.max_body_bytes:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {settings.max_body_bytes}")


async def read_json(request: Request, settings: Settings) -> Any:
    """The body as JSON: size-capped, parsed, and free of lone surrogates (which JSON escapes allow but
    no tokenizer takes: one would fail the model worker and its whole batch)."""
    _check_declared_size(request, settings)
    body = await request.body()
    if len(body) > settings.max_body_bytes:
        raise PayloadTooLarge(f"request body is {len(body)} bytes; the limit is {settings.max_body_bytes}")
    if not body:
        raise BadRequest("request body is empty; send JSON")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not valid_unicode(data):
        raise BadRequest("request body contains a lone UTF-16 surrogate (like \\ud800); send valid Unicode")
    return data


def valid_unicode(value: Any) -> bool:
    """False if any string (key or value) holds a lone surrogate, which JSON escapes allow."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


def validate(model: type[BaseModel], data: Any) -> Any:
    if not isinstance(data, dict):
        raise InvalidInput("request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(describe(exc)) from None


def describe(exc: ValidationError, prefix: str = "") -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = prefix + ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def is_multipart(request: Request) -> bool:
    kind = request.headers.get("content-type", "")
    return kind.startswith("multipart/form-data") or kind.startswith("application/x-www-form-urlencoded")


async def read_form(request: Request, settings: Settings) -> tuple[dict[str, Any], bytes | None]:
    """A multipart form as the JSON it stands for, plus the bytes of its `image` file, if any."""
    _check_declared_size(request, settings)
    try:
        form = await request.form(max_files=1, max_fields=50)
    except HTTPException as exc:  # LitServe's MaxSizeMiddleware stops a chunked body mid-read with 413
        if exc.status_code != 413:
            raise
        limit = settings.max_body_bytes
        raise PayloadTooLarge(
            f"request body is larger than {limit} bytes (VISIONRAG_MAX_BODY_BYTES)"
        ) from None
    except Exception as exc:  # starlette raises several kinds for broken multipart bodies
        raise BadRequest(f"could not read the multipart form: {exc}") from None
    data: dict[str, Any] = {}
    upload: bytes | None = None
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            if key != "image":
                raise InvalidInput(f"unexpected file field {key!r}; send the image as 'image'")
            upload = await value.read(settings.max_image_bytes + 1)
            if len(upload) > settings.max_image_bytes:
                raise PayloadTooLarge(
                    f"uploaded image is larger than {settings.max_image_bytes} bytes (VISIONRAG_MAX_IMAGE_BYTES)"
                )
        elif key == "tags":
            data.setdefault("tags", []).extend(t.strip() for t in value.split(",") if t.strip())
        else:
            data[key] = _form_value(key, value)
    return data, upload


_FORM_INTS = {"max_tokens", "max_completion_tokens", "seed", "limit", "offset"}
_FORM_FLOATS = {"temperature", "top_p"}
_FORM_BOOLS = {"store", "stream"}


def _form_value(key: str, value: str) -> Any:
    try:
        if key in _FORM_INTS:
            return int(value)
        if key in _FORM_FLOATS:
            return float(value)
    except ValueError:
        raise InvalidInput(f"{key}: {value!r} is not a number") from None
    if key in _FORM_BOOLS:
        try:
            return parse_bool(value)
        except ValueError:
            raise InvalidInput(f"{key}: {value!r} is not true or false") from None
    return value
