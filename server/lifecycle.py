"""Process lifetime for `visionrag serve`: SIGTERM / SIGINT to the main process start one graceful
shutdown, and no child process (API server, model worker, LitServe's manager) outlives its parent.

LitServe forks the API server and the manager and spawns the model workers; if the main process dies
without its shutdown (kill -9, an exception before LitServe's own `try`), those children would keep the
port, keep answering and keep their GPU memory. Each child therefore asks the kernel for a signal when
its parent dies (`prctl(PR_SET_PDEATHSIG)` on Linux; a thread watching `getppid()` elsewhere)."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_fork_guard_installed = False
_prctl_fn: Any = None
_forking_parent = 0


class ShutdownRequested(KeyboardInterrupt):
    """Raised in the main thread by SIGTERM or SIGINT. A KeyboardInterrupt, so LitServe's `run()` takes
    its own graceful-shutdown path (API server drained, workers stopped, manager shut down)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def die_with_parent(parent_pid: int, sig: int = signal.SIGTERM) -> None:
    """Make the calling process receive `sig` when `parent_pid` exits; exit now if it already has.

    SIGTERM, not SIGKILL: the API server then drains and closes the journal, a worker just stops."""
    prctl = _prctl()
    if prctl is not None and prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0:
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)
        return
    threading.Thread(target=_watch_parent, args=(parent_pid, sig), name="parent-watch", daemon=True).start()


def _prctl() -> Any:
    """libc's prctl (Linux), looked up once: a forked child must not dlopen (another thread of the parent
    may have held the loader's lock at the fork), so install_fork_guard looks it up before any fork."""
    global _prctl_fn
    if _prctl_fn is None and sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            _prctl_fn = ctypes.CDLL(None, use_errno=True).prctl
    return _prctl_fn


def _watch_parent(parent_pid: int, sig: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    os.kill(os.getpid(), sig)


def _before_fork() -> None:
    global _forking_parent
    _forking_parent = os.getpid()


def _after_fork_in_child() -> None:
    die_with_parent(_forking_parent)


def install_fork_guard() -> None:
    """Every process this process forks from now on (LitServe's API server and manager) dies with it.
    Registered once per process; `os.register_at_fork` cannot be undone, so only `serve` calls it."""
    global _fork_guard_installed
    if not _fork_guard_installed:
        _prctl()  # resolved here, in the parent, before any fork
        os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
        _fork_guard_installed = True


@contextlib.contextmanager
def shutdown_on_signals(on_signal: Callable[[], None] | None = None) -> Iterator[None]:
    """SIGTERM and SIGINT raise `ShutdownRequested` in the main thread, once: a second signal while the
    graceful shutdown runs is logged and ignored (the children die with this process in any case).

    Forked children inherit the handlers: there the signal takes its default action, so a child killed
    before it installs its own handlers (uvicorn does) still dies."""
    owner = os.getpid()
    received: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if received:
            log.warning("%s received again: already shutting down", signal.Signals(signum).name)
            return
        received.append(signum)
        log.info("%s received: shutting down", signal.Signals(signum).name)
        if on_signal is not None:  # before the children start exiting, so their exits read as expected
            on_signal()
        raise ShutdownRequested(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def ignore_interrupts() -> None:
    """A model worker ignores Ctrl-C (the terminal sends it to the whole process group): the main process
    stops the workers after the API server has finished its in-flight answers."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
