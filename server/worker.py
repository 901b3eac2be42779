"""LitServe's side of the model workers: `VisionAPI` holds the model, and how requests reach it depends on
`batching`.

- static: LitServe's own batched streaming loop collects requests for `batch_timeout` and `predict` runs one
  `generate` for them; the next batch waits for the whole of this one.
- continuous: `SchedulerLoop` (a LitServe loop, passed as `LitAPI(loop=...)`) takes requests from LitServe's
  queue whenever the running batch has a free slot and drives `Scheduler.step` (server/scheduler.py), sending
  each step's deltas back through LitServe's transport. We use LitServe's loop hook rather than its
  `ContinuousBatchingLoop` because that one runs `step` in a thread beside the coroutine that adds requests
  (so the batch would need locks), spins without sleeping while idle, and never applies the queue timeout;
  here one thread owns the scheduler and every send, and helper threads only hand it messages.

Requests reach a worker already checked and with their image fetched (see server/spec.py), so nothing
here can fail because of one request and take its batch-mates down with it."""

from __future__ import annotations

import logging
import os
import pickle
import queue
import threading
import time
from collections.abc import Iterator
from queue import Queue
from typing import Any

import litserve as ls
from fastapi import HTTPException
from litserve.loops.base import _SENTINEL_VALUE, LitLoop, _StopLoopError
from litserve.specs.base import LitSpec
from litserve.utils import LitAPIStatus, LoopResponseType

from visionrag.server.generation import Delta, GenerationRequest, VisionModel
from visionrag.server.lifecycle import die_with_parent, ignore_interrupts
from visionrag.server.logs import configure_logging
from visionrag.server.settings import Settings

log = logging.getLogger(__name__)

_IDLE_WAIT = 1.0  # seconds an idle loop blocks on its inbox before looking again
_CANCEL_CHECK = 0.25  # seconds between looks at the shared cancel dict (each look is a round trip)


class VisionAPI(ls.LitAPI):
    def __init__(self, settings: Settings, spec: LitSpec) -> None:
        super().__init__(
            max_batch_size=settings.max_batch_size,
            batch_timeout=settings.batch_timeout,
            spec=spec,
            loop=SchedulerLoop() if settings.batching == "continuous" else "auto",
        )
        self.settings = settings
        self.parent_pid = os.getpid()  # built in the main process, which spawns the workers
        self.model: VisionModel | None = None
        self.scheduler: Any = None
        self.cancelled: Any = None  # shared dict uid -> time its client went away (server/app.py sets it)

    def setup(self, device: str) -> None:
        die_with_parent(self.parent_pid)
        ignore_interrupts()
        configure_logging(self.settings.log_level)
        self._load(device)

    def _load(self, device: str) -> None:
        s = self.settings
        started = time.perf_counter()
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
        log.info(
            "worker %s: model loaded on %s in %.1f s", os.getpid(), device, time.perf_counter() - started
        )
        if s.batching == "continuous":
            from visionrag.server.scheduler import Scheduler

            self.scheduler = Scheduler(self.model, s.max_batch_size, s.max_batch_tokens)

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


