"""History benchmark (issue 3): indexing throughput, search latency, answer latency with history on/off, and
the time until an answer is searchable, on CPU, with a CLIP of the real ViT-B/32 shape and random weights.

    .venv/bin/python tests/bench/bench_history.py --workdir /tmp/vrbench --store-dir /dev/shm/vrbench-search
        [--parts index,search,answer,fresh]   (defaults: the BENCHMARKS.md run, ~6-18 min on 2 cores)

Nothing is downloaded: the CLIP (text 12x512/8 heads/77 positions/vocab 49408, vision 12x768/12 heads,
224 px, patch 32, projection 512) and a small random Mllama are built into the work dir on first use (and
reused after). Every loop is bounded in count and in time; every socket is on 127.0.0.1.

1. index:  `History.record` N interactions (distinct 1024x768 diagrams, 150-300-word answers), time until
           `status()["backlog"]` is 0; then the embedding alone (images/s, answer chunks/s) on the same data.
2. search: 1k and 10k interactions in the embedded store. The store is FILLED directly (random unit vectors
           for `image`, multivectors of realistic chunk counts for `text`, realistic payloads, through
           search/store.py's `Store.upsert`, journal rows through `Journal.add`), because embedding 10k
           interactions on 2 cores takes too long; the QUERY path is the real one: `History.search` with
           the CLIP query embedding included, text and image queries, against answers / images / both.
3. answer: `visionrag serve` (real server, subprocess, loopback) on a random Mllama + the real-shape CLIP;
           the same /predict requests with `store` on and off. "paced": alternate on/off, each request
           sent when the indexer is idle (the request-path cost: the journal write). "back-to-back": blocks
           of requests with no pause, so the indexer embeds the previous answers while the next ones are
           generated on the same cores (the honest cost under sustained load).
5. engines: the old local mode and qdrant-edge side by side at 1k, 10k and 100k (issue 12): the same journal
           and points in both, upsert throughput, qdrant-edge's index build (copy, child, swap), RSS growth, and
           `History.search` p50/p95 (CLIP query embedding included) per query kind x against x filter.
           `--parts engines` runs it alone (~20 min on 2 cores).
4. fresh:  time from a /predict response to the first /history/search (text = the exact answer) whose
           results contain that interaction.
The summary table is printed last.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import random
import shutil
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np
import requests
from PIL import Image

from tests.checkpoints.clip import _CORPUS, ClipShape, build_tiny_clip
from tests.checkpoints.mllama import build_tiny_mllama

WORDS = [w.strip(".,;").lower() for w in _CORPUS.split() if w.strip(".,;")]
QUESTION = "What does this architecture diagram show? Describe every component and how they connect."
ROWS: list[tuple[str, str, str]] = []  # (section, measurement, value): the summary table


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def row(section: str, what: str, value: str) -> None:
    ROWS.append((section, what, value))
    log(f"{section} | {what} | {value}")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


def ms(values: list[float]) -> str:
    """p50 / p95 in milliseconds."""
    return f"{pct(values, 50) * 1000:.0f} / {pct(values, 95) * 1000:.0f}"


def spread(per_round: list[float], fmt: str = "{:.1f}") -> str:
    return " | ".join(fmt.format(v) for v in per_round)


def diagram(seed: int, size: tuple[int, int] = (1024, 768)) -> bytes:
    """A synthetic architecture diagram (boxes, arrows, labels), different for each seed, as PNG."""
    from PIL import ImageDraw

    rng = random.Random(seed)
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(6, 14)):
        x, y = rng.randrange(0, max(1, size[0] - 160)), rng.randrange(0, max(1, size[1] - 90))
        color = tuple(rng.randrange(0, 200) for _ in range(3))
        draw.rectangle([x, y, x + rng.randint(80, 160), y + rng.randint(40, 90)], outline=color, width=3)
        draw.text((x + 8, y + 8), " ".join(rng.choices(WORDS, k=2)), fill=color)
        draw.line([x, y, rng.randrange(size[0]), rng.randrange(size[1])], fill=color, width=2)
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def answer_text(rng: random.Random, lo: int = 150, hi: int = 300) -> str:
    words = rng.choices(WORDS, k=rng.randint(lo, hi))
    sentences, at = [], 0
    while at < len(words):
        n = rng.randint(8, 20)
        sentences.append(" ".join(words[at : at + n]).capitalize() + ".")
        at += n
    return " ".join(sentences)


def wait_for(check: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return False


# -- checkpoints ------------------------------------------------------------------------------------------
def clip_dirs(work: Path) -> tuple[Path, Path]:
    root = work / "clip-vit-b-32-random"
    text, vision = root / "text", root / "vision"
    if not ((text / "model.onnx").exists() and (vision / "model.onnx").exists()):
        log("exporting a random CLIP of the ViT-B/32 shape to ONNX (fastembed layout) ...")
        t = time.perf_counter()
        build_tiny_clip(root, ClipShape.vit_b_32())
        log(f"  exported in {time.perf_counter() - t:.0f} s")
    return text, vision


def mllama_dir(work: Path, hidden: int) -> Path:
    root = work / f"mllama-h{hidden}"
    if not (root / "config.json").exists():
        build_tiny_mllama(root, hidden_size=hidden, intermediate_size=hidden * 2)
    return root


def settings_for(data_dir: Path, text: Path, vision: Path) -> Any:
    from visionrag.search.config import HistoryConfig

    return HistoryConfig(data_dir=data_dir, text_model_path=text, image_model_path=vision)


# -- 1. indexing throughput ------------------------------------------------------------------------------
def bench_index(work: Path, text: Path, vision: Path, n: int, rounds: int, timeout: float) -> None:
    from visionrag.search.history import History, make_thumbnail
    from visionrag.search.interaction import Interaction

    rng = random.Random(1)
    shutil.rmtree(work / "index-data", ignore_errors=True)
    history = History(settings_for(work / "index-data", text, vision))
    t = time.perf_counter()
    history.start()
    log(f"index: CLIP loaded in {time.perf_counter() - t:.1f} s")
    per_round: list[float] = []
    record_times: list[float] = []
    cpu_per_item: list[float] = []
    items_all: list[tuple[Interaction, Image.Image]] = []
    try:
        for r in range(rounds):
            items = []
            for i in range(n):
                png = diagram(10_000 * (r + 1) + i)
                items.append(
                    (
                        Interaction.create(
                            image_url="upload",
                            query=QUESTION,
                            answer=answer_text(rng),
                            model="bench",
                            image_bytes=png,
                        ),
                        Image.open(io.BytesIO(png)).convert("RGB"),
                    )
                )
            items_all += items
            cpu0, t0 = time.process_time(), time.perf_counter()
            for interaction, image in items:
                t = time.perf_counter()
                history.record(interaction, image)
                record_times.append(time.perf_counter() - t)
            done = wait_for(lambda: history.status()["backlog"] == 0, timeout, 0.02)
            elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            if not done:
                log(f"index round {r + 1}: backlog not empty after {timeout} s: {history.status()}")
            per_round.append(n / elapsed)
            cpu_per_item.append(cpu / n)
            log(
                f"index round {r + 1}: {n} interactions in {elapsed:.1f} s ({n / elapsed:.2f}/s), "
                f"{cpu / n:.2f} CPU-s each"
            )
        row("index", f"indexing throughput, record -> backlog 0 (N={n}/round)", spread(per_round, "{:.2f}/s"))
        row("index", "CPU time per interaction (process, all threads)", spread(cpu_per_item, "{:.2f} s"))
        row("index", "History.record while the indexer is busy (p50 / p95 ms)", ms(record_times))

        # the same call with the indexer idle: what the request path pays by itself
        idle_times = []
        for i in range(min(n, 12)):
            png = diagram(90_000 + i)
            interaction = Interaction.create(
                image_url="upload", query=QUESTION, answer=answer_text(rng), model="bench", image_bytes=png
            )
            image = Image.open(io.BytesIO(png)).convert("RGB")
            wait_for(lambda: history.status()["backlog"] == 0, timeout, 0.02)
            time.sleep(0.1)
            t = time.perf_counter()
            history.record(interaction, image)
            idle_times.append(time.perf_counter() - t)
        wait_for(lambda: history.status()["backlog"] == 0, timeout, 0.02)
        row("index", f"History.record, indexer idle (p50 / p95 ms, n={len(idle_times)})", ms(idle_times))

        # the embedding alone, on the same data (as the indexer gets it: the stored copy's bytes)
        emb = history.embedders
        thumbs = [make_thumbnail(image)[0] for _, image in items_all[:n]]
        answers = [i.answer for i, _ in items_all[:n]]
        chunk_counts = [len(emb.chunks(a)) for a in answers]
        img_rates, chunk_rates, chunking = [], [], []
        for _ in range(rounds):
            t = time.perf_counter()
            for at in range(0, n, 32):  # the indexer's batch size
                emb.embed_images(thumbs[at : at + 32])
            img_rates.append(n / (time.perf_counter() - t))
            t = time.perf_counter()
            for a in answers:
                emb.chunks(a)
            chunking.append((time.perf_counter() - t) / n)
            t = time.perf_counter()
            for at in range(0, n, 32):
                emb.embed_answers(answers[at : at + 32])
            chunk_rates.append(sum(chunk_counts) / (time.perf_counter() - t))
        mean_chunks = statistics.mean(chunk_counts)
        row("index", "image embedding alone (ViT-B/32, batches of 32)", spread(img_rates, "{:.1f} img/s"))
        row(
            "index",
            f"answer embedding alone ({mean_chunks:.1f} chunks/answer, {min(chunk_counts)}-"
            f"{max(chunk_counts)})",
            spread(chunk_rates, "{:.1f} chunks/s"),
        )
        row(
            "index", "chunking an answer (tokenizer count)", spread([c * 1000 for c in chunking], "{:.1f} ms")
        )
        per_inter = [1 / i + mean_chunks / c for i, c in zip(img_rates, chunk_rates, strict=True)]
        row(
            "index",
            "embedding-only ceiling (1 image + chunks)",
            spread([1 / p for p in per_inter], "{:.2f}/s"),
        )
    finally:
        history.close()


# -- 2. search latency -------------------------------------------------------------------------------------
def fill(history: Any, count: int, chunk_pool: list[int], rng: random.Random) -> tuple[float, float]:
    """`count` journal rows (durable writes, as record() makes them) and matching points (random unit vectors,
    realistic multivector sizes and payloads) through the store code the indexer uses; returns (journal s,
    store s)."""
    from visionrag.search.indexer import payload_of
    from visionrag.search.interaction import Interaction
    from visionrag.search.journal import BacklogEntry
    from visionrag.search.store import Point

    nprng = np.random.default_rng(rng.randrange(2**32))
    dim = 512
    thumb = diagram(0, (64, 48))
    start = datetime.now(UTC) - timedelta(days=30)
    users = ["alice", "bob", "carol", None]
    tagsets = [(), ("er",), ("aws", "prod"), ("blueprint",)]
    journal_s = store_s = 0.0
    batch = 256
    for at in range(0, count, batch):
        rows = []
        for i in range(at, min(count, at + batch)):
            interaction = Interaction(
                id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                created_at=start + timedelta(seconds=i * 200),
                image_url=f"https://example.com/diagrams/{i}.png",
                query=QUESTION,
                answer=answer_text(rng),
                model="meta-llama/Llama-3.2-11B-Vision-Instruct",
                user=users[i % 4],
                tags=tagsets[i % 4],
                image_sha256=f"{i:064x}",
            )
            rows.append(interaction)
        t = time.perf_counter()
        for interaction in rows:
            history.journal.add(interaction, thumb, "image/png")
        history.journal.mark_indexed([r.id for r in rows])
        journal_s += time.perf_counter() - t

        def unit(shape: tuple[int, ...]) -> np.ndarray:
            v = nprng.standard_normal(shape).astype(np.float32)
            return v / np.linalg.norm(v, axis=-1, keepdims=True)

        points = [
            Point(
                id=r.id,
                image=unit((dim,)),
                text=unit((rng.choice(chunk_pool), dim)),
                payload=payload_of(BacklogEntry(r, thumb, 0)),
            )
            for r in rows
        ]
        t = time.perf_counter()
        history.store.upsert(points)
        store_s += time.perf_counter() - t
    return journal_s, store_s


def bench_search(
    work: Path,
    fill_root: Path,
    text: Path,
    vision: Path,
    sizes: list[int],
    queries: int,
    rounds: int,
    budget: float,
) -> None:
    from visionrag.search.embedders import Embedders
    from visionrag.search.history import History

    emb = Embedders(settings_for(work / "unused", text, vision))
    emb.load()
    rng = random.Random(2)
    chunk_pool = [len(emb.chunks(answer_text(rng))) for _ in range(200)]
    row(
        "search",
        "answer chunks per 150-300-word answer (pool for filled points)",
        f"mean {statistics.mean(chunk_pool):.1f}, {min(chunk_pool)}-{max(chunk_pool)}",
    )
    text_queries = [" ".join(rng.choices(WORDS, k=rng.randint(4, 12))) for _ in range(queries)]
    image_queries = [Image.open(io.BytesIO(diagram(50_000 + i))).convert("RGB") for i in range(queries)]

    # the query embedding alone
    for kind, embed in (
        ("text", lambda i: emb.embed_texts([text_queries[i]])),
        ("image", lambda i: emb.embed_images([image_queries[i]])),
    ):
        embed(0)
        per_round = []
        for _ in range(rounds):
            times = []
            for i in range(queries):
                t = time.perf_counter()
                embed(i)
                times.append(time.perf_counter() - t)
            per_round.append(ms(times))
        row("search", f"query embedding alone, {kind} (p50 / p95 ms)", " | ".join(per_round))

    for size in sizes:
        data = fill_root / f"search-{size}"
        if data.exists():
            shutil.rmtree(data)
        history = History(settings_for(data, text, vision), embedders=emb)
        try:
            history.store.ensure_collection(emb.image_dim, emb.text_dim)
            t = time.perf_counter()
            journal_s, store_s = fill(history, size, chunk_pool, rng)
            log(
                f"search: filled {size} in {time.perf_counter() - t:.0f} s (journal {journal_s:.0f} s, "
                f"store upsert {store_s:.0f} s)"
            )
            row(
                "search",
                f"fill {size}: Store.upsert (points/s) | Journal.add (rows/s)",
                f"{size / store_s:.0f} | {size / journal_s:.0f}",
            )
            if history.store.count() != size:
                raise SystemExit(f"store holds {history.store.count()} points, expected {size}")
            deadline = time.monotonic() + budget
            for kind in ("text", "image"):
                for against in ("answers", "images", "both"):

                    def one(i: int, kind: str = kind, against: str = against, h: Any = history) -> list[dict]:
                        if kind == "text":
                            return h.search(text_queries[i], None, limit=10, against=against)
                        return h.search(None, image_queries[i], limit=10, against=against)

                    if len(one(0)) != 10:
                        raise SystemExit(f"search {kind}/{against} at {size} returned fewer than 10 results")
                    per_round = []
                    for _ in range(rounds):
                        times = []
                        for i in range(queries):
                            if time.monotonic() > deadline:
                                break
                            t = time.perf_counter()
                            one(i)
                            times.append(time.perf_counter() - t)
                        per_round.append(ms(times) + ("" if len(times) == queries else f" (n={len(times)})"))
                    row(
                        "search",
                        f"{size // 1000}k: {kind} query vs {against} (p50 / p95 ms)",
                        " | ".join(per_round),
                    )
        finally:
            history.close()


# -- 5. engines side by side -------------------------------------------------------------------------------
def label(size: int) -> str:
    return f"{size // 1000}k" if size >= 1000 else str(size)


def rss_mb() -> float:
    """Resident memory of this process (the API process in a server), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bench_engines(
    work: Path, fill_root: Path, text: Path, vision: Path, sizes: list[int], queries: int, local_queries: int
) -> None:
    """The old local mode (qdrant-client `QdrantClient(path=...)`) and qdrant-edge on the same journal and the
    same points: upsert throughput, HNSW build, RSS growth, and `History.search` latency (CLIP query embedding
    included) for text/image queries against answers/images/both, unfiltered and filtered (user + since)."""
    from visionrag.search.edge_store import EdgeStore
    from visionrag.search.embedders import Embedders
    from visionrag.search.history import History
    from visionrag.search.server_store import ServerStore

    emb = Embedders(settings_for(work / "unused", text, vision))
    emb.load()
    rng = random.Random(5)
    chunk_pool = [len(emb.chunks(answer_text(rng))) for _ in range(200)]
    text_queries = [" ".join(rng.choices(WORDS, k=rng.randint(4, 12))) for _ in range(queries)]
    image_queries = [Image.open(io.BytesIO(diagram(60_000 + i))).convert("RGB") for i in range(queries)]
    for kind, embed, inputs in (
        ("text", emb.embed_texts, text_queries),
        ("image", emb.embed_images, image_queries),
    ):
        for query, sessions in ((True, "search"), (False, "indexing")):
            times = []
            for one in inputs:
                t = time.perf_counter()
                embed([one], query=query)
                times.append(time.perf_counter() - t)
            row(
                "engines",
                f"CLIP query embedding alone, {kind}, {sessions} sessions (p50 / p95 ms)",
                ms(times),
            )
    for size in sizes:
        data = fill_root / f"engines-{size}"
        shutil.rmtree(data, ignore_errors=True)
        history = History(settings_for(data, text, vision), embedders=emb)
        edge = history.store
        assert isinstance(edge, EdgeStore)
        edge.builder.min_new = 0  # the bench builds explicitly, below
        local = ServerStore(history.settings)
        points: list[Any] = []
        try:
            t = time.perf_counter()
            fill_journal_and_points(history, size, chunk_pool, rng, points)
            log(f"engines: {size} journal rows and points made in {time.perf_counter() - t:.0f} s")
            for name, store, n_queries in (("local", local, local_queries), ("edge", edge, queries)):
                history.store = store
                rss0 = rss_mb()
                store.ensure_collection(emb.image_dim, emb.text_dim)
                t = time.perf_counter()
                batch = 2048 if name == "local" else 256
                for at in range(0, size, batch):
                    store.upsert(points[at : at + batch])
                upsert_s = time.perf_counter() - t
                row("engines", f"{label(size)} {name}: upsert (points/s)", f"{size / upsert_s:.0f}")
                if store.count() != size:
                    raise SystemExit(f"{name} holds {store.count()} points, expected {size}")
                if name == "edge":  # first the float scan of the appendable segment, then built
                    for cell, value in cells(
                        history, text_queries, image_queries, min(queries, 5), size
                    ).items():
                        row("engines", f"{label(size)} edge, not built yet: {cell} (p50 / p95 ms)", value)
                    edge.builder.nice = 0  # alone here: the build's own time, not its time behind searches
                    t = time.perf_counter()
                    built = edge.builder.build_now() or {}
                    row(
                        "engines",
                        f"{label(size)} edge: index build (copy / child / swap s)",
                        f"{built.get('copy_s', 0):.1f} / {built.get('build_s', 0):.1f} / "
                        f"{built.get('swap_s', 0):.2f} (total {time.perf_counter() - t:.0f} s)",
                    )
                for cell, value in cells(history, text_queries, image_queries, n_queries, size).items():
                    row("engines", f"{label(size)} {name}: {cell} (p50 / p95 ms)", value)
                if name == "edge":
                    for cell, value in recall(edge, emb, points, text_queries, image_queries).items():
                        row("engines", f"{label(size)} edge: recall@10 vs exact, {cell}", value)
                row(
                    "engines",
                    f"{label(size)} {name}: RSS growth of the process (MB)",
                    f"{rss_mb() - rss0:.0f}",
                )
                store.close()
        finally:
            history.store = edge
            history.close()
            local.close()
            shutil.rmtree(data, ignore_errors=True)


