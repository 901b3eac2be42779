"""Llama 3.2 Vision for the workers, independent of HTTP and LitServe: loading, inputs, and static batched,
streamed generation (the `VISIONRAG_BATCHING=static` fallback; continuous batching is server/scheduler.py).

Requests that arrive together are generated in one `model.generate` call (left padding, one image per
request as the Mllama processor wants: a list of one-image lists). Each request keeps its own
`max_tokens`, sampling settings, stop strings and EOS through the per-row objects of server/rows.py: a
logits processor lets each non-greedy row's `RowSampler` choose its token (greedy rows are untouched, so a
greedy answer is the same alone or in a batch), and each row's `RowText` turns its tokens into text deltas
and says when the row is done (the streamer and the stopping criterion of `generate`).
"""

from __future__ import annotations

import io
import logging
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from visionrag.server.rows import RowSampler, RowText

log = logging.getLogger(__name__)

_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    time_limit: float | None = None  # seconds from the start of generation
    frequency_penalty: float = 0.0  # OpenAI's penalties, over the generated tokens (server/sampling.py)
    presence_penalty: float = 0.0
    logprobs: bool = False  # report each generated token's log probability on its Delta
    top_logprobs: int = 0  # ... and this many of the most likely alternatives


@dataclass
class GenerationRequest:
    """What a worker needs: chat messages in the processor's format (one `{"type": "image"}` part), the
    image, and how to sample. `image` is a PIL image or the encoded bytes of one (cheaper between
    processes; the API process has already decoded and checked it)."""

    messages: list[dict[str, Any]]
    image: Any
    sampling: Sampling
    # False: the caller wants only the answer, so the text comes in the final delta alone instead of one
    # delta per step (each delta is an IPC message between the worker and the API process)
    stream: bool = True

    def to_wire(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "image": self.image,
            "sampling": asdict(self.sampling),
            "stream": self.stream,
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> GenerationRequest:
        sampling = dict(data["sampling"])
        sampling["stop"] = tuple(sampling.get("stop") or ())
        return cls(
            messages=data["messages"],
            image=data["image"],
            sampling=Sampling(**sampling),
            stream=data.get("stream", True),
        )


@dataclass
class Delta:
    """New text for one request after one step; the last one has `done` and the token counts."""

    text: str
    done: bool = False
    finish_reason: str | None = None  # "stop", "length" or "time_limit"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    batch_size: int = 0  # requests generated together with this one (for /metrics); set when done
    # with Sampling.logprobs: one OpenAI `logprobs.content` entry per token generated since the last Delta
    logprobs: list[dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Completion:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    deltas: list[str] = field(default_factory=list)


def resolve_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    return getattr(torch, _DTYPES[dtype])


class VisionModel:
    """A loaded Mllama model + processor that generates for a batch of requests."""

    def __init__(self, model: Any, processor: Any, name: str, *, compile: bool = False) -> None:
        self.model = model
        self.processor = processor
        self.name = name
        # a static KV cache: on a GPU, `generate` then compiles the decoding step with torch.compile
        # (CUDA graphs); greedy answers stay the same (checked on CPU with transformers 5.23)
        self.compile = compile
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"
        eos = model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos] if eos is not None else []
        eot = self.tokenizer.convert_tokens_to_ids("<|eot_id|>")
        self.eos_ids = sorted({*eos, *([eot] if isinstance(eot, int) and eot >= 0 else [])})
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.eos_ids[0]

    @classmethod
    def load(
        cls,
        name: str,
        *,
        device: str = "cpu",
        placement: str = "replicate",
        dtype: str = "auto",
        token: str | None = None,
        attn_implementation: str = "sdpa",
        compile: bool = False,
    ) -> VisionModel:
        """Load from a hub id or a local directory. `replicate` puts the whole model on `device`;
        `shard` spreads it over every visible GPU with `device_map="auto"`."""
        from transformers import AutoProcessor, MllamaForConditionalGeneration

        torch_dtype = resolve_dtype(dtype, "cuda" if placement == "shard" else device)
        device_map: Any = "auto" if placement == "shard" else ({"": device} if device != "cpu" else None)
        log.info("loading %s (%s, %s, %s)", name, placement, device, torch_dtype)
        started = time.monotonic()
        processor = AutoProcessor.from_pretrained(name, token=token)
        model = MllamaForConditionalGeneration.from_pretrained(
            name,
            dtype=torch_dtype,
            device_map=device_map,
            token=token,
            attn_implementation=attn_implementation,
        ).eval()
        log.info("loaded %s in %.1f s", name, time.monotonic() - started)
        return cls(model, processor, name, compile=compile)

    # -- preparing inputs -------------------------------------------------------------------------
    def prepare(self, requests: Sequence[GenerationRequest]) -> Any:
        from PIL import Image

        images = []
        for r in requests:
            image = r.image
            if isinstance(image, (bytes, bytearray)):
                image = Image.open(io.BytesIO(image))
                image.load()
            images.append([image.convert("RGB") if image.mode != "RGB" else image])
        prompts = [
            self.processor.apply_chat_template(r.messages, add_generation_prompt=True, tokenize=False)
            for r in requests
        ]
        batch = self.processor(images=images, text=prompts, padding=True, return_tensors="pt")
        device = self.model.device
        dtype = self.model.dtype
        return {
            k: (v.to(device=device, dtype=dtype) if k == "pixel_values" else v.to(device))
            for k, v in batch.items()
        }

    def prompt_length(self, request: GenerationRequest) -> int:
        """Tokens of the request's prompt (the image is one `<|image|>` token); for the scheduler's budget."""
        text = self.processor.apply_chat_template(
            request.messages, add_generation_prompt=True, tokenize=False
        )
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # -- generating --------------------------------------------------------------------------------
    def stream(self, requests: Sequence[GenerationRequest]) -> Iterator[list[Delta | None]]:
        """Yield, after every decoding step that has news for some request, one entry per request: its
        new text, or None when it has nothing new. Each request's last entry has `done=True`; a request
        with `stream=False` gets only that one, carrying its whole text."""
        import torch
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        inputs = self.prepare(requests)
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        sampler = _RowSampler(requests)
        tracker = _RowTracker(self.tokenizer, requests, prompt_tokens, self.eos_ids, sampler.samplers)
        config = GenerationConfig(
            max_new_tokens=max(r.sampling.max_tokens for r in requests),
            do_sample=False,
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
            cache_implementation="static" if self.compile else None,
        )
        kwargs = {
            **inputs,
            "generation_config": config,
            "logits_processor": LogitsProcessorList([sampler]),
            "stopping_criteria": StoppingCriteriaList([tracker]),
            "streamer": tracker,
        }

        def run() -> None:
            try:
                with torch.inference_mode():
                    self.model.generate(**kwargs)
            except BaseException as exc:  # handed to the consumer, which re-raises it
                tracker.fail(exc)
            finally:
                tracker.end()

        thread = threading.Thread(target=run, name="generate", daemon=True)
        thread.start()
        try:
            yield from tracker.steps()
        finally:
            tracker.cancel()
            thread.join()

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        """Run `stream` to the end; for benchmarks and tests of the model path."""
        texts: list[list[str]] = [[] for _ in requests]
        finals: list[Delta | None] = [None] * len(requests)
        for step in self.stream(requests):
            for i, delta in enumerate(step):
                if delta is None:
                    continue
                if delta.text:
                    texts[i].append(delta.text)
                if delta.done:
                    finals[i] = delta
        out = []
        for pieces, final in zip(texts, finals, strict=True):
            assert final is not None
            out.append(
                Completion(
                    "".join(pieces),
                    final.finish_reason or "length",
                    final.prompt_tokens,
                    final.completion_tokens,
                    pieces,
                )
            )
        return out


class _RowSampler:
    """Per-row sampling inside a greedy `generate`: a non-greedy row's logits become one-hot on the token its
    own `RowSampler` draws, so the argmax that follows picks it. Greedy rows pass through untouched."""

    def __init__(self, requests: Sequence[GenerationRequest]) -> None:
        self.samplers = [RowSampler(r.sampling) for r in requests]
        self.rows = [(i, sampler) for i, sampler in enumerate(self.samplers) if not sampler.greedy]
        self.prompt_length: int | None = None  # padded; the first call sees the prompt alone

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if self.prompt_length is None:
            self.prompt_length = input_ids.shape[1]
        for i, sampler in self.rows:
            token = sampler.pick(scores[i], input_ids[i, self.prompt_length :].tolist())
            scores[i] = float("-inf")
            scores[i, token] = 0.0
        return scores


class _RowTracker:
    """Both the streamer and the stopping criterion of one `generate` call.

    `put` (called by `generate` with each step's new tokens, before the stopping check) hands each row its
    token (`RowText`: EOS, max_tokens, stop strings, time limit) and queues the step's deltas; `__call__`
    then tells `generate` which rows are finished."""

    def __init__(
        self,
        tokenizer: Any,
        requests: Sequence[GenerationRequest],
        prompt_tokens: list[int],
        eos_ids: list[int],
        samplers: Sequence[RowSampler],
    ) -> None:
        self.samplers = samplers  # their `last_logprobs` give the logprobs of each step's tokens
        self.rows = [
            RowText(tokenizer, r.sampling, r.stream, n, eos_ids)
            for r, n in zip(requests, prompt_tokens, strict=True)
        ]
        self.started = time.monotonic()
        self.queue: queue.Queue[Any] = queue.Queue()
        self.error: BaseException | None = None
        self.cancelled = False
        self.seen_prompt = False

    # streamer protocol
    def put(self, value: Any) -> None:
        if not self.seen_prompt:  # the first call carries the prompt
            self.seen_prompt = True
            return
        if self.cancelled:
            raise _Cancelled
        tokens = value.reshape(-1).tolist()
        elapsed = time.monotonic() - self.started
        n = len(self.rows)
        step = [
            None if row.finished else row.advance(t, elapsed, n, sampler.last_logprobs)
            for row, t, sampler in zip(self.rows, tokens, self.samplers, strict=True)
        ]
        if any(d is not None for d in step):
            self.queue.put(step)

    def end(self) -> None:
        n = len(self.rows)
        step = [None if row.finished else row.finish("length", n) for row in self.rows]
        if any(d is not None for d in step):
            self.queue.put(step)
        self.queue.put(None)

    # stopping-criterion protocol
    def __call__(self, input_ids: Any, scores: Any, **_: Any) -> Any:
        import torch

        return torch.tensor([row.finished for row in self.rows], dtype=torch.bool, device=input_ids.device)

    def fail(self, exc: BaseException) -> None:
        if not isinstance(exc, _Cancelled):
            self.error = exc

    def cancel(self) -> None:
        self.cancelled = True

    def steps(self) -> Iterator[list[Delta | None]]:
        while True:
            step = self.queue.get()
            if step is None:
                if self.error is not None:
                    raise self.error
                return
            yield step


class _Cancelled(Exception):
    """Raised inside `generate` when the consumer went away."""
