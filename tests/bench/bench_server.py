"""Server batching benchmark (issue 2): answers/s and generated tokens/s through the real server.

Builds a random ~30M-parameter Mllama (hidden 512, 8 text layers, cross-attention where a real config puts
it: layer 3, then every 5th) and a tiny CLIP into a temporary folder, starts `visionrag serve` on it on CPU
(loopback only, one restart per batching setting) and drives `/predict` with a fixed `max_tokens`, greedy,
`store: false`, at concurrency 1 and 8, with batching on (VISIONRAG_MAX_BATCH_SIZE=8) and off (=1). The
reference ceiling is a bare `VisionModel.generate` of batch 1 and 8 on the same checkpoint, in-process.
Every loop is bounded in count and time. Prints a table last.

    .venv/bin/python tests/bench/bench_server.py [--max-tokens 64] [--repeats 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import requests

from tests.checkpoints.clip import build_tiny_clip
from tests.checkpoints.mllama import build_tiny_mllama
from tests.conftest import ServerProcess, diagram_png

QUESTION = "what does the diagram show"
IMAGE_SEEDS = 8  # requests cycle through this many different images


@dataclass
class Run:
    """One measured run: `answers` answers of `tokens` generated tokens in `seconds`."""

    answers: int
    tokens: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    cpu: float = 0.0  # CPU seconds used by the server's processes (or the bare generate) during the run

    @property
    def cpu_per_answer(self) -> float:
        return self.cpu / self.answers

    @property
    def answers_per_s(self) -> float:
        return self.answers / self.seconds

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


@dataclass
class Row:
    setting: str
    concurrency: int
    runs: list[Run]

    def cell(self, attr: str) -> str:
        values = [getattr(r, attr) for r in self.runs]
        med = statistics.median(values)
        return f"{med:7.2f} ({min(values):.2f}-{max(values):.2f})"

    def median(self, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in self.runs)

    def p50_latency(self) -> float:
        return statistics.median(lat for r in self.runs for lat in r.latencies)


def build_checkpoints(root: Path) -> tuple[Path, Path, Path]:
    model_dir = build_tiny_mllama(
        root / "mllama",
        hidden_size=512,
        text_layers=8,
        intermediate_size=2048,
        heads=8,
        kv_heads=2,
        vision_hidden=64,
        vision_layers=2,
        image_size=56,
        extra_words=500,
        cross_attention_layers=[3],  # a real config: 3, 8, 13, ... of the text layers
    )
    text_dir, image_dir = build_tiny_clip(root / "clip")
    return model_dir, text_dir, image_dir


def parameter_count(model_dir: Path) -> int:
    from safetensors import safe_open

    total = 0
    for path in model_dir.glob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                total += _numel(f.get_slice(key).get_shape())
    return total


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


# -- bare generate -----------------------------------------------------------------------------------
def bench_bare(model_dir: Path, args: argparse.Namespace) -> list[Row]:
    import torch
    from PIL import Image

    from visionrag.server.generation import GenerationRequest, Sampling, VisionModel

    torch.set_num_threads(args.threads)
    model = VisionModel.load(str(model_dir), device="cpu")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]

    def reqs(n: int, offset: int) -> list[GenerationRequest]:
        return [
            GenerationRequest(
                messages,
                Image.open(io.BytesIO(diagram_png((offset + i) % IMAGE_SEEDS))),
                Sampling(max_tokens=args.max_tokens),
            )
            for i in range(n)
        ]

    model.generate(reqs(1, 0))  # warm-up
    rows = []
    for batch, calls in ((1, args.bare_calls_1), (8, args.bare_calls_8)):
        runs = []
        for _ in range(args.repeats):
            started, cpu0 = time.perf_counter(), time.process_time()
            answers = tokens = 0
            latencies = []
            for call in range(calls):
                t0 = time.perf_counter()
                out = model.generate(reqs(batch, call * batch))
                latencies.append(time.perf_counter() - t0)
                answers += len(out)
                tokens += sum(c.completion_tokens for c in out)
            elapsed = time.perf_counter() - started
            runs.append(Run(answers, tokens, elapsed, latencies, time.process_time() - cpu0))
        rows.append(Row(f"bare generate, batch {batch}", batch, runs))
        log(rows[-1])
    del model
    return rows


# -- through the server ------------------------------------------------------------------------------
def data_url(seed: int) -> str:
    return "data:image/png;base64," + base64.b64encode(diagram_png(seed)).decode()


def server_cpu(pid: int) -> float:
    """CPU seconds (user + system) of the server process and all its descendants (API server, workers,
    LitServe's queue manager). Less sensitive than wall time to other jobs on a shared machine."""
    import psutil

    total = 0.0
    root = psutil.Process(pid)
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def drive(
    url: str,
    concurrency: int,
    total: int,
    args: argparse.Namespace,
    store: bool,
    seen: dict,
    stream: bool = False,
) -> Run:
    """`concurrency` clients send `total` requests back to back; bounded by `args.phase_timeout`."""
    images = [data_url(s) for s in range(IMAGE_SEEDS)]
    deadline = time.monotonic() + args.phase_timeout
    counter = iter(range(total))
    latencies: list[float] = []
    tokens = [0]

    def client() -> None:
        with requests.Session() as session:
            for i in counter:  # shared iterator: `total` requests in all (next() on a range is atomic enough)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"phase ran past {args.phase_timeout} s")
                body = {
                    "image_url": images[i % IMAGE_SEEDS],
                    "user_query": QUESTION,
                    "max_tokens": args.max_tokens,
                    "temperature": 0,
                    "store": store,
                    "stream": stream,
                }
                t0 = time.perf_counter()
                r = session.post(f"{url}/predict", json=body, timeout=args.phase_timeout)
                latencies.append(time.perf_counter() - t0)
                r.raise_for_status()
                answer = json.loads(r.text.splitlines()[-1]) if stream else r.json()
                tokens[0] += answer["usage"]["completion_tokens"]
                seen.setdefault(i % IMAGE_SEEDS, set()).add(answer["output"])

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(client) for _ in range(concurrency)]:
            f.result()
    return Run(len(latencies), tokens[0], time.perf_counter() - started, latencies)


