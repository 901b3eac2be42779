"""/openapi.json as the server really behaves: the model and search routes read their bodies themselves
(JSON or multipart, see server/inputs.py), so FastAPI cannot see them; their request bodies, the error
codes every route can answer (with `{"detail": "..."}`, a string) and the content types that are not
JSON (NDJSON and SSE streams, /metrics text, images) are added here, in one place, after FastAPI has
built its schema."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic.json_schema import models_json_schema

from visionrag.server.inputs import ChatBody, PredictBody
from visionrag.server.settings import Settings

REF = "#/components/schemas/"

ERROR = {
    "title": "Error",
    "type": "object",
    "required": ["detail"],
    "properties": {
        "detail": {"type": "string", "description": "what failed and what to do about it"},
        "error": {
            "type": "object",
            "description": "OpenAI's error envelope, on the /v1/ routes",
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        },
    },
}

_ERROR_TEXT = {
    400: "Malformed request: not JSON, an empty body, a broken form",
    401: "Missing or wrong API key",
    404: "No such interaction",
    405: "Method not allowed",
    413: "Body or image larger than the limit",
    415: "The image is not one the server can decode",
    422: "Invalid values, or an image URL that is unreachable or refused (the detail says which)",
    503: "Overloaded, still loading, or the vector store is unreachable",
    500: "The model worker failed (the server log says why); nothing was stored",
}

CONTEXT = {
    "description": "earlier interactions to answer with: an object choosing them, a number (k), true for the "
    "defaults, false or null for none",
    "anyOf": [{"type": "object"}, {"type": "boolean"}, {"type": "integer", "minimum": 1}, {"type": "null"}],
}

SEARCH = {
    "title": "HistorySearch",
    "type": "object",
    "additionalProperties": False,
    "description": "at least one of text, image_url (or, as a form, an image file)",
    "properties": {
        "text": {"type": "string"},
        "image_url": {"type": "string", "description": "http(s) or data:image/...;base64, URL"},
        "limit": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
        "offset": {"type": "integer", "minimum": 0, "default": 0},
        "against": {"type": "string", "enum": ["images", "answers", "both"], "default": "both"},
        "since": {"type": "string", "format": "date-time"},
        "until": {"type": "string", "format": "date-time"},
        "user": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
}

INTERACTION = {
    "title": "Interaction",
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "created_at": {"type": "string"},
        "image_url": {"type": ["string", "null"]},
        "query": {"type": "string"},
        "answer": {"type": "string"},
        "model": {"type": ["string", "null"]},
        "user": {"type": ["string", "null"]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "image_sha256": {"type": ["string", "null"]},
        "context": {"type": "array", "items": {"type": "string"}, "description": "ids it was built on"},
        "image": {"type": ["string", "null"], "description": "null for points without an image copy"},
    },
}

IMPORT = {
    "title": "HistoryImport",
    "type": "object",
    "description": "a document stored without generating: image_url (or, as a form, an image file)",
    "required": ["answer"],
    "properties": {
        "image_url": {"type": "string", "description": "http(s) or data:image/...;base64, URL"},
        "answer": {"type": "string", "description": "the caption or description"},
        "query": {"type": "string", "default": ""},
        "user": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "created_at": {"type": "string", "format": "date-time"},
    },
}

USAGE = {
    "type": "object",
    "properties": {"prompt_tokens": {"type": "integer"}, "completion_tokens": {"type": "integer"}},
}


def _form(schema_ref: str, extra: dict[str, Any]) -> dict[str, Any]:
    """A multipart form: the JSON body's fields as form fields (tags comma-separated), plus a file."""
    return {"allOf": [{"$ref": REF + schema_ref}], "type": "object", "properties": extra}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): _json({"$ref": REF + "Error"}, _ERROR_TEXT[c]) for c in codes}


def _body(json_ref: str, form: dict[str, Any] | None) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {"schema": {"$ref": REF + json_ref}}}
    if form is not None:
        content["multipart/form-data"] = {"schema": form}
    return {"required": True, "content": content}


IMAGE_FILE = {"image": {"type": "string", "format": "binary", "description": "the image file"}}

