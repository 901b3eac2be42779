"""Context benchmark (issue 16): what answering with context from the history costs the API process per
request, on CPU, with a CLIP of the real ViT-B/32 shape and random weights (built as bench_history.py does).

    .venv/bin/python tests/bench/bench_context.py --workdir /tmp/w16bench [--size 1000] [--queries 20]

The history is FILLED directly (journal rows + random unit vectors of realistic sizes; see
bench_history.fill), then each request's retrieval runs the real code: `context.apply` = `History.search`
(the question's text and the request's image against both vectors, fused, with the CLIP query embeddings)
+ `History.same_image` (journal) + fitting the notes into the token budget + putting them into the prompt.
Measured beside it: the same `History.search` alone, and the prompt assembly alone. Every loop is bounded
in count and time; nothing is downloaded; nothing listens on a socket.
"""

from __future__ import annotations

import argparse
import io
import random
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from PIL import Image

from tests.bench.bench_history import (
    QUESTION,
    ROWS,
    answer_text,
    clip_dirs,
    diagram,
    fill,
    ms,
    pct,
    row,
    settings_for,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--size", type=int, default=1000, help="interactions in the history")
    parser.add_argument("--queries", type=int, default=20, help="requests timed per measurement")
    parser.add_argument("--budget", type=float, default=600.0, help="seconds the timed loops may take")
    args = parser.parse_args(argv)

    from visionrag.search.embedders import Embedders
    from visionrag.search.history import History
    from visionrag.server import context
    from visionrag.server.fetch import LoadedImage
    from visionrag.server.generation import Sampling
    from visionrag.server.inputs import Ask, ContextOptions

    text, vision = clip_dirs(args.workdir)
    emb = Embedders(settings_for(args.workdir / "unused", text, vision))
    emb.load()
    rng = random.Random(16)
    chunk_pool = [len(emb.chunks(answer_text(rng))) for _ in range(100)]
    data = args.workdir / f"context-{args.size}"
    if data.exists():
        shutil.rmtree(data)
    history = History(settings_for(data, text, vision), embedders=emb)
    deadline = time.monotonic() + args.budget
    try:
        history.store.ensure_collection(emb.image_dim, emb.text_dim)
        fill(history, args.size, chunk_pool, rng)
        requests = []
        for i in range(args.queries):
            png = diagram(60_000 + i)
            image = Image.open(io.BytesIO(png)).convert("RGB")
            loaded = LoadedImage(
                image=image, data=png, sha256=f"{i:064x}", source="upload"
            )  # same-image hits
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
            ask = Ask(QUESTION, messages, Sampling(max_tokens=256), context=ContextOptions(k=3))
            requests.append((ask, loaded))

        def search(i: int) -> list:
            return history.search(QUESTION, requests[i][1].image, limit=6, against="both")

        def apply(i: int) -> Ask:
            return context.apply(history, requests[i][0], requests[i][1], 1024)

        search(0), apply(0)  # warm
        alone, full, found = [], [], []
        for i in range(args.queries):  # alternated, so load on the shared machine hits both alike
            if time.monotonic() > deadline:
                break
            t = time.perf_counter()
            search(i)
            alone.append(time.perf_counter() - t)
            t = time.perf_counter()
            found.append(apply(i).retrieved)
            full.append(time.perf_counter() - t)
        size = f"{args.size // 1000}k"
        row(
            "context",
            f"{size}: History.search alone, text + image vs both (p50 / p95 ms, n={len(alone)})",
            ms(alone),
        )
        row(
            "context",
            f"{size}: context.apply, k=3: search + same image + fit + prompt (p50 / p95 ms)",
            ms(full),
        )
        assembly = []
        for i in range(len(found)):  # on the notes as retrieved, before fitting (not timed: the search)
            raw = context.retrieve(history, QUESTION, requests[i][1], ContextOptions(k=3)).notes
            t = time.perf_counter()
            context.render(context.fit(raw, 1024))
            assembly.append(time.perf_counter() - t)
        p50, p95 = pct(assembly, 50) * 1000, pct(assembly, 95) * 1000
        row(
            "context",
            "prompt assembly alone: fit 3 notes into 1024 tokens + render (p50 / p95 ms)",
            f"{p50:.2f} / {p95:.2f}",
        )
        raw_chars = len(context.render(raw))
        row("context", "notes block of 3 answers before fitting (characters)", str(raw_chars))
        block = [len(context.render(r.notes)) for r in found]
        row(
            "context",
            "notes block (characters | estimated tokens), mean",
            f"{sum(block) / len(block):.0f} | {sum(context.estimate_tokens('x' * b) for b in block) / len(block):.0f}",
        )
        row("context", "same-image note first", f"{sum(r.notes[0].same_image for r in found)} / {len(found)}")
    finally:
        history.close()
    print("\n| section | measurement | value |\n|---|---|---|")
    for section, what, value in ROWS:
        print(f"| {section} | {what} | {value} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