def bench_server(
    workdir: Path, env: dict[str, str], setting: str, args: argparse.Namespace, seen: dict
) -> list[Row]:
    proc = ServerProcess(workdir, env)
    proc.start(timeout=args.start_timeout)
    rows = []
    try:
        drive(proc.url, 8, 8, args, False, seen)  # warm-up: one full batch
        plan = [(1, args.requests_1, False, False), (8, args.requests_8, False, False)]
        if env["VISIONRAG_MAX_BATCH_SIZE"] != "1":
            if args.store_row:
                plan.append((8, args.requests_8, True, False))
            if args.stream_row:
                plan.append((8, args.requests_8, False, True))
        assert proc.proc is not None
        for concurrency, total, store, stream in plan:
            runs = []
            for _ in range(args.repeats):
                cpu0 = server_cpu(proc.proc.pid)
                run = drive(proc.url, concurrency, total, args, store, seen, stream)
                run.cpu = server_cpu(proc.proc.pid) - cpu0
                runs.append(run)
            name = setting + (", store on" if store else "") + (", streamed" if stream else "")
            rows.append(Row(name, concurrency, runs))
            log(rows[-1])
    finally:
        proc.stop()
    return rows


def log(row: Row) -> None:
    print(
        f"  {row.setting:34s} c={row.concurrency}  answers/s {row.cell('answers_per_s')}"
        f"  tokens/s {row.cell('tokens_per_s')}  CPU s/answer {row.cell('cpu_per_answer')}",
        flush=True,
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2, help="runs of each measurement (the spread is shown)")
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads of the model (server worker and bare)"
    )
    p.add_argument(
        "--batch-timeout", type=float, default=0.05, help="VISIONRAG_BATCH_TIMEOUT with batching on"
    )
    p.add_argument("--requests-1", type=int, default=4, help="requests per run at concurrency 1")
    p.add_argument("--requests-8", type=int, default=24, help="requests per run at concurrency 8")
    p.add_argument("--bare-calls-1", type=int, default=4)
    p.add_argument("--bare-calls-8", type=int, default=3)
    p.add_argument("--no-store-row", dest="store_row", action="store_false", help="skip the store-on row")
    p.add_argument("--no-stream-row", dest="stream_row", action="store_false", help="skip the streamed row")
    p.add_argument("--no-bare", dest="bare", action="store_false", help="skip the bare generate rows")
    p.add_argument("--only", choices=["on", "off"], help="run one server setting only")
    p.add_argument("--phase-timeout", type=float, default=300.0, help="seconds one measured run may take")
    p.add_argument("--start-timeout", type=float, default=180.0, help="seconds the server may take to start")
    p.add_argument("--keep", type=Path, help="build the checkpoints here and keep them (default: a temp dir)")
    args = p.parse_args()

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-server-") as tmp:
        root = args.keep or Path(tmp)
        t0 = time.perf_counter()
        if (root / "mllama" / "config.json").exists():
            model_dir, text_dir, image_dir = root / "mllama", root / "clip" / "text", root / "clip" / "vision"
        else:
            model_dir, text_dir, image_dir = build_checkpoints(root)
        params = parameter_count(model_dir)
        print(
            f"checkpoint: {params / 1e6:.1f} M parameters, built in {time.perf_counter() - t0:.1f} s",
            flush=True,
        )

        rows: list[Row] = []
        if args.bare:
            rows += bench_bare(model_dir, args)
        base_env = {
            "MODEL_NAME": str(model_dir),
            "TEXT_MODEL_PATH": str(text_dir),
            "IMAGE_MODEL_PATH": str(image_dir),
            "OMP_NUM_THREADS": str(args.threads),
            "VISIONRAG_LOG_LEVEL": "warning",
            "VISIONRAG_MAX_QUEUE": "64",
        }
        settings = [
            ("off", "server, batching off", {"VISIONRAG_MAX_BATCH_SIZE": "1"}),
            (
                "on",
                f"server, batching on (8, {args.batch_timeout:g} s)",
                {"VISIONRAG_MAX_BATCH_SIZE": "8", "VISIONRAG_BATCH_TIMEOUT": str(args.batch_timeout)},
            ),
        ]
        seen: dict[int, set[str]] = {}
        for key, name, env in settings:
            if args.only and args.only != key:
                continue
            rows += bench_server(root / f"server-{key}", {**base_env, **env}, name, args, seen)

    mismatched = sorted(seed for seed, answers in seen.items() if len(answers) > 1)
    print_table(rows, args, params)
    print(
        "greedy answers identical across settings and batch mates: "
        + ("yes" if not mismatched else f"NO (image seeds {mismatched})")
    )
    return 1 if mismatched else 0


