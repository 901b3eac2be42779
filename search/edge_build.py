"""Building the embedded store's index without stopping anything (a shard swap).

New points land in an appendable segment that is scanned on its float vectors. qdrant-edge builds the
searchable form (segments merged into one, with the int8 copies of both vectors that searches scan, see
edge_schema.py) only in `optimize()`, synchronously, and holds the GIL all the while (no other Python
thread runs: no search, no request, no indexing). So the build never runs in the server process:

1. when the indexer is idle and enough points are outside the built segment (see BUILD_MIN_NEW),
   `Builder.step` flushes the live shard and copies its folder to the next generation (writes wait for
   the copy, searches do not), and starts `python -m visionrag.search.edge_build <copy>` at low priority;
2. meanwhile searches and the indexer use the live shard; every id written is remembered;
3. when the child is done, the copy is loaded, the remembered ids are replayed into it from the live shard
   (upserts and deletions), `CURRENT` is switched atomically and the old generation removed.

A crash at any point leaves `CURRENT` on a complete shard (the old one until the switch); the unfinished
copy is removed on the next open. The journal stays the truth throughout.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import qdrant_edge as qe

from visionrag.search.edge_schema import point_copies

if TYPE_CHECKING:
    from visionrag.search.edge_store import EdgeStore

log = logging.getLogger(__name__)

# Unindexed points that trigger a build: max(BUILD_MIN_NEW, BUILD_FRACTION x points already built). The float
# scan of the appendable segment costs ~0.5 ms per 1,000 points per query on the 2-core box (45 ms at 100k
# for `text`, measured), and a build re-merges the whole shard (6 s at 100k points, measured), so building
# every 5 % keeps the unbuilt part to a few ms of scan and the amortised build cost to ~1 ms per new point,
# far below its CLIP embedding (~150 ms). See BENCHMARKS.md. BUILD_MIN_NEW = 0 turns building off.
BUILD_MIN_NEW = 2000
BUILD_FRACTION = 0.05
NICE = 10  # the child's priority increment: the server's searches and requests come first
POLL_SECONDS = 1.0  # how often the idle indexer looks at a running build
REPLAY_BATCH = 256


class Builder:
    """The background index build of one EdgeStore; its methods run in the indexer thread."""

    def __init__(self, store: EdgeStore, min_new: int) -> None:
        self.store = store
        self.min_new = min_new
        self.nice = NICE
        self.proc: subprocess.Popen | None = None
        self.folder: Path | None = None
        self.started_at = 0.0
        self.last: dict[str, Any] | None = None  # the last build's numbers (for logs, benchmarks)
        self._skip_below = 0  # after a failed build: wait for more new points before trying again

    def unindexed(self) -> int:
        return self._counts()[1]

    def _counts(self) -> tuple[int, int]:
        """(points in the built segment, points outside it)."""
        info = self.store.info()
        indexed = info["indexed_vectors"] // 2  # two named vectors per point
        return indexed, max(0, info["points"] - indexed)

    def step(self) -> float | None:
        """Start, watch or finish a build; seconds until the next call is wanted, None when no build runs."""
        if self.proc is None:
            if self.min_new <= 0 or not self.store.collection_exists():
                return None
            indexed, new = self._counts()
            if new < max(self.min_new, int(BUILD_FRACTION * indexed), self._skip_below):
                return None
            self.start(new)
            return POLL_SECONDS
        if self.proc.poll() is None:
            return POLL_SECONDS
        self.finish()
        return None

    def build_now(self) -> dict[str, Any] | None:
        """Build in the calling thread's time (benchmarks, tools); searches keep running meanwhile."""
        if self.proc is None:
            self.start(self.unindexed())
        assert self.proc is not None
        self.proc.wait()
        self.finish()
        return self.last

    def start(self, new: int) -> None:
        store = self.store
        t0 = time.perf_counter()
        with store._write_lock:
            with store._lock:
                live = store._current()
                shard = store._open()
                if live is None or shard is None:
                    return
                shard.flush()
            folder = store._next_folder()
            try:
                shutil.copytree(live, folder)
            except OSError as exc:  # a full disk: try again once more points have arrived
                self._failed(folder, f"copy failed: {exc}")
                return
            store._dirty = set()
        copy_s = time.perf_counter() - t0
        log.info("building the index of %s in the background (%d new points)", store.root, new)
        try:
            with open(store.root / "build.log", "w") as err:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "visionrag.search.edge_build", str(folder), str(self.nice)],
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                )
        except OSError as exc:
            self._failed(folder, f"cannot start the build process: {exc}")
            return
        self.folder, self.started_at = folder, time.perf_counter()
        self.last = {"new_points": new, "copy_s": copy_s}

    def finish(self) -> None:
        store, proc, folder = self.store, self.proc, self.folder
        assert proc is not None and folder is not None
        self.proc, self.folder = None, None
        build_s = time.perf_counter() - self.started_at
        if proc.returncode != 0:
            tail = (store.root / "build.log").read_text(errors="replace")[-500:]
            self._failed(folder, f"exit {proc.returncode}: {tail}")
            return
        t0 = time.perf_counter()
        # writes wait for the replay; searches go on in the live shard until the pointer switch
        with store._write_lock:
            old_shard, old_folder = store._shard, store._current()
            new_shard = None
            try:
                new_shard = qe.EdgeShard.load(str(folder))
                replayed = self._replay(old_shard, new_shard, sorted(store._dirty or ()))
                new_shard.flush()
            except Exception as exc:
                if new_shard is not None:
                    with contextlib.suppress(Exception):
                        new_shard.close()
                self._failed(folder, f"not swapped in: {exc}")
                return
            with store._lock:
                store._set_current(folder)
                store._shard, store._dirty = new_shard, None
                if old_shard is not None:
                    old_shard.close()
        if old_folder is not None:
            shutil.rmtree(old_folder, ignore_errors=True)
        self._skip_below = 0
        assert self.last is not None
        self.last.update(build_s=build_s, swap_s=time.perf_counter() - t0, replayed=replayed)
        log.info(
            "index of %s swapped in: copy %.1f s, build %.1f s, swap %.2f s (%d points replayed)",
            store.root,
            self.last["copy_s"],
            build_s,
            self.last["swap_s"],
            replayed,
        )

    @staticmethod
    def _replay(old: qe.EdgeShard | None, new: qe.EdgeShard, ids: list[str]) -> int:
        """Bring the new generation up to date with what the live one received during the build."""
        if old is None:
            return 0
        for at in range(0, len(ids), REPLAY_BATCH):
            batch = ids[at : at + REPLAY_BATCH]
            records = old.retrieve(batch, with_payload=True, with_vector=True)
            if records:
                new.update(qe.UpdateOperation.upsert_points(point_copies(records)))
            found = {str(r.id) for r in records}
            gone = [i for i in batch if i not in found]
            if gone:
                new.update(qe.UpdateOperation.delete_points(gone))
        return len(ids)

    def _failed(self, folder: Path, why: str) -> None:
        """Throw the copy away and wait for more new points before the next try (no retry loop)."""
        log.warning("index build of %s failed, %s", self.store.root, why)
        self._discard(folder)
        self._skip_below = self.unindexed() + self.min_new

    def _discard(self, folder: Path) -> None:
        with self.store._write_lock:  # a writer may be adding to _dirty
            self.store._dirty = None
        shutil.rmtree(folder, ignore_errors=True)

    def cancel(self) -> None:
        """Stop a running build (close, recreate): the copy is thrown away."""
        proc, folder = self.proc, self.folder
        if proc is None or folder is None:
            return
        self.proc, self.folder = None, None
        proc.kill()
        proc.wait()
        self._discard(folder)


def main(argv: list[str]) -> int:
    """The child: load the copy, build its index (merge + int8 copies), flush, exit."""
    with contextlib.suppress(OSError):
        os.nice(int(argv[1]) if len(argv) > 1 else NICE)
    shard = qe.EdgeShard.load(argv[0])
    shard.optimize()
    shard.flush()
    shard.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