def fill_journal_and_points(
    history: Any, count: int, chunk_pool: list[int], rng: random.Random, out: list[Any]
) -> None:
    """Journal rows (as record() writes them) and their points (random unit vectors, realistic multivector
    sizes and payloads), kept in `out` so both engines get the very same points."""
    from visionrag.search.indexer import payload_of
    from visionrag.search.interaction import Interaction
    from visionrag.search.journal import BacklogEntry
    from visionrag.search.store import Point

    nprng = np.random.default_rng(rng.randrange(2**32))
    thumb = diagram(0, (64, 48))
    start = datetime.now(UTC) - timedelta(days=30)
    users, tagsets = ["alice", "bob", "carol", None], [(), ("er",), ("aws", "prod"), ("blueprint",)]
    for i in range(count):
        interaction = Interaction(
            id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            created_at=start + timedelta(seconds=i * 25),
            image_url=f"https://example.com/diagrams/{i}.png",
            query=QUESTION,
            answer=f"answer {i}",
            model="meta-llama/Llama-3.2-11B-Vision-Instruct",
            user=users[i % 4],
            tags=tagsets[i % 4],
            image_sha256=f"{i:064x}",
        )
        history.journal.add(interaction, thumb, "image/png")
        image = nprng.standard_normal(512).astype(np.float32)
        chunks = nprng.standard_normal((rng.choice(chunk_pool), 512)).astype(np.float32)
        out.append(
            Point(
                id=interaction.id,
                image=image / np.linalg.norm(image),
                text=chunks / np.linalg.norm(chunks, axis=1, keepdims=True),
                payload=payload_of(BacklogEntry(interaction, thumb, 0)),
            )
        )


