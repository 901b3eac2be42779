"""The model endpoints: `/predict`, `/v1/chat/completions` and `/v1/models`, all served by the same
model workers (one LitAPI; a LitSpec may register several endpoints).

A handler runs in the API process: it parses and checks the request, fetches the image, hands the
request to a worker through LitServe's queue, streams or collects the worker's text deltas, and writes
the interaction to the journal before the answer (or the last streamed line) goes out."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from litserve.specs.base import LitSpec
from litserve.utils import LitAPIStatus, ResponseBufferItem
from starlette.concurrency import run_in_threadpool

from visionrag.server import bodies, context, inputs
from visionrag.server.admission import Admission
from visionrag.server.errors import VisionRAGError, openai_error, status_for
from visionrag.server.fetch import LoadedImage
from visionrag.server.generation import GenerationRequest
from visionrag.server.inputs import Ask
from visionrag.server.settings import Settings

log = logging.getLogger(__name__)

_CANCELLED_KEPT = 256  # entries in the shared cancel dict before old ones are pruned
_CANCELLED_TTL = 60.0  # seconds a cancel mark is kept for a worker to see

_OPENAI_FINISH = {"stop": "stop", "length": "length", "time_limit": "length"}


class GenerationFailed(VisionRAGError):
    status_code = 500


class QueueTimeout(VisionRAGError):
    status_code = 503


class ModelNotFound(VisionRAGError):
    status_code = 404
    code = "model_not_found"


class VisionSpec(LitSpec):
    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings
        self.api_path = "/predict"
        self.inflight = 0
        self.metrics: Any = None  # server/metrics.py: observes each answer's final delta
        # uid -> when its client went away; shared with the model workers (server/app.py sets it)
        self.cancelled: Any = None
        self.created = int(time.time())
        self.add_endpoint("/predict", self.predict, ["POST"])
        self.add_endpoint("/v1/chat/completions", self.chat_completions, ["POST"])
        self.add_endpoint("/v1/models", self.models, ["GET"])
        self.add_endpoint("/v1/models/{model_id:path}", self.model, ["GET"])

    @property
    def stream(self) -> bool:
        return True

    def decode_request(self, request: Any, context_kwargs: Any = None) -> Any:
        return request

    def encode_response(self, output: Any, context_kwargs: Any = None) -> Any:
        return output

    # -- endpoints ----------------------------------------------------------------------------------
    async def predict(self, request: Request) -> Response:
        """Answer a question about an image (JSON or multipart); `"stream": true` answers as NDJSON."""
        if bodies.is_multipart(request):
            data, upload = await bodies.read_form(request, self.settings)
        else:
            data, upload = await bodies.read_json(request, self.settings), None
        ask = inputs.predict_ask(data, upload, self.settings)
        async with self._admitted() as release:
            image = await self._load_image(request, ask)
            ask = await self._with_context(request, ask, image)
            deltas = self._generate(ask, image)
            if ask.stream:
                return StreamingResponse(
                    release.after(self._predict_lines(request, ask, image, deltas)),
                    media_type="application/x-ndjson",
                    background=release.background(),
                )
            text, final, _ = await _collect(deltas)
            interaction_id = await self._record(request, ask, image, text)
            return JSONResponse(
                {
                    "output": text,
                    "id": interaction_id,
                    "model": self.settings.served_name,
                    "usage": _usage(final),
                    "finish_reason": final["finish_reason"],
                    **context.response_fields(ask),
                },
                headers=_id_header(interaction_id),
            )

    async def chat_completions(self, request: Request) -> Response:
        """OpenAI Chat Completions with one image; `stream` answers as server-sent events."""
        ask = inputs.chat_ask(await bodies.read_json(request, self.settings), self.settings)
        async with self._admitted() as release:
            image = await self._load_image(request, ask)
            ask = await self._with_context(request, ask, image)
            deltas = self._generate(ask, image)
            if ask.stream:
                return StreamingResponse(
                    release.after(self._chat_events(request, ask, image, deltas)),
                    media_type="text/event-stream",
                    background=release.background(),
                )
            text, final, logprobs = await _collect(deltas)
            interaction_id = await self._record(request, ask, image, text)
            usage = _usage(final)
            return JSONResponse(
                {
                    "id": f"chatcmpl-{interaction_id or uuid.uuid4()}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": self.settings.served_name,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": _OPENAI_FINISH[final["finish_reason"]],
                            "logprobs": _logprobs(ask, logprobs),
                        }
                    ],
                    "usage": {**usage, "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]},
                    "interaction_id": interaction_id,
                    **context.response_fields(ask),
                },
                headers=_id_header(interaction_id),
            )

    async def models(self, request: Request) -> Response:
        """The served model, as OpenAI's model list."""
        return JSONResponse({"object": "list", "data": [self._model_card()]})

    async def model(self, request: Request) -> Response:
        """One model by id (OpenAI's `GET /v1/models/{id}`): the served model, or 404."""
        model_id = request.path_params["model_id"]
        if model_id != self.settings.served_name:
            raise ModelNotFound(
                f"the model {model_id!r} does not exist here; this server serves {self.settings.served_name!r}",
                param="model",
            )
        return JSONResponse(self._model_card())

    def _model_card(self) -> dict[str, Any]:
        return {
            "id": self.settings.served_name,
            "object": "model",
            "created": self.created,
            "owned_by": "visionrag",
        }

    # -- streaming bodies ---------------------------------------------------------------------------
    async def _predict_lines(
        self, request: Request, ask: Ask, image: LoadedImage, deltas: AsyncIterator[dict]
    ) -> AsyncIterator[str]:
        pieces: list[str] = []
        try:
            final: dict[str, Any] = {}
            async for delta in deltas:
                if delta["text"]:
                    pieces.append(delta["text"])
                    yield json.dumps({"delta": delta["text"]}) + "\n"
                if delta["done"]:
                    final = delta
            text = "".join(pieces)
            interaction_id = await self._record(request, ask, image, text)
            yield (
                json.dumps(
                    {
                        "done": True,
                        "output": text,
                        "id": interaction_id,
                        "model": self.settings.served_name,
                        "usage": _usage(final),
                        "finish_reason": final["finish_reason"],
                        **context.response_fields(ask),
                    }
                )
                + "\n"
            )
        except Exception as exc:
            yield json.dumps({"error": _error_body(exc)}) + "\n"

    async def _chat_events(
        self, request: Request, ask: Ask, image: LoadedImage, deltas: AsyncIterator[dict]
    ) -> AsyncIterator[str]:
        chunk_id = f"chatcmpl-{uuid.uuid4()}"
        created = int(time.time())
        model = self.settings.served_name

        def event(choices: list[dict], **extra: Any) -> str:
            body = {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": choices,
                **extra,
            }
            return f"data: {json.dumps(body)}\n\n"

        pieces: list[str] = []
        try:
            yield event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
            final: dict[str, Any] = {}
            async for delta in deltas:
                if delta["text"] or delta.get("logprobs"):
                    pieces.append(delta["text"])
                    choice = {"index": 0, "delta": {"content": delta["text"]}, "finish_reason": None}
                    if ask.sampling.logprobs:
                        choice["logprobs"] = _logprobs(ask, delta.get("logprobs"))
                    yield event([choice])
                if delta["done"]:
                    final = delta
            interaction_id = await self._record(request, ask, image, "".join(pieces))
            usage = _usage(final)
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            finish = [{"index": 0, "delta": {}, "finish_reason": _OPENAI_FINISH[final["finish_reason"]]}]
            used = context.response_fields(ask)  # on the last chunk before [DONE]
            if ask.include_usage:  # OpenAI's shape: usage in an extra chunk with no choices
                yield event(finish, interaction_id=interaction_id)
                yield event([], usage=usage, interaction_id=interaction_id, **used)
            else:
                yield event(finish, usage=usage, interaction_id=interaction_id, **used)
            yield "data: [DONE]\n\n"
        except Exception as exc:
            body = _error_body(exc)  # OpenAI's error object, which OpenAI clients raise, plus status/detail
            error = {
                **openai_error(
                    body["detail"],
                    body["status"],
                    param=getattr(exc, "param", None),
                    code=getattr(exc, "code", None),
                ),
                **body,
            }
            yield f"data: {json.dumps({'error': error})}\n\n"

    # -- the pieces -----------------------------------------------------------------------------------
    def _admitted(self) -> Admission:
        return Admission(self)

    async def _load_image(self, request: Request, ask: Ask) -> LoadedImage:
        images = request.app.state.images
        if ask.upload is not None:
            return await run_in_threadpool(images.load_bytes, ask.upload, "upload")
        return await run_in_threadpool(images.load_url, ask.image_url)

    async def _with_context(self, request: Request, ask: Ask, image: LoadedImage) -> Ask:
        """With `context`: earlier interactions searched in the history, put into the prompt as text."""
        if ask.context is None:
            return ask
        history = request.app.state.history
        budget = self.settings.context_max_tokens
        return await run_in_threadpool(context.apply, history, ask, image, budget)

    async def _generate(self, ask: Ask, image: LoadedImage) -> AsyncIterator[dict]:
        """Queue one request for the workers and yield its deltas until the one marked done."""
        uid = str(uuid.uuid4())
        queue: deque = deque()
        event = asyncio.Event()
        self.response_buffer[uid] = ResponseBufferItem(event=event, response_queue=queue)
        payload = GenerationRequest(ask.messages, image.data, ask.sampling, stream=ask.stream).to_wire()
        done = False
        try:
            self.request_queue.put((self.response_queue_id, uid, time.monotonic(), payload))
            async for data, status in self.data_streamer(queue, event, send_status=True):
                if status == LitAPIStatus.ERROR:
                    done = True  # the worker has already forgotten the request: nothing to cancel
                    raise _worker_error(data)
                if not data:
                    continue
                delta = json.loads(data) if isinstance(data, (str, bytes)) else data
                if delta["done"] and self.metrics is not None:
                    self.metrics.observe_answer(delta)
                done = bool(delta["done"])
                yield delta
                if done:
                    return
            done = True  # the worker ended the stream itself
            raise GenerationFailed("the model worker ended the answer early; see the server log")
        finally:
            self.response_buffer.pop(uid, None)
            if not done:  # the client went away: free its row in the worker
                self._cancel(uid)

    def _cancel(self, uid: str) -> None:
        if self.cancelled is None or self.settings.batching != "continuous":
            return
        try:
            now = time.monotonic()
            self.cancelled[uid] = now
            if len(self.cancelled) > _CANCELLED_KEPT:  # a worker that never saw the uid never removes it
                for old, at in list(self.cancelled.items()):
                    if now - at > _CANCELLED_TTL:
                        self.cancelled.pop(old, None)
        except (OSError, EOFError, BrokenPipeError):  # the manager is gone: the server is shutting down
            log.debug("could not mark %s cancelled", uid)

    async def _record(self, request: Request, ask: Ask, image: LoadedImage, answer: str) -> str | None:
        """Write the interaction durably (journal) before the answer is acknowledged."""
        if not ask.store:
            return None
        from visionrag.search.interaction import Interaction

        interaction = Interaction(
            id=str(uuid.uuid4()),
            created_at=datetime.now(UTC),
            image_url=image.source,
            query=ask.question,
            answer=answer,
            model=self.settings.served_name,
            user=ask.user,
            tags=ask.tags,
            image_sha256=image.sha256,
            context=context.context_ids(ask),
        )
        await run_in_threadpool(request.app.state.history.record, interaction, image.image)
        log.info(
            "answered interaction_id=%s answer_chars=%d",
            interaction.id,
            len(answer),
            extra={"interaction_id": interaction.id},
        )
        return interaction.id