# (method, path) -> what FastAPI cannot know about the operation
OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/predict"): {
        "requestBody": _body(
            "PredictBody",
            _form("PredictBody", {**IMAGE_FILE, "tags": {"type": "string", "description": "a,b,c"}}),
        ),
        "responses": {
            "200": {
                "description": "The answer; with `stream: true`, NDJSON lines of text deltas, then a summary",
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "output": {"type": "string"},
                                "id": {"type": ["string", "null"]},
                                "model": {"type": "string"},
                                "usage": USAGE,
                                "finish_reason": {"type": "string"},
                                "context": {"type": "array", "items": {"type": "object"}},
                                "context_error": {"type": "string"},
                            },
                        }
                    },
                    "application/x-ndjson": {"schema": {"type": "string"}},
                },
            },
            **_errors(400, 413, 415, 422, 500, 503),
        },
    },
    ("post", "/v1/chat/completions"): {
        "requestBody": _body("ChatBody", None),
        "responses": {
            "200": {
                "description": "OpenAI's chat.completion; with `stream: true`, server-sent events",
                "content": {
                    "application/json": {"schema": {"type": "object"}},
                    "text/event-stream": {"schema": {"type": "string"}},
                },
            },
            **_errors(400, 413, 415, 422, 500, 503),
        },
    },
    ("post", "/history/search"): {
        "requestBody": _body("HistorySearch", _form("HistorySearch", IMAGE_FILE)),
        "responses": {
            "200": _json(
                {
                    "type": "object",
                    "properties": {
                        "results": {"type": "array", "items": {"$ref": REF + "Interaction"}},
                        "took_ms": {"type": "number"},
                    },
                }
            ),
            **_errors(400, 413, 415, 422, 503),
        },
    },
    ("post", "/history"): {
        "requestBody": _body("HistoryImport", _form("HistoryImport", IMAGE_FILE)),
        "responses": {
            "201": _json({"$ref": REF + "Interaction"}, "Stored"),
            "200": _json({"$ref": REF + "Interaction"}, "The same document was already stored"),
            **_errors(400, 413, 415, 422, 503),
        },
    },
    ("get", "/history"): {"responses": _errors(422, 503)},
    ("get", "/history/{id}"): {
        "responses": {"200": _json({"$ref": REF + "Interaction"}), **_errors(404, 503)}
    },
    ("delete", "/history/{id}"): {"responses": _errors(404, 503)},
    ("get", "/history/{id}/image"): {
        "responses": {
            "200": {
                "description": "The stored copy of the image (longest side at most 512 px)",
                "content": {
                    "image/png": {"schema": {"type": "string", "format": "binary"}},
                    "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                },
            },
            **_errors(404, 503),
        }
    },
    ("get", "/health"): {
        "responses": {
            "200": _json({"type": "object"}, "The model and the history are ready"),
            "503": _json({"type": "object"}, "Still loading, or a part failed (the body says which)"),
        }
    },
    ("get", "/v1/models/{model_id}"): {
        "responses": {"200": _json({"type": "object"}, "The served model"), **_errors(404)}
    },
    ("get", "/ping"): {
        "responses": {
            "200": {"description": "Ready: the model and the history are up"},
            "204": {"description": "Still loading (a load balancer keeps waiting)"},
            "503": {"description": "Broken: a model worker failed, or the journal cannot be read"},
        }
    },
    ("get", "/metrics"): {
        "responses": {
            "200": {
                "description": "Prometheus text format",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        }
    },
}


def install_openapi(app: FastAPI, settings: Settings) -> None:
    """Replace `app.openapi` with FastAPI's schema plus what only the handlers know (built once)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = complete(generate(), settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def complete(spec: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Add the request bodies, the error answers and the content types to FastAPI's schema."""
    _, models = models_json_schema(
        [(PredictBody, "validation"), (ChatBody, "validation")], ref_template=REF + "{model}"
    )
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(models.get("$defs", {}))
    for body in ("PredictBody", "ChatBody"):  # pydantic sees `Any`; parse_context takes these forms
        schemas[body].setdefault("properties", {})["context"] = CONTEXT
    schemas.update(Error=ERROR, HistorySearch=SEARCH, HistoryImport=IMPORT, Interaction=INTERACTION)
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    for path, operations in spec.get("paths", {}).items():
        for method, operation in operations.items():
            extra = OPERATIONS.get((method, path), {})
            if "requestBody" in extra:
                operation["requestBody"] = extra["requestBody"]
            responses = operation.setdefault("responses", {})
            if responses.get("422", {}).get("content", {}).get("application/json", {}).get("schema") == {
                "$ref": REF + "HTTPValidationError"
            }:
                responses["422"] = _errors(422)["422"]
            responses.update(extra.get("responses", {}))
            if settings.api_key and path not in ("/health", "/ping"):
                responses.update(_errors(401))
    return spec