def recall(
    store: Any, emb: Any, points: list[Any], text_queries: list[str], image_queries: list[Image.Image]
) -> dict[str, str]:
    """Mean recall@10 of `Store.query` (int8 scan + rescore on the float vectors) against the exact
    top 10 computed here with NumPy (cosine; MAX_SIM over the windows), per query kind x against x filter.
    The points are random unit vectors: no clusters (the hardest case for a graph index)."""
    from visionrag.search.store import IMAGE, TEXT, Filters, Probe

    ids = np.array([p.id for p in points])
    images = np.stack([np.asarray(p.image, dtype=np.float32) for p in points])
    flat = np.concatenate([np.asarray(p.text, dtype=np.float32) for p in points])
    owner = np.repeat(np.arange(len(points)), [len(p.text) for p in points])
    ts = np.array([p.payload["created_ts"] for p in points])
    since = float(np.median(ts))
    alice = np.array([p.payload.get("user") == "alice" for p in points]) & (ts >= since)
    vectors = {"text": emb.embed_texts(text_queries), "image": emb.embed_images(image_queries)}
    out: dict[str, str] = {}
    for kind, queries in vectors.items():
        for against, using in (("answers", TEXT), ("images", IMAGE)):
            for filtered in (False, True):
                found = []
                for q in queries:
                    if using == IMAGE:
                        exact = images @ q
                    else:
                        exact = np.full(len(points), -np.inf, dtype=np.float32)
                        np.maximum.at(exact, owner, flat @ q)
                    if filtered:
                        exact = np.where(alice, exact, -np.inf)
                    top = set(ids[np.argsort(-exact)[:10]].tolist())
                    filters = Filters(since=since, user="alice") if filtered else None
                    got = {i for i, _ in store.query([Probe(q, using)], filters, limit=10)}
                    found.append(len(top & got) / 10)
                cell = f"{kind} vs {against}{', filtered' if filtered else ''}"
                out[cell] = f"{statistics.mean(found):.3f}"
    return out