class SchedulerLoop(LitLoop):
    """Continuous batching inside one LitServe worker. The loop thread owns the scheduler and all sending;
    a receiver thread takes requests from LitServe's queue (a manager queue: every call is a round trip
    to another process) only while this worker has a free slot, so other workers get the rest, and a
    watcher thread looks at the shared cancel dict. Neither blocks a decoding step on inter-process calls,
    which on a busy CPU cost a scheduling delay each."""

    def __call__(self, lit_api: VisionAPI, *args: Any) -> None:
        """LitServe's loop entry point; `run` takes the same arguments, named."""
        try:
            self.run(lit_api, *args)
        except _StopLoopError:  # LitServe's sentinel: the server is shutting down
            return

    def run(
        self,
        lit_api: VisionAPI,
        device: str,
        worker_id: int,
        request_queue: Queue,
        transport: Any,
        workers_setup_status: dict[str, str],
        callback_runner: Any,
    ) -> None:
        scheduler = lit_api.scheduler
        inbox: queue.Queue = queue.Queue()
        slots = threading.Semaphore(scheduler.max_batch_size)
        forget: queue.Queue = queue.Queue()  # cancel marks this worker has acted on
        threading.Thread(
            target=_receive, args=(lit_api, request_queue, inbox, slots), name="receive", daemon=True
        ).start()
        if lit_api.cancelled is not None:
            threading.Thread(
                target=_watch_cancelled, args=(lit_api.cancelled, inbox, forget), name="cancels", daemon=True
            ).start()
        outbox = _Outbox(self, transport)
        threading.Thread(target=outbox.run, name="send", daemon=True).start()
        senders: dict[str, int] = {}  # uid -> response queue id

        def fail(uid: str, exc: BaseException) -> None:
            outbox.put(senders.pop(uid), uid, pickle.dumps(exc), LitAPIStatus.ERROR)
            slots.release()

        while True:
            self._handle(inbox, scheduler, senders, outbox, slots, forget, block=not scheduler.busy)
            if not scheduler.busy:
                continue
            try:
                outputs = scheduler.step()
            except Exception as exc:
                log.exception("continuous batching step failed; failing its %d requests", len(senders))
                for uid, own in scheduler.take_failed():
                    fail(uid, own)
                for uid in scheduler.fail_all():
                    fail(uid, exc)
                continue
            for uid, exc in scheduler.take_failed():
                fail(uid, exc)
            for uid, delta in outputs:
                queue_id = senders[uid]
                data = lit_api.format_encoded_response(delta.to_dict())
                outbox.put(queue_id, uid, data, LitAPIStatus.OK)
                if delta.done:
                    del senders[uid]
                    slots.release()
                    outbox.put(queue_id, uid, "", LitAPIStatus.FINISH_STREAMING)

    def _handle(
        self,
        inbox: queue.Queue,
        scheduler: Any,
        senders: dict[str, int],
        outbox: _Outbox,
        slots: threading.Semaphore,
        forget: queue.Queue,
        block: bool,
    ) -> None:
        """Act on what the receiver and the watcher handed over (blocking a while only when idle)."""
        while True:
            try:
                message = inbox.get(timeout=_IDLE_WAIT) if block else inbox.get_nowait()
            except queue.Empty:
                return
            block = False
            kind = message[0]
            if kind == "stop":
                raise _StopLoopError()
            if kind == "add":
                _, queue_id, uid, request = message
                senders[uid] = queue_id
                scheduler.add(uid, request)
            elif kind == "error":
                _, queue_id, uid, error = message
                outbox.put(queue_id, uid, error, LitAPIStatus.ERROR)
                slots.release()
            elif kind == "cancel":
                for uid in message[1]:
                    if uid in senders:
                        log.info("client of %s went away; retiring its row", uid)
                        scheduler.cancel(uid)
                        del senders[uid]
                        slots.release()
                        forget.put(uid)


class _Outbox:
    """Sender thread: every response goes out from this one thread, in order (a ZMQ transport's socket is
    not thread-safe), while the loop thread computes the next step, as static batching's generate thread
    does."""

    def __init__(self, loop: LitLoop, transport: Any) -> None:
        self.loop = loop
        self.transport = transport
        self.queue: queue.Queue = queue.Queue()

    def put(self, queue_id: int, uid: str, data: Any, status: LitAPIStatus) -> None:
        self.queue.put((queue_id, uid, data, status))

    def run(self) -> None:
        while True:
            queue_id, uid, data, status = self.queue.get()
            try:
                self.loop.put_response(
                    self.transport, queue_id, uid, data, status, LoopResponseType.STREAMING
                )
            except Exception:  # the API process is gone (shutting down) or the message did not pickle
                log.exception("could not send a response for %s", uid)


def _receive(
    lit_api: VisionAPI, request_queue: Queue, inbox: queue.Queue, slots: threading.Semaphore
) -> None:
    """Receiver thread: one request from LitServe's queue per free slot, checked and decoded, to the loop."""
    timeout = lit_api.request_timeout
    while True:
        slots.acquire()
        item = request_queue.get()
        if item == _SENTINEL_VALUE:
            inbox.put(("stop",))
            return
        queue_id, uid, queued_at, payload = item
        waited = time.monotonic() - queued_at
        if timeout not in (-1, False, None) and waited > timeout:
            log.error("request %s waited %.1f s for a worker; answering 504", uid, waited)
            inbox.put(("error", queue_id, uid, HTTPException(504, "Request timed out")))
            continue
        try:
            inbox.put(("add", queue_id, uid, lit_api.decode_request(payload)))
        except Exception as exc:
            log.exception("could not decode request %s", uid)
            inbox.put(("error", queue_id, uid, pickle.dumps(exc)))


def _watch_cancelled(cancelled: Any, inbox: queue.Queue, forget: queue.Queue) -> None:
    """Watcher thread: hand the loop the uids whose clients went away; remove the marks it acted on."""
    while True:
        time.sleep(_CANCEL_CHECK)  # a polling interval, not synchronisation
        try:
            while True:
                try:
                    cancelled.pop(forget.get_nowait(), None)
                except queue.Empty:
                    break
            gone = list(cancelled.keys())
        except (OSError, EOFError):  # the manager is gone: the server is shutting down
            return
        if gone:
            inbox.put(("cancel", gone))