async def _collect(deltas: AsyncIterator[dict]) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
    """The whole answer, its final delta, and every logprobs entry (empty unless asked for)."""
    pieces: list[str] = []
    final: dict[str, Any] = {}
    logprobs: list[dict[str, Any]] = []
    async for delta in deltas:
        pieces.append(delta["text"])
        logprobs.extend(delta.get("logprobs") or ())
        if delta["done"]:
            final = delta
    return "".join(pieces), final, logprobs


def _logprobs(ask: Ask, entries: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """OpenAI's `choices[].logprobs`: null unless the request asked for logprobs."""
    if not ask.sampling.logprobs:
        return None
    return {"content": list(entries or ()), "refusal": None}


def _usage(final: dict[str, Any]) -> dict[str, int]:
    return {
        "prompt_tokens": final.get("prompt_tokens", 0),
        "completion_tokens": final.get("completion_tokens", 0),
    }


def _id_header(interaction_id: str | None) -> dict[str, str]:
    return {"X-Interaction-Id": interaction_id} if interaction_id else {}


def _error_body(exc: Exception) -> dict[str, Any]:
    status = status_for(exc)
    if status >= 500 and not isinstance(exc, VisionRAGError):
        log.error("error while streaming an answer", exc_info=exc)
        return {"status": 500, "detail": "internal server error; see the server log"}
    return {"status": status, "detail": str(getattr(exc, "detail", exc))}


def _worker_error(data: Any) -> Exception:
    status = getattr(data, "status_code", None)
    if status == 504:
        return QueueTimeout(
            "the request waited too long for a model worker; the server is overloaded, retry shortly",
            headers={"Retry-After": "5"},
        )
    log.error("model worker failed: %r", data)
    return GenerationFailed("generation failed in the model worker; see the server log")