def print_table(rows: list[Row], args: argparse.Namespace, params: int) -> None:
    def find(prefix: str, concurrency: int) -> Row | None:
        return next((r for r in rows if r.setting.startswith(prefix) and r.concurrency == concurrency), None)

    print()
    print(
        f"## {params / 1e6:.0f}M-parameter Mllama on CPU, max_tokens {args.max_tokens}, greedy, "
        f"{args.threads} torch thread(s), median (min-max) of {args.repeats} runs"
    )
    print()
    print("| setting | concurrency | answers/s | generated tokens/s | p50 latency s | CPU s / answer |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r.setting} | {r.concurrency} | {r.cell('answers_per_s').strip()} "
            f"| {r.cell('tokens_per_s').strip()} | {r.p50_latency():.2f} | {r.cell('cpu_per_answer').strip()} |"
        )
    on, off = find("server, batching on", 8), find("server, batching off", 8)
    b8, b1 = find("bare generate, batch 8", 8), find("bare generate, batch 1", 1)
    print()
    if on and off:
        print(
            f"server: batching on / off at concurrency 8 = {on.median('tokens_per_s') / off.median('tokens_per_s'):.2f}x"
        )
    if b8 and b1:
        print(
            f"bare generate: batch 8 / batch 1 = {b8.median('tokens_per_s') / b1.median('tokens_per_s'):.2f}x"
        )
    if on and b8:
        print(
            f"server batching on at c=8 / bare batch 8 = {on.median('tokens_per_s') / b8.median('tokens_per_s'):.2f}"
        )


if __name__ == "__main__":
    sys.exit(main())
