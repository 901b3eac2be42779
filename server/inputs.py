"""Request bodies of the model endpoints, parsed and checked into one `Ask`.

Every check that depends on the request happens here, in the API process, so a bad request is answered
with a 4xx before it reaches a model worker (where one bad request would fail its whole batch).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
)

from visionrag.server.bodies import describe, validate
from visionrag.server.errors import BadRequest, InvalidInput, UnsupportedParameter
from visionrag.server.generation import Sampling
from visionrag.server.sampling import MAX_TOP_LOGPROBS
from visionrag.server.settings import Settings, parse_bool

Number = StrictFloat | StrictInt
Tags = Annotated[list[Annotated[StrictStr, Field(min_length=1, max_length=64)]], Field(max_length=20)]
Stop = StrictStr | Annotated[list[StrictStr], Field(max_length=4)] | None
Penalty = Annotated[Number, Field(ge=-2, le=2)] | None

# What an image-only user message asks, as OpenAI's models answer one: a description of the image.
DESCRIBE_IMAGE = "Describe this image."


@dataclass
class Ask:
    """One question about one image, whichever endpoint it came through."""

    question: str
    messages: list[dict[str, Any]]
    sampling: Sampling
    image_url: str | None = None
    upload: bytes | None = None
    user: str | None = None
    tags: tuple[str, ...] = ()
    store: bool = True
    stream: bool = False
    include_usage: bool = False  # OpenAI's stream_options.include_usage
    context: ContextOptions | None = None  # answer with earlier interactions from the history (RAG)
    retrieved: Any = None  # server/context.Retrieved: what retrieval put into the prompt


class ContextOptions(BaseModel):
    """`"context"` of /predict and /v1/chat/completions: which earlier interactions go into the prompt.
    The same filters as /history/search; `k` hits at most, none scoring below `min_score`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    k: Annotated[StrictInt, Field(ge=1, le=20)] = 3
    against: Literal["images", "answers", "both"] = "both"
    min_score: Number | None = None
    user: Annotated[StrictStr, Field(max_length=200)] | None = None
    tags: Tags = Field(default_factory=list)


def parse_context(value: Any) -> ContextOptions | None:
    """The one reading of a request's `"context"`: `true` (the defaults), `false`/`null` (none), a number
    (`k`), or an object `{"k", "against", "min_score", "user", "tags"}`. A multipart form sends the same
    as text: "true", "false", "3" or the JSON object."""
    if isinstance(value, str):  # a multipart form field
        text = value.strip()
        if text.lower() in ("true", "false", "yes", "no", "on", "off"):
            value = parse_bool(text)
        elif text.isdigit():
            value = int(text)
        else:
            try:
                value = json.loads(text)
            except ValueError:
                raise InvalidInput(
                    f'context: {value!r} is not true, false, a number or a JSON object like {{"k": 3}}'
                ) from None
    if value is None or value is False:
        return None
    if value is True:
        return ContextOptions()
    if isinstance(value, int) and not isinstance(value, bool):
        value = {"k": value}
    if not isinstance(value, dict):
        raise InvalidInput('context must be true, false, a number (k) or an object like {"k": 3}')
    try:
        return ContextOptions.model_validate(value)
    except ValidationError as exc:
        raise InvalidInput(describe(exc, "context.")) from None


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")

    temperature: Annotated[Number, Field(ge=0, le=2)] | None = None
    top_p: Annotated[Number, Field(gt=0, le=1)] | None = None
    stop: Stop = None
    seed: StrictInt | None = None
    stream: StrictBool = False
    store: StrictBool = True
    user: Annotated[StrictStr, Field(max_length=200)] | None = None
    tags: Tags = Field(default_factory=list)
    # a declared field, so endpoints that refuse unknown fields accept it; parse_context reads it
    context: Any = None


class PredictBody(_Common):
    model_config = ConfigDict(extra="forbid")

    image_url: StrictStr | None = None
    user_query: StrictStr
    max_tokens: StrictInt | None = None


class _ImageURL(BaseModel):
    url: StrictStr
    detail: StrictStr | None = None


class _TextPart(BaseModel):
    type: Literal["text"]
    text: StrictStr


class _ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: StrictStr | _ImageURL


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: StrictStr | list[Annotated[_TextPart | _ImagePart, Field(discriminator="type")]] | None = None


class _StreamOptions(BaseModel):
    include_usage: StrictBool = True


class _ResponseFormat(BaseModel):
    type: StrictStr


