"""Batched, streamed generation for Llama 3.2 Vision, independent of HTTP and LitServe.

Requests that arrive together are generated in one `model.generate` call (left padding, one image per
request as the Mllama processor wants: a list of one-image lists). Each request keeps its own
`max_tokens`, sampling settings, stop strings and EOS: a per-row logits processor samples the rows that
asked for sampling (greedy rows are untouched, so a greedy answer is the same alone or in a batch) and a
per-row stopping criterion ends each row on its own. A streamer turns each step's tokens into text deltas.
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

from visionrag.server.sampling import TokenDescriber, chosen, log_probs, penalize

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
        tracker = _RowTracker(self.tokenizer, requests, prompt_tokens, self.eos_ids, sampler)
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
    """Per-row sampling inside a greedy `generate`: a sampling row's logits become one-hot on a token
    drawn from its own temperature / top-p distribution with its own generator, so the argmax that
    follows picks it. Greedy rows pass through untouched. Before that, rows asking for logprobs keep the
    log-softmax of their raw logits (read by `_RowTracker` once the token is chosen), and rows with
    frequency / presence penalties get them (server/sampling.py)."""

    def __init__(self, requests: Sequence[GenerationRequest]) -> None:
        self.rows = [(i, r.sampling) for i, r in enumerate(requests) if r.sampling.temperature > 0]
        self.penalized = [
            (i, r.sampling)
            for i, r in enumerate(requests)
            if r.sampling.frequency_penalty or r.sampling.presence_penalty
        ]
        self.logprob_rows = [i for i, r in enumerate(requests) if r.sampling.logprobs]
        self.logprobs: dict[int, Any] = {}  # row -> log probabilities of this step's raw logits
        self.prompt_length: int | None = None
        self.generators: dict[int, Any] = {}

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        if self.prompt_length is None:  # the first call sees the (padded) prompt only
            self.prompt_length = input_ids.shape[1]
        for i in self.logprob_rows:
            self.logprobs[i] = log_probs(scores[i])
        for i, sampling in self.penalized:
            generated = input_ids[i, self.prompt_length :]
            scores[i] = penalize(scores[i], generated, sampling.frequency_penalty, sampling.presence_penalty)
        for i, sampling in self.rows:
            gen = self.generators.get(i)
            if gen is None:
                gen = torch.Generator(device=scores.device)
                gen.manual_seed(sampling.seed if sampling.seed is not None else torch.seed())
                self.generators[i] = gen
            probs = torch.softmax(scores[i].float() / sampling.temperature, dim=-1)
            if sampling.top_p < 1.0:
                sorted_probs, order = torch.sort(probs, descending=True)
                keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < sampling.top_p
                sorted_probs = sorted_probs * keep
                probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
            token = torch.multinomial(probs, 1, generator=gen)
            scores[i] = float("-inf")
            scores[i, token] = 0.0
        return scores


class _RowTracker:
    """Both the streamer and the stopping criterion of one `generate` call.

    `put` (called by `generate` with each step's new tokens, before the stopping check) decodes each row
    incrementally, applies EOS / max_tokens / stop strings / time limit, and queues the step's deltas;
    `__call__` then tells `generate` which rows are finished."""

    def __init__(
        self,
        tokenizer: Any,
        requests: Sequence[GenerationRequest],
        prompt_tokens: list[int],
        eos_ids: list[int],
        sampler: _RowSampler | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.sampler = sampler
        self.describe = TokenDescriber(tokenizer)
        self.samplings = [r.sampling for r in requests]
        self.streaming = [r.stream for r in requests]
        self.prompt_tokens = prompt_tokens
        self.eos_ids = set(eos_ids)
        n = len(requests)
        self.ids: list[list[int]] = [[] for _ in range(n)]
        self.offsets = [(0, 0)] * n  # (prefix, read) for incremental decoding
        self.text = [""] * n  # decoded so far
        self.emitted = [""] * n  # sent so far (text minus what may be the start of a stop string)
        self.finished = [False] * n
        self.token_logprobs: list[list[dict[str, Any]]] = [[] for _ in range(n)]  # not yet on a Delta
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
        step: list[Delta | None] = []
        for i, token in enumerate(tokens):
            step.append(None if self.finished[i] else self._advance(i, token, elapsed))
        if any(d is not None for d in step):
            self.queue.put(step)

    def end(self) -> None:
        step: list[Delta | None] = []
        for i in range(len(self.finished)):
            step.append(None if self.finished[i] else self._finish(i, "length"))
        if any(d is not None for d in step):
            self.queue.put(step)
        self.queue.put(None)

    # stopping-criterion protocol
    def __call__(self, input_ids: Any, scores: Any, **_: Any) -> Any:
        import torch

        return torch.tensor(self.finished, dtype=torch.bool, device=input_ids.device)

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

    def _advance(self, i: int, token: int, elapsed: float) -> Delta | None:
        sampling = self.samplings[i]
        self.ids[i].append(token)
        if token in self.eos_ids:
            return self._finish(i, "stop")
        if sampling.logprobs and self.sampler is not None:
            logprob, top = chosen(self.sampler.logprobs[i], token, sampling.top_logprobs)
            self.token_logprobs[i].append(self.describe.entry(token, logprob, top))
        self.text[i] += self._decode(i)
        for stop in sampling.stop:
            cut = self.text[i].find(stop) if stop else -1
            if cut >= 0:
                self.text[i] = self.text[i][: max(cut, len(self.emitted[i]))]
                return self._finish(i, "stop")
        if len(self.ids[i]) >= sampling.max_tokens:
            return self._finish(i, "length")
        if sampling.time_limit is not None and elapsed >= sampling.time_limit:
            return self._finish(i, "time_limit")
        if not self.streaming[i]:
            return None
        visible = len(self.text[i]) - _held_back(self.text[i], sampling.stop)
        delta = self.text[i][len(self.emitted[i]) : visible]
        if not delta:
            return None
        self.emitted[i] += delta
        return Delta(delta, logprobs=self._take_logprobs(i))

    def _finish(self, i: int, reason: str) -> Delta:
        self.finished[i] = True
        delta = self.text[i][len(self.emitted[i]) :]
        self.emitted[i] = self.text[i]
        return Delta(
            delta,
            True,
            reason,
            int(self.prompt_tokens[i]),
            len(self.ids[i]),
            batch_size=len(self.finished),
            logprobs=self._take_logprobs(i),
        )

    def _take_logprobs(self, i: int) -> list[dict[str, Any]] | None:
        if not self.samplings[i].logprobs:
            return None
        taken, self.token_logprobs[i] = self.token_logprobs[i], []
        return taken

    def _decode(self, i: int) -> str:
        """New text of row i: decode a window of recent tokens so multi-token characters come out whole
        and spacing is right, without re-decoding the whole answer each step."""
        ids = self.ids[i]
        prefix, read = self.offsets[i]
        before = self.tokenizer.decode(ids[prefix:read], skip_special_tokens=True)
        after = self.tokenizer.decode(ids[prefix:], skip_special_tokens=True)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.offsets[i] = (read, len(ids))
            return after[len(before) :]
        return ""


def _held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters might be the start of a stop string, and so must wait."""
    held = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:n]):
                held = max(held, n)
                break
    return held


class _Cancelled(Exception):
    """Raised inside `generate` when the consumer went away."""
