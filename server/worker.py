"""LitServe's four methods around `VisionModel`. Runs in the model worker processes; holds only the model.

Requests reach a worker already checked and with their image fetched (see server/spec.py), so nothing
here can fail because of one request and take its batch-mates down with it."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

import litserve as ls
from litserve.specs.base import LitSpec

from visionrag.server.generation import Delta, GenerationRequest, VisionModel
from visionrag.server.lifecycle import die_with_parent, ignore_interrupts
from visionrag.server.settings import Settings

log = logging.getLogger(__name__)


class VisionAPI(ls.LitAPI):
    def __init__(self, settings: Settings, spec: LitSpec) -> None:
        super().__init__(
            max_batch_size=settings.max_batch_size,
            batch_timeout=settings.batch_timeout,
            spec=spec,
        )
        self.settings = settings
        self.model: VisionModel | None = None
        self.parent_pid = os.getpid()  # built in the main process, which spawns the workers

    def setup(self, device: str) -> None:
        die_with_parent(self.parent_pid)
        ignore_interrupts()
        self._load(device)

    def _load(self, device: str) -> None:
        s = self.settings
        if s.placement == "shard":
            log.info("worker %s: sharding %s over all visible GPUs", os.getpid(), s.model_name)
        self.model = VisionModel.load(
            s.model_name,
            device=device,
            placement=s.placement,
            dtype=s.dtype,
            token=s.hf_token,
            compile=s.compile,
        )

    def decode_request(self, request: dict[str, Any]) -> GenerationRequest:
        return GenerationRequest.from_wire(request)

    def batch(self, inputs: list[GenerationRequest]) -> list[GenerationRequest]:
        return list(inputs)

    def predict(self, x: Any) -> Iterator[Any]:
        assert self.model is not None, "setup() has not run"
        if isinstance(x, list):
            yield from self.model.stream(x)
        else:  # max_batch_size == 1: LitServe hands over one request and wants one output per step
            for step in self.model.stream([x]):
                yield step[0]

    def unbatch(self, output: Iterator[list[Delta | None]]) -> Iterator[list[Delta | None]]:
        yield from output

    def encode_response(self, output: Iterator[Any]) -> Iterator[Any]:
        for step in output:
            if isinstance(step, list):
                yield [d.to_dict() if d is not None else None for d in step]
            else:
                yield step.to_dict() if step is not None else None
