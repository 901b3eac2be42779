"""The embedded engine of the history's collection (`Store`): qdrant-edge, Qdrant's own Rust engine in this
process (named vectors, MAX_SIM multivectors, payload indexes, weighted RRF, a WAL, int8 quantization).

On disk, under `data_dir/edge/<collection>/`:

* `LOCK`: held (flock) while a process has the store open, so a second process gets a clear
  StoreUnavailable instead of a second writer;
* `gNNNNNN/visionrag.json` (META): inside each shard folder, the vector sizes it was created with (checked
  against the CLIP models) and its `layout` (LAYOUT), so switching CURRENT is the one commit point; a shard
  of an older layout (layout 1 kept them in `meta.json` beside the folders) is copied when opened;
* `CURRENT`: the name of the live shard folder (`g000001`, `g000002`, ...), replaced atomically when a
  background index build swaps in a new generation (see edge_build.py); other folders are leftovers of an
  interrupted build and are removed on open.

qdrant-edge holds the GIL in every call, so calls are atomic for Python threads; the locks here order
the state changes (open, swap, close) and keep writes out of a shard folder while it is being copied.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

import qdrant_edge as qe

from visionrag.search.config import HistoryConfig
from visionrag.search.edge_schema import (
    LAYOUT,
    PAYLOAD_INDEXES,
    build_filter,
    edge_config,
    edge_vectors,
    point_copies,
    search_params,
)
from visionrag.search.errors import StoreUnavailable
from visionrag.search.store import IMAGE, RRF_K, TEXT, Filters, Point, Probe, SchemaMismatch, Store

log = logging.getLogger(__name__)

EDGE_DIR = "edge"  # data_dir/edge: never the old local-mode folder (data_dir/qdrant)
META, LEGACY_META = "visionrag.json", "meta.json"


def _write_durably(path: Path, text: str) -> None:
    """Write, fsync, rename over `path`, fsync the folder: a crash leaves the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unreadable(path: Path, why: object) -> str:
    return (
        f"the embedded store's {path} is unreadable ({why}); move {path.parent.parent} away and run "
        "`visionrag reindex --recreate` to rebuild it from the journal"
    )