def cells(
    history: Any,
    text_queries: list[str],
    image_queries: list[Image.Image],
    n: int,
    size: int,
) -> dict[str, str]:
    """p50 / p95 of `History.search` per (query kind, against, filter)."""
    start = datetime.now(UTC) - timedelta(days=30)
    since = (start + timedelta(seconds=size * 25 / 2)).isoformat()
    out: dict[str, str] = {}
    store, engine = history.store, []  # the time spent in Store.query alone, apart from the CLIP embedding
    real_query = store.query

    def timed_query(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return real_query(*args, **kwargs)
        finally:
            engine.append(time.perf_counter() - t)

    store.query = timed_query
    try:
        _cells(history, text_queries, image_queries, n, size, since, engine, out)
    finally:
        del store.query
    return out


def _cells(
    history: Any,
    text_queries: list[str],
    image_queries: list[Image.Image],
    n: int,
    size: int,
    since: str,
    engine: list[float],
    out: dict[str, str],
) -> None:
    for kind in ("text", "image"):
        for against in ("answers", "images", "both"):
            for filtered in (False, True):
                extra: dict[str, Any] = {"user": "alice", "since": since} if filtered else {}

                def one(i: int, kind: str = kind, against: str = against, extra: dict = extra) -> list:
                    if kind == "text":
                        return history.search(text_queries[i], None, limit=10, against=against, **extra)
                    return history.search(None, image_queries[i], limit=10, against=against, **extra)

                if len(one(0)) != 10:
                    raise SystemExit(f"search {kind}/{against} at {size} returned fewer than 10 results")
                times = []
                engine.clear()
                for i in range(n):
                    t = time.perf_counter()
                    one(i % len(text_queries))
                    times.append(time.perf_counter() - t)
                cell = f"{kind} vs {against}{', filtered' if filtered else ''}"
                out[cell] = f"{ms(times)} (store {ms(engine)})"


# -- 3 and 4: the real server -------------------------------------------------------------------------------
def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


@contextlib.contextmanager
def real_server(work: Path, text: Path, vision: Path, hidden: int, max_tokens: int) -> Iterator[Any]:
    from tests.conftest import ServerProcess

    model = mllama_dir(work, hidden)
    workdir = work / "server"
    if workdir.exists():
        shutil.rmtree(workdir)
    proc = ServerProcess(
        workdir,
        {
            "MODEL_NAME": str(model),
            "TEXT_MODEL_PATH": str(text),
            "IMAGE_MODEL_PATH": str(vision),
            "VISIONRAG_DEFAULT_MAX_TOKENS": str(max_tokens),
            "VISIONRAG_LOG_LEVEL": "warning",
            "OMP_NUM_THREADS": str(os.cpu_count() or 1),  # torch's default: generation may use every core
        },
    )
    t = time.perf_counter()
    proc.start(timeout=300)
    log(f"server up in {time.perf_counter() - t:.0f} s at {proc.url}")
    try:
        yield proc
    finally:
        proc.stop()


def backlog(url: str) -> int:
    return int(requests.get(f"{url}/health", timeout=10).json()["history"]["backlog"] or 0)


def predict(url: str, seed: int, store: bool, max_tokens: int) -> tuple[float, dict]:
    body = {
        "image_url": data_url(diagram(seed)),
        "user_query": QUESTION,
        "max_tokens": max_tokens,
        "store": store,
    }
    payload = json.dumps(body)
    t = time.perf_counter()
    r = requests.post(
        f"{url}/predict", data=payload, headers={"Content-Type": "application/json"}, timeout=120
    )
    took = time.perf_counter() - t
    r.raise_for_status()
    return took, r.json()


def bench_answer(url: str, pairs: int, rounds: int, block: int, max_tokens: int, budget: float) -> None:
    for seed in range(3):  # warm-up (first-call costs in the worker, the journal, the indexer)
        predict(url, 900_000 + seed, True, max_tokens)
    wait_for(lambda: backlog(url) == 0, 60, 0.1)
    seed = 0
    deadline = time.monotonic() + budget
    results: dict[str, dict[bool, list[list[float]]]] = {
        "paced": {True: [], False: []},
        "back-to-back": {True: [], False: []},
    }
    words: list[int] = []
    for r in range(rounds):
        # paced: alternate on/off (order flipped every pair), each sent with the indexer idle
        on, off = [], []
        for i in range(pairs):
            for store in (True, False) if i % 2 == 0 else (False, True):
                if time.monotonic() > deadline:
                    break
                wait_for(lambda: backlog(url) == 0, 30, 0.05)
                time.sleep(0.2)
                seed += 1
                took, body = predict(url, seed, store, max_tokens)
                (on if store else off).append(took)
                words.append(len(body["output"].split()))
        results["paced"][True].append(on)
        results["paced"][False].append(off)
        # back-to-back: blocks of `block` requests without pause, on and off blocks alternating; the indexer
        # drains between blocks so an "off" block never pays for the "on" block before it
        on, off = [], []
        for b in range(2 * max(1, pairs // block)):
            store = (b % 2 == 0) == (r % 2 == 0)
            wait_for(lambda: backlog(url) == 0, 60, 0.1)
            for _ in range(block):
                if time.monotonic() > deadline:
                    break
                seed += 1
                took, _ = predict(url, seed, store, max_tokens)
                (on if store else off).append(took)
        results["back-to-back"][True].append(on)
        results["back-to-back"][False].append(off)
        log(f"answer round {r + 1} done; backlog {backlog(url)}")
    row("answer", "answer length (words, random Mllama)", f"mean {statistics.mean(words):.0f}")
    for mode, by_store in results.items():
        on_p50 = [pct(x, 50) for x in by_store[True]]
        off_p50 = [pct(x, 50) for x in by_store[False]]
        all_on = [t for x in by_store[True] for t in x]
        all_off = [t for x in by_store[False] for t in x]
        row("answer", f"{mode}: store on (p50 / p95 ms, n={len(all_on)})", ms(all_on))
        row("answer", f"{mode}: store off (p50 / p95 ms, n={len(all_off)})", ms(all_off))
        row(
            "answer",
            f"{mode}: on/off p50 ratio, per round | all",
            spread([a / b for a, b in zip(on_p50, off_p50, strict=True)], "{:.3f}")
            + f" | {pct(all_on, 50) / pct(all_off, 50):.3f}",
        )
        row("answer", f"{mode}: on/off p95 ratio (all)", f"{pct(all_on, 95) / pct(all_off, 95):.3f}")


def bench_fresh(url: str, count: int, rounds: int, max_tokens: int, timeout: float) -> None:
    per_round, every, misses, polls = [], [], 0, []
    seed = 500_000
    for _ in range(rounds):
        delays = []
        for _ in range(count):
            seed += 1
            _, body = predict(url, seed, True, max_tokens)
            t0 = time.perf_counter()
            id, answer, n = body["id"], body["output"], 0
            found = False
            while time.perf_counter() - t0 < timeout:
                n += 1
                r = requests.post(
                    f"{url}/history/search",
                    json={"text": answer, "against": "answers", "limit": 10},
                    timeout=30,
                )
                r.raise_for_status()
                if any(hit["id"] == id for hit in r.json()["results"]):
                    found = True
                    break
                time.sleep(0.05)
            if found:
                delays.append(time.perf_counter() - t0)
                polls.append(n)
            else:
                misses += 1
        per_round.append(ms(delays))
        every += delays
    row(
        "fresh",
        f"response -> found by its answer text (p50 / p95 ms, n={len(every)}), per round",
        " | ".join(per_round),
    )
    row(
        "fresh",
        "all rounds (p50 / p95 ms); max; not found within the deadline",
        f"{ms(every)}; {max(every) * 1000:.0f}; {misses} of {count * rounds}",
    )
    row("fresh", "search calls until found (mean)", f"{statistics.mean(polls):.1f}" if polls else "-")


# -- main ----------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/visionrag-bench"))
    p.add_argument(
        "--store-dir",
        type=Path,
        default=None,
        help="where the filled search stores live (e.g. /dev/shm/...: the embedded store commits every point "
        "with an fsync, ~18 ms each on this disk, which only slows the FILL, not the queries measured)",
    )
    p.add_argument("--parts", default="index,search,answer,fresh")
    p.add_argument("--rounds", type=int, default=2, help="repeat each measurement (spread)")
    p.add_argument("--index-n", type=int, default=24, help="interactions recorded per indexing round")
    p.add_argument("--sizes", default="1000,10000", help="store sizes for search latency")
    p.add_argument("--queries", type=int, default=20, help="queries per kind/against/round")
    p.add_argument("--pairs", type=int, default=20, help="on/off request pairs per mode and round")
    p.add_argument("--block", type=int, default=10, help="back-to-back block length")
    p.add_argument("--fresh", type=int, default=15, help="freshness requests per round")
    p.add_argument("--hidden", type=int, default=128, help="random Mllama hidden size")
    p.add_argument("--max-tokens", type=int, default=160)
    p.add_argument("--engine-sizes", default="1000,10000,100000", help="store sizes, engines side by side")
    p.add_argument("--engine-queries", type=int, default=20, help="queries per cell, qdrant-edge")
    p.add_argument("--local-queries", default="20,10,4", help="queries per cell, local mode, per engine size")
    p.add_argument("--part-budget", type=float, default=900.0, help="seconds at most per timed loop")
    args = p.parse_args(argv)
    parts = set(args.parts.split(","))
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.time()
    text, vision = clip_dirs(work)
    if "index" in parts:
        bench_index(work, text, vision, args.index_n, args.rounds, args.part_budget)
    if "search" in parts:
        sizes = [int(s) for s in args.sizes.split(",") if s]
        fill_root = args.store_dir or work
        fill_root.mkdir(parents=True, exist_ok=True)
        try:
            bench_search(work, fill_root, text, vision, sizes, args.queries, args.rounds, args.part_budget)
        finally:
            if args.store_dir:  # a tmpfs: give the memory back
                for size in sizes:
                    shutil.rmtree(fill_root / f"search-{size}", ignore_errors=True)
    if "engines" in parts:
        fill_root = args.store_dir or work
        fill_root.mkdir(parents=True, exist_ok=True)
        local_n = [int(x) for x in args.local_queries.split(",")]
        for i, size in enumerate(int(s) for s in args.engine_sizes.split(",") if s):
            n = local_n[min(i, len(local_n) - 1)]
            bench_engines(work, fill_root, text, vision, [size], args.engine_queries, n)
    if parts & {"answer", "fresh"}:
        with real_server(work, text, vision, args.hidden, args.max_tokens) as server:
            if "answer" in parts:
                bench_answer(
                    server.url, args.pairs, args.rounds, args.block, args.max_tokens, args.part_budget
                )
            if "fresh" in parts:
                bench_fresh(server.url, args.fresh, args.rounds, args.max_tokens, timeout=20.0)
    import platform

    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    print(
        f"\n# History benchmark, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs ({cpu}), "
        f"{time.time() - started:.0f} s; values per round separated by |\n"
    )
    width = max(len(w) for _, w, _ in ROWS) if ROWS else 10
    print(f"| part   | {'measurement':<{width}} | value |")
    print(f"|--------|{'-' * (width + 2)}|-------|")
    for section, what, value in ROWS:
        print(f"| {section:<6} | {what:<{width}} | {value} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