class ChatBody(_Common):
    model: StrictStr | None = None  # any name is accepted; answers carry the served name
    messages: Annotated[list[_Message], Field(min_length=1)]
    max_tokens: StrictInt | None = None
    max_completion_tokens: StrictInt | None = None
    n: StrictInt | None = 1
    stream_options: _StreamOptions | None = None
    logprobs: StrictBool | None = None
    top_logprobs: Annotated[StrictInt, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    frequency_penalty: Penalty = None
    presence_penalty: Penalty = None
    response_format: _ResponseFormat | None = None


# Chat Completions parameters accepted besides ChatBody's fields. `context` belongs to the history
# retrieval of /v1/chat/completions (issue 16); `safety_identifier` and `prompt_cache_key` identify the
# caller or a cache bucket to OpenAI and never change an answer, so there is nothing here to ignore.
ACCEPTED_EXTRA = frozenset({"context", "safety_identifier", "prompt_cache_key"})

# Chat Completions parameters refused with 400 (any other unknown parameter is refused too), and why.
_NO_TOOLS = "this server does not call tools or functions; send the request without them"
REFUSED: dict[str, str] = {
    "tools": _NO_TOOLS,
    "tool_choice": _NO_TOOLS,
    "parallel_tool_calls": _NO_TOOLS,
    "functions": _NO_TOOLS,
    "function_call": _NO_TOOLS,
    "logit_bias": "logit_bias is not implemented",
    "audio": "the model answers in text only",
    "modalities": 'the model answers in text only (leave modalities out, or send ["text"])',
    "prediction": "predicted outputs are not implemented",
    "metadata": "metadata is not kept; label a stored interaction with tags (a list of strings)",
    "reasoning_effort": "this model has no separate reasoning to configure",
    "verbosity": "this model has no verbosity setting",
    "web_search_options": "this server does not search the web",
    "service_tier": "this server has one service tier; leave service_tier out",
}


def refuse_unsupported(data: dict[str, Any]) -> None:
    """400 naming the first parameter this server does not implement. A null value is the same as
    leaving a parameter out; `modalities: ["text"]` and an empty `logit_bias` ask for nothing new."""
    for key, value in data.items():
        if key in ChatBody.model_fields or key in ACCEPTED_EXTRA or value is None:
            continue
        if (key, value) in (("modalities", ["text"]), ("logit_bias", {})):
            continue
        reason = REFUSED.get(key, "this server does not implement it")
        raise UnsupportedParameter(f"unsupported parameter {key!r}: {reason}", param=key)


_MESSAGE_REFUSED = {"tool_calls": _NO_TOOLS, "function_call": _NO_TOOLS, "audio": "audio is not supported"}


# -- building an Ask ------------------------------------------------------------------------------------
def sampling_for(body: _Common, max_tokens: int | None, settings: Settings) -> Sampling:
    if max_tokens is None:
        max_tokens = settings.default_max_tokens
    if not 1 <= max_tokens <= settings.max_tokens_limit:
        raise InvalidInput(f"max_tokens must be between 1 and {settings.max_tokens_limit}, not {max_tokens}")
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    return Sampling(
        max_tokens=max_tokens,
        temperature=float(body.temperature or 0.0),
        top_p=float(body.top_p if body.top_p is not None else 1.0),
        stop=tuple(s for s in stop if s),
        seed=body.seed,
        time_limit=settings.generation_timeout or None,
    )


def check_question(text: str, settings: Settings) -> str:
    if not text.strip():
        raise InvalidInput("the question is empty; ask something about the image")
    if len(text) > settings.max_query_chars:
        raise InvalidInput(f"the question is {len(text)} characters; the limit is {settings.max_query_chars}")
    return text


def predict_ask(data: Any, upload: bytes | None, settings: Settings) -> Ask:
    if isinstance(data, dict) and "user_query" not in data:
        raise InvalidInput("user_query is missing: send the question as user_query")
    unknown = sorted(set(data) - set(PredictBody.model_fields)) if isinstance(data, dict) else []
    if unknown:  # a misspelt or unsupported parameter is refused, never silently dropped
        raise InvalidInput(
            f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}: /predict takes "
            f"{', '.join(sorted(PredictBody.model_fields))} (and a multipart 'image' file)"
        )
    body: PredictBody = validate(PredictBody, data)
    if body.image_url is None and upload is None:
        raise InvalidInput("no image: send image_url (http(s) or data URL) or a multipart 'image' file")
    if body.image_url is not None and upload is not None:
        raise InvalidInput("send either image_url or an 'image' file, not both")
    question = check_question(body.user_query, settings)
    return Ask(
        question=question,
        messages=[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
        sampling=sampling_for(body, body.max_tokens, settings),
        image_url=body.image_url,
        upload=upload,
        user=body.user,
        tags=tuple(body.tags),
        store=body.store,
        stream=body.stream,
        context=parse_context(body.context),
    )


def _refuse_in_messages(data: dict[str, Any]) -> None:
    messages = data.get("messages")
    if not isinstance(messages, list):
        return
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            continue
        if message.get("role") in ("tool", "function"):
            raise UnsupportedParameter(
                f"messages[{i}].role {message['role']!r} is not supported: {_NO_TOOLS}",
                param=f"messages[{i}].role",
                code="unsupported_value",
            )
        for key, reason in _MESSAGE_REFUSED.items():
            if message.get(key) is not None:
                raise UnsupportedParameter(
                    f"unsupported parameter messages[{i}].{key}: {reason}", param=f"messages[{i}].{key}"
                )


def _openai_sampling(body: ChatBody, sampling: Sampling) -> Sampling:
    """The Chat Completions sampling parameters beyond /predict's, checked as OpenAI checks them."""
    if body.n not in (None, 1):
        raise UnsupportedParameter(
            f"n={body.n} is not supported: this server generates one choice per request; send n=1",
            param="n",
            code="unsupported_value",
        )
    if body.response_format is not None and body.response_format.type != "text":
        raise UnsupportedParameter(
            f"response_format {body.response_format.type!r} is not supported: this server cannot constrain "
            'the answer to JSON; leave response_format out or send {"type": "text"}',
            param="response_format",
            code="unsupported_value",
        )
    if body.top_logprobs and not body.logprobs:
        raise BadRequest("top_logprobs needs logprobs: true", param="top_logprobs")
    return dataclasses.replace(
        sampling,
        frequency_penalty=float(body.frequency_penalty or 0.0),
        presence_penalty=float(body.presence_penalty or 0.0),
        logprobs=bool(body.logprobs),
        top_logprobs=body.top_logprobs or 0,
    )


def chat_ask(data: Any, settings: Settings) -> Ask:
    if isinstance(data, dict):
        refuse_unsupported(data)
        _refuse_in_messages(data)
    body: ChatBody = validate(ChatBody, data)
    sampling = _openai_sampling(body, sampling_for(body, _max_tokens(body), settings))
    image_urls: list[str] = []
    messages: list[dict[str, Any]] = []
    for message in body.messages:
        role = "system" if message.role == "developer" else message.role
        parts: list[dict[str, Any]] = []
        content = message.content or ""
        if isinstance(content, str):
            parts.append({"type": "text", "text": content})
        else:
            for part in content:
                if isinstance(part, _TextPart):
                    parts.append({"type": "text", "text": part.text})
                else:
                    url = part.image_url if isinstance(part.image_url, str) else part.image_url.url
                    image_urls.append(url)
                    parts.append({"type": "image"})
        messages.append({"role": role, "content": parts})
    if len(image_urls) != 1:
        raise BadRequest(
            f"found {len(image_urls)} images; Llama 3.2 Vision answers about exactly one image per request: "
            "send one image_url part"
        )
    _describe_if_image_only(messages)
    user_texts = [
        p["text"] for m in messages if m["role"] == "user" for p in m["content"] if p["type"] == "text"
    ]
    question = check_question(user_texts[-1] if user_texts else "", settings)
    if sum(len(p.get("text", "")) for m in messages for p in m["content"]) > settings.max_query_chars * 4:
        raise InvalidInput(
            f"the conversation is too long; the limit is {settings.max_query_chars * 4} characters"
        )
    return Ask(
        question=question,
        messages=messages,
        sampling=sampling,
        image_url=image_urls[0],
        user=body.user,
        tags=tuple(body.tags),
        store=body.store,
        stream=body.stream,
        include_usage=body.stream_options.include_usage if body.stream_options else False,
        context=parse_context(body.context),
    )


def _max_tokens(body: ChatBody) -> int | None:
    return body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens


def _describe_if_image_only(messages: list[dict[str, Any]]) -> None:
    """A last user message with the image and no text asks, as with OpenAI, for a description of it."""
    users = [m for m in messages if m["role"] == "user"]
    if not users:
        return
    parts = users[-1]["content"]
    has_image = any(p["type"] == "image" for p in parts)
    if has_image and not any(p["type"] == "text" and p["text"].strip() for p in parts):
        parts[:] = [p for p in parts if p["type"] != "text"] + [{"type": "text", "text": DESCRIBE_IMAGE}]