class EdgeStore(Store):
    """The embedded store. `maintain()` (called by the indexer when idle) builds the index in a
    child process on a copy of the shard and swaps it in, see edge_build.py."""

    embedded = True

    def __init__(self, settings: HistoryConfig, build_min_new: int | None = None) -> None:
        from visionrag.search.edge_build import BUILD_MIN_NEW, Builder

        self.settings = settings
        self.root = settings.data_dir / EDGE_DIR / settings.collection_name
        self._shard: qe.EdgeShard | None = None
        self._lock_file: IO[str] | None = None
        self._lock = threading.RLock()  # the shard reference: open, swap, close, every call
        self._write_lock = threading.RLock()  # writes, and a shard folder being copied
        self._dirty: set[str] | None = None  # ids written while a build copies/indexes (replayed at swap)
        self._unflushed = False  # written since the last flush (the WAL is not fsynced per write)
        self.builder = Builder(self, BUILD_MIN_NEW if build_min_new is None else build_min_new)

    @property
    def where(self) -> str:
        return str(self.root)

    # -- files ------------------------------------------------------------------------------------
    def _current(self) -> Path | None:
        try:
            name = (self.root / "CURRENT").read_text().strip()
        except FileNotFoundError:
            return None
        return self.root / name if name else None

    def _set_current(self, folder: Path) -> None:
        _write_durably(self.root / "CURRENT", folder.name + "\n")

    def _next_folder(self) -> Path:
        numbers = [int(p.name[1:]) for p in self.root.glob("g[0-9]*") if p.name[1:].isdigit()]
        return self.root / f"g{max(numbers, default=0) + 1:06d}"

    def _meta(self, folder: Path) -> dict[str, int]:
        """The shard folder's own META; for a layout-1 shard, `meta.json` beside the folders."""
        for path in (folder / META, self.root / LEGACY_META):
            try:
                return {"layout": 1, **json.loads(path.read_text())}
            except FileNotFoundError:
                continue
            except ValueError as exc:
                raise StoreUnavailable(_unreadable(path, exc)) from exc
        raise StoreUnavailable(_unreadable(folder / META, "missing"))

    # -- opening ----------------------------------------------------------------------------------
    def _acquire(self) -> None:
        """Take the folder lock (once per store object)."""
        if self._lock_file is not None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        f = open(self.root / "LOCK", "a+")  # noqa: SIM115 (held open for the life of the store)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            f.close()
            raise StoreUnavailable(
                f"the embedded store {self.root} is in use by another process; stop it (the server) or set "
                f"QDRANT_URL ({exc})"
            ) from exc
        self._lock_file = f
        live = self._current()
        for stale in self.root.glob("g[0-9]*"):  # an interrupted build's copy
            if live is None or stale.name != live.name:
                shutil.rmtree(stale, ignore_errors=True)

    def _open(self) -> qe.EdgeShard | None:
        """The live shard, loading it on first use; None while the collection does not exist."""
        if self._shard is None:
            self._acquire()
            folder = self._current()
            if folder is not None:
                try:
                    self._shard = qe.EdgeShard.load(str(folder))
                except Exception as exc:  # a held WAL, unreadable segments
                    raise StoreUnavailable(f"cannot open the embedded store {folder}: {exc}") from exc
                meta = self._meta(folder)
                if meta["layout"] != LAYOUT:
                    self._upgrade(meta)
        return self._shard

    def _upgrade(self, meta: dict[str, int]) -> None:
        """Copy a shard of an older layout (LAYOUT) into a new generation: points and payloads as they are,
        no CLIP needed. The old generation stays current until the copy is complete; if the copy fails,
        the old shard goes on serving (searchable, only slower to build) until the next start."""
        from tqdm import tqdm

        old, old_folder = self._shard, self._current()
        assert old is not None and old_folder is not None
        total = old.count(qe.CountRequest(exact=True))
        log.warning(
            "the embedded store %s has layout %s; copying its %d points into layout %d (a one-time step)",
            self.root,
            meta["layout"],
            total,
            LAYOUT,
        )
        folder, new = None, None
        try:
            folder, new = self._new_generation(meta[IMAGE], meta[TEXT])
            offset = None
            with tqdm(total=total, unit="point", desc="upgrade") as bar:
                while True:
                    request = qe.ScrollRequest(offset=offset, limit=512, with_payload=True, with_vector=True)
                    records, offset = old.scroll(request)
                    if records:
                        new.update(qe.UpdateOperation.upsert_points(point_copies(records)))
                        bar.update(len(records))
                    if offset is None:
                        break
            new.flush()
        except Exception as exc:
            if new is not None:
                with contextlib.suppress(Exception):
                    new.close()
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
            log.warning("cannot copy %s into layout %d (%s); serving it as it is", old_folder, LAYOUT, exc)
            return
        self._make_current(folder, new)
        old.close()
        shutil.rmtree(old_folder, ignore_errors=True)
        (self.root / LEGACY_META).unlink(missing_ok=True)
        log.warning("the embedded store %s now has layout %d (%d points)", self.root, LAYOUT, total)

    @contextlib.contextmanager
    def _calling(self, what: str) -> Iterator[qe.EdgeShard]:
        """The live shard for one call, translating engine errors into StoreUnavailable."""
        with self._lock:
            shard = self._open()
            if shard is None:
                raise StoreUnavailable(f"the embedded store {self.root} has no collection yet ({what})")
            try:
                yield shard
            except (StoreUnavailable, SchemaMismatch):
                raise
            except Exception as exc:  # qdrant-edge raises plain Exception with the engine's message
                raise StoreUnavailable(f"embedded store {self.root} failed to {what}: {exc}") from exc

    def collection_exists(self) -> bool:
        with self._lock:
            return self._open() is not None

    def close(self) -> None:
        self.builder.cancel()
        with self._write_lock, self._lock:
            if self._shard is not None:
                with contextlib.suppress(Exception):
                    self._shard.close()
                self._shard = None
            if self._lock_file is not None:
                self._lock_file.close()  # releases the flock
                self._lock_file = None

    # -- collection -------------------------------------------------------------------------------
    def ensure_collection(self, image_dim: int, text_dim: int) -> bool:
        with self._write_lock, self._lock:
            if self._open() is None:
                self._create(image_dim, text_dim)
                return True
            folder = self._current()
            assert folder is not None
            meta, want = self._meta(folder), {IMAGE: image_dim, TEXT: text_dim}
            have = {k: meta.get(k) for k in want}
            if have != want:
                raise SchemaMismatch(
                    f"collection {self.settings.collection_name!r} has vectors {have} but the CLIP models give "
                    f"{want}; run `visionrag reindex --recreate` to rebuild it from the journal"
                )
            return False

    def _create(self, image_dim: int, text_dim: int) -> None:
        """A new, empty shard generation with the payload indexes, made current."""
        self._make_current(*self._new_generation(image_dim, text_dim))

    def _new_generation(self, image_dim: int, text_dim: int) -> tuple[Path, qe.EdgeShard]:
        folder = self._next_folder()
        try:
            shard = qe.EdgeShard.create(str(folder), edge_config(image_dim, text_dim))
            for key, kind in PAYLOAD_INDEXES:
                shard.update(qe.UpdateOperation.create_field_index(key, kind))
            shard.flush()
            _write_durably(folder / META, json.dumps({IMAGE: image_dim, TEXT: text_dim, "layout": LAYOUT}))
        except Exception as exc:
            raise StoreUnavailable(f"cannot create the embedded store in {folder}: {exc}") from exc
        return folder, shard

    def _make_current(self, folder: Path, shard: qe.EdgeShard) -> None:
        self._set_current(folder)
        self._shard = shard

    def recreate(self, image_dim: int, text_dim: int) -> None:
        self.builder.cancel()
        with self._write_lock, self._lock:
            self._acquire()
            old = self._current()
            if self._shard is not None:
                self._shard.close()
                self._shard = None
            self._create(image_dim, text_dim)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)

    def count(self) -> int:
        with self._calling("count") as shard:
            return shard.count(qe.CountRequest(exact=True))

    # -- points -----------------------------------------------------------------------------------
    def _touched(self, ids: Sequence[str]) -> None:
        self._unflushed = True
        if self._dirty is not None:
            self._dirty.update(ids)

    def upsert(self, points: Sequence[Point]) -> None:
        if not points:
            return
        op = qe.UpdateOperation.upsert_points([qe.Point(p.id, edge_vectors(p), p.payload) for p in points])
        with self._write_lock, self._calling("upsert") as shard:
            shard.update(op)
            self._touched([p.id for p in points])

    def delete(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        with self._write_lock, self._calling("delete") as shard:
            shard.update(qe.UpdateOperation.delete_points(list(ids)))
            self._touched(ids)

    def retrieve(self, ids: Sequence[str]) -> set[str]:
        with self._calling("retrieve") as shard:
            return {str(r.id) for r in shard.retrieve(list(ids), with_payload=False, with_vector=False)}

    def query(
        self, probes: Sequence[Probe], filters: Filters | None, limit: int, offset: int = 0
    ) -> list[tuple[str, float]]:
        query_filter = build_filter(filters)

        def nearest(probe: Probe) -> qe.Query:
            vector = [float(x) for x in probe.vector]
            return qe.Query.Nearest([vector] if probe.using == TEXT else vector, using=probe.using)

        if len(probes) == 1:
            request = qe.QueryRequest(
                limit=limit,
                offset=offset,
                query=nearest(probes[0]),
                filter=query_filter,
                params=search_params(),
                with_payload=False,
            )
        else:
            depth = max(offset + limit, 50)  # each list must reach past the requested page to fuse well
            request = qe.QueryRequest(
                limit=limit,
                offset=offset,
                prefetches=[
                    qe.Prefetch(depth, query=nearest(p), filter=query_filter, params=search_params())
                    for p in probes
                ],
                query=qe.Fusion.Rrf(RRF_K, weights=[p.weight for p in probes]),
                filter=query_filter,
                with_payload=False,
            )
        with self._calling("search") as shard:
            return [(str(p.id), float(p.score)) for p in shard.query(request)]

    # -- index maintenance --------------------------------------------------------------------------
    def maintain(self) -> float | None:
        """Flush what was written since the last idle moment (durable on disk, not only in the page
        cache), then start, watch or finish a background index build."""
        if self._unflushed:
            with self._write_lock, self._calling("flush") as shard:
                shard.flush()
                self._unflushed = False
        return self.builder.step()

    def info(self) -> dict[str, int]:
        """points, indexed vectors (built, both named vectors) and segments, for logs and benchmarks."""
        with self._calling("read its info") as shard:
            i = shard.info()
            return {
                "points": i.points_count,
                "indexed_vectors": i.indexed_vectors_count,
                "segments": i.segments_count,
            }
