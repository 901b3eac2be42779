"""Continuous batching for Llama 3.2 Vision: requests join the running batch at the next decoding step and
leave it as soon as they are done.

Each `step`: (1) admit waiting requests up to `max_batch_size` rows and a token budget, prefilling them
together (vision encoder + prompt, the processor's left padding) and merging their caches into the running
batch (server/batch_cache.py); (2) run one decoding step for every running row; (3) retire the rows that
hit EOS, a stop string, `max_tokens`, the time limit or were cancelled, freeing their slots at once.
Per-row sampling and text (server/rows.py) are the same objects static batching uses, so an answer does
not depend on the mode or on who shared the batch. transformers' own continuous batching cannot be used:
it takes token ids only and knows nothing of Mllama's cross-attention image states.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from visionrag.server.batch_cache import RunningBatch
from visionrag.server.generation import Delta, GenerationRequest, VisionModel
from visionrag.server.rows import RowSampler, RowText

log = logging.getLogger(__name__)


@dataclass
class _Row:
    uid: str
    request: GenerationRequest
    text: RowText
    sampler: RowSampler = field(init=False)
    started: float = 0.0  # monotonic time its generation began (the time limit counts from here)
    cancelled: bool = False

    def __post_init__(self) -> None:
        self.sampler = RowSampler(self.request.sampling)

    @property
    def reserved(self) -> int:
        """Tokens this row may occupy in the cache at most: its prompt plus its max_tokens."""
        return self.text.prompt_tokens + self.request.sampling.max_tokens


class Scheduler:
    """Owns the running batch of one model worker. Not thread-safe: one loop calls `add`, `cancel` and
    `step` (server/worker.py's `SchedulerLoop`)."""

    def __init__(self, model: VisionModel, max_batch_size: int, max_batch_tokens: int = 0) -> None:
        self.model = model
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens  # 0: no budget
        self.waiting: deque[tuple[str, GenerationRequest]] = deque()
        self.rows: list[_Row] = []  # in the order of the running batch's rows
        self.batch: RunningBatch | None = None
        self.failed: list[tuple[str, Exception]] = []  # requests whose prefill failed, for the loop to report
        self.prompt_lengths: dict[str, int] = {}  # waiting uid -> prompt tokens (for the token budget)
        config = model.model.config
        self.cross_layers = list(config.get_text_config(decoder=True).cross_attention_layers)
        self.patches = int(model.model.model.vision_model.num_patches)

    # -- the loop's view --------------------------------------------------------------------------------
    def add(self, uid: str, request: GenerationRequest) -> None:
        self.waiting.append((uid, request))

    def cancel(self, uid: str) -> None:
        """The client went away: drop the request if waiting, retire its row at the next step if running."""
        self.waiting = deque((u, r) for u, r in self.waiting if u != uid)
        self.prompt_lengths.pop(uid, None)
        for row in self.rows:
            if row.uid == uid:
                row.cancelled = True

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.rows)

    def step(self) -> list[tuple[str, Delta]]:
        """Admit, decode one token for every row, retire; the deltas to send, in order, per request."""
        import torch

        out: list[tuple[str, Delta]] = []
        with torch.inference_mode():
            self._retire_cancelled()
            self._admit(out)
            if self.rows:
                self._decode(out)
        return out

    def take_failed(self) -> list[tuple[str, Exception]]:
        """Requests that failed on their own (at prefill) since the last call, with why."""
        failed, self.failed = self.failed, []
        return failed

    def fail_all(self) -> list[str]:
        """After an error in a step: forget every request; the uids still to be told (not the cancelled
        rows, whose clients are gone; `take_failed` first for the prefills that failed on their own)."""
        uids = [row.uid for row in self.rows if not row.cancelled] + [uid for uid, _ in self.waiting]
        self.rows, self.batch = [], None
        self.waiting.clear()
        self.prompt_lengths.clear()
        return uids

    # -- the three phases -------------------------------------------------------------------------------
    def _admit(self, out: list[tuple[str, Delta]]) -> None:
        if not self.waiting or len(self.rows) >= self.max_batch_size:
            return
        budget = sum(row.reserved for row in self.rows)
        chosen: list[tuple[str, GenerationRequest]] = []
        while self.waiting and len(self.rows) + len(chosen) < self.max_batch_size:
            uid, request = self.waiting[0]
            if self.max_batch_tokens:
                need = self._prompt_length(uid, request) + request.sampling.max_tokens
                if (self.rows or chosen) and budget + need > self.max_batch_tokens:
                    break
                budget += need
            chosen.append(self.waiting.popleft())
        if not chosen:
            return
        try:
            self._prefill(chosen, out)
        except Exception as exc:  # the running rows' cache is untouched: only the newcomers fail
            log.exception("prefill of %d requests failed", len(chosen))
            self.failed.extend((uid, exc) for uid, _ in chosen)

    def _prompt_length(self, uid: str, request: GenerationRequest) -> int:
        if uid not in self.prompt_lengths:
            self.prompt_lengths[uid] = self.model.prompt_length(request)
        return self.prompt_lengths[uid]

    def _prefill(self, chosen: list[tuple[str, GenerationRequest]], out: list[tuple[str, Delta]]) -> None:
        from transformers import DynamicCache

        model = self.model
        for uid, _ in chosen:
            self.prompt_lengths.pop(uid, None)
        requests = [request for _, request in chosen]
        inputs = model.prepare(requests)
        attention = inputs["attention_mask"]
        positions = (attention.long().cumsum(-1) - 1).masked_fill(attention == 0, 0)
        cache = DynamicCache(config=model.model.config)
        started = time.monotonic()
        result = model.model(
            **inputs, position_ids=positions, past_key_values=cache, use_cache=True, logits_to_keep=1
        )
        logits = result.logits[:, -1, :].float()
        prompts = attention.sum(dim=1).tolist()
        rows = [
            _Row(
                uid,
                request,
                RowText(model.tokenizer, request.sampling, request.stream, n, model.eos_ids),
                started=started,
            )
            for (uid, request), n in zip(chosen, prompts, strict=True)
        ]
        first = self._pick(logits, rows)
        fresh = RunningBatch.from_prefill(
            result.past_key_values, inputs, first, self.cross_layers, self.patches
        )
        self._emit(rows, first.tolist(), out, len(self.rows) + len(rows))
        keep = [i for i, row in enumerate(rows) if not row.text.finished]
        if not keep:
            return
        if len(keep) < len(rows):
            fresh.keep(keep)  # compacts
        else:
            fresh.compact()  # the processor pads every image to the model's largest tile count
        if self.batch is None:
            self.batch = fresh
        else:
            self.batch.merge(fresh)
        self.rows.extend(rows[i] for i in keep)

    def _decode(self, out: list[tuple[str, Delta]]) -> None:
        assert self.batch is not None
        result = self.model.model(**self.batch.decode_inputs())
        logits = result.logits[:, -1, :].float()
        tokens = self._pick(logits, self.rows)
        self.batch.advance(tokens)
        self._emit(self.rows, tokens.tolist(), out, len(self.rows))
        self._retire([i for i, row in enumerate(self.rows) if not row.text.finished])

    def _retire_cancelled(self) -> None:
        if any(row.cancelled for row in self.rows):
            self._retire([i for i, row in enumerate(self.rows) if not row.cancelled])

    def _retire(self, keep: list[int]) -> None:
        if len(keep) == len(self.rows):
            return
        if not keep:
            self.rows, self.batch = [], None
            return
        assert self.batch is not None
        self.batch.keep(keep)
        self.rows = [self.rows[i] for i in keep]

    # -- per row ----------------------------------------------------------------------------------------
    def _pick(self, logits: Any, rows: list[_Row]) -> Any:
        """Greedy rows take the argmax of the whole batch at once; sampling rows draw on their own."""
        import torch

        tokens = torch.argmax(logits, dim=-1)
        for i, row in enumerate(rows):
            if not row.sampler.greedy:
                tokens[i] = row.sampler.pick(logits[i], row.text.ids)
        return tokens

    def _emit(self, rows: list[_Row], tokens: list[int], out: list[tuple[str, Delta]], size: int) -> None:
        now = time.monotonic()
        for row, token in zip(rows, tokens, strict=True):
            delta = row.text.advance(token, now - row.started, size, row.sampler.last_logprobs)
            if delta is not None:
                out.append((row.uid, delta))
