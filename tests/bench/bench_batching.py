"""Static vs continuous batching through the real server (issue 14), in one run.

Builds the random ~30M-parameter Mllama of bench_server.py and a tiny CLIP, then starts `visionrag serve` on
CPU (loopback only) once with VISIONRAG_BATCHING=continuous and once with =static (max batch 8, batch
timeout 0.05 s) and measures, greedy, `store: false`:

- late arrival: one request streams `--long-tokens` (400) tokens; once its first delta has arrived a second
  request with `max_tokens` 8 is sent; ratio = the second's total latency / the first's total time;
- Poisson arrivals at one rate for both modes (calibrated so ~8 requests are in flight on the continuous
  server, or `--rate`), `max_tokens` drawn from 16..256 (same seeded schedule for both): throughput and
  TTFT / latency p50 and p95 (streamed, so the first token's time is seen);
- CPU seconds per answer at concurrency 8 (closed loop, `max_tokens` 64): the CPU time of the server's whole
  process tree (psutil) per answer.

Every loop is bounded in count and time. Prints a table last.

    .venv/bin/python tests/bench/bench_batching.py [--threads 1] [--late-repeats 3] [--poisson-requests 40]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import requests

from tests.bench.bench_server import (
    IMAGE_SEEDS,
    QUESTION,
    build_checkpoints,
    data_url,
    parameter_count,
    server_cpu,
)
from tests.conftest import ServerProcess


@dataclass
class Answer:
    sent: float
    first: float | None = None  # first delta (streamed requests)
    done: float = 0.0
    tokens: int = 0
    text: str = ""

    @property
    def latency(self) -> float:
        return self.done - self.sent

    @property
    def ttft(self) -> float:
        return (self.first if self.first is not None else self.done) - self.sent


@dataclass
class Result:
    mode: str
    late_ratios: list[float] = field(default_factory=list)
    late_first_s: list[float] = field(default_factory=list)
    late_second_s: list[float] = field(default_factory=list)
    poisson: list[Answer] = field(default_factory=list)
    poisson_seconds: float = 0.0
    rate: float = 0.0
    cpu_per_answer: float = 0.0
    closed_tokens_per_s: float = 0.0
    texts: dict[tuple[int, int], str] = field(default_factory=dict)  # (image, max_tokens) -> greedy answer


def body(image: int, max_tokens: int, stream: bool) -> dict:
    return {
        "image_url": data_url(image % IMAGE_SEEDS),
        "user_query": QUESTION,
        "max_tokens": max_tokens,
        "temperature": 0,
        "store": False,
        "stream": stream,
    }


def post(url: str, payload: dict, timeout: float, on_first: threading.Event | None = None) -> Answer:
    """One /predict; streamed requests record when the first delta arrived."""
    answer = Answer(sent=time.perf_counter())
    if not payload["stream"]:
        r = requests.post(f"{url}/predict", json=payload, timeout=timeout)
        r.raise_for_status()
        answer.done = time.perf_counter()
        answer.tokens, answer.text = r.json()["usage"]["completion_tokens"], r.json()["output"]
        return answer
    with requests.post(f"{url}/predict", json=payload, timeout=timeout, stream=True) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line:
                continue
            item = json.loads(line)
            if "error" in item:
                raise RuntimeError(item["error"])
            if "delta" in item and answer.first is None:
                answer.first = time.perf_counter()
                if on_first is not None:
                    on_first.set()
            if item.get("done"):
                answer.tokens, answer.text = item["usage"]["completion_tokens"], item["output"]
    answer.done = time.perf_counter()
    return answer


def late_arrival(url: str, args: argparse.Namespace, result: Result) -> None:
    for i in range(args.late_repeats):
        first_seen = threading.Event()
        with ThreadPoolExecutor(2) as pool:
            long = pool.submit(post, url, body(i, args.long_tokens, True), args.phase_timeout, first_seen)
            if not first_seen.wait(args.phase_timeout):
                raise TimeoutError("the long request never streamed its first token")
            short = post(url, body(i + 1, 8, False), args.phase_timeout)
            first = long.result(args.phase_timeout)
        result.late_ratios.append(short.latency / first.latency)
        result.late_first_s.append(first.latency)
        result.late_second_s.append(short.latency)
        print(f"  late arrival {i}: long {first.latency:.2f} s, short {short.latency:.2f} s", flush=True)


def schedule(args: argparse.Namespace, rate: float) -> list[tuple[float, int, int]]:
    """(offset s, image, max_tokens) for every request: seeded, so both modes see the same arrivals."""
    rng = random.Random(args.seed)
    at, plan = 0.0, []
    for i in range(args.poisson_requests):
        at += rng.expovariate(rate)
        plan.append((at, i, rng.randint(16, 256)))
    return plan


def poisson(url: str, args: argparse.Namespace, rate: float, result: Result) -> None:
    plan = schedule(args, rate)
    answers: list[Answer | None] = [None] * len(plan)
    deadline = time.monotonic() + args.phase_timeout
    start = time.perf_counter()

    def one(k: int, offset: float, image: int, max_tokens: int) -> None:
        delay = start + offset - time.perf_counter()
        if delay > 0:
            time.sleep(delay)  # the arrival process itself, not synchronisation
        answers[k] = post(url, body(image, max_tokens, True), max(1.0, deadline - time.monotonic()))
        result.texts[(image % IMAGE_SEEDS, max_tokens)] = answers[k].text

    with ThreadPoolExecutor(len(plan)) as pool:
        for f in [pool.submit(one, k, *item) for k, item in enumerate(plan)]:
            f.result()
    result.poisson = [a for a in answers if a is not None]
    result.poisson_seconds = max(a.done for a in result.poisson) - start
    result.rate = rate


def closed_loop(url: str, args: argparse.Namespace, proc: ServerProcess, result: Result) -> float:
    """Concurrency 8, max_tokens 64, `--closed-requests` requests: CPU s per answer; returns answers/s."""
    assert proc.proc is not None
    counter = iter(range(args.closed_requests))
    done: list[Answer] = []

    def client() -> None:
        for i in counter:
            done.append(post(url, body(i, 64, False), args.phase_timeout))

    cpu0, t0 = server_cpu(proc.proc.pid), time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        for f in [pool.submit(client) for _ in range(8)]:
            f.result()
    elapsed = time.perf_counter() - t0
    result.cpu_per_answer = (server_cpu(proc.proc.pid) - cpu0) / len(done)
    result.closed_tokens_per_s = sum(a.tokens for a in done) / elapsed
    return len(done) / elapsed


def calibrate(url: str, args: argparse.Namespace) -> float:
    """Answers/s of 8 closed-loop clients with the Poisson phase's max_tokens mix: by Little's law, that
    arrival rate keeps ~8 requests in flight."""
    rng = random.Random(args.seed + 1)
    counter = iter(range(args.calibrate_requests))

    def client() -> None:
        for i in counter:
            post(url, body(i, rng.randint(16, 256), False), args.phase_timeout)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        for f in [pool.submit(client) for _ in range(8)]:
            f.result()
    return args.calibrate_requests / (time.perf_counter() - t0)


def run_mode(
    workdir: Path, env: dict[str, str], mode: str, args: argparse.Namespace, rate: float | None
) -> Result:
    proc = ServerProcess(workdir, {**env, "VISIONRAG_BATCHING": mode})
    proc.start(timeout=args.start_timeout)
    result = Result(mode)
    try:
        post(proc.url, body(0, 8, False), args.phase_timeout)  # warm-up
        print(f"{mode}:", flush=True)
        late_arrival(proc.url, args, result)
        if rate is None:
            rate = calibrate(proc.url, args)
            print(f"  calibrated Poisson rate: {rate:.3f} requests/s", flush=True)
        poisson(proc.url, args, rate, result)
        print(f"  poisson: {len(result.poisson)} answers in {result.poisson_seconds:.1f} s", flush=True)
        closed_loop(proc.url, args, proc, result)
        print(f"  closed loop c=8: {result.cpu_per_answer:.3f} CPU s/answer", flush=True)
    finally:
        proc.stop()
    return result


def pct(values: list[float], q: float) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]
    )


def print_table(results: list[Result], args: argparse.Namespace, params: int) -> None:
    print()
    print(
        f"## {params / 1e6:.0f}M-parameter Mllama on CPU, greedy, {args.threads} torch thread(s), "
        f"max batch 8; Poisson: {args.poisson_requests} requests, max_tokens 16..256"
    )
    print()
    print(
        "| mode | late arrival: short / long (median) | Poisson rate req/s | answers/s | tokens/s "
        "| TTFT p50 s | TTFT p95 s | latency p50 s | latency p95 s | CPU s / answer (c=8) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        ttft = [a.ttft for a in r.poisson]
        lat = [a.latency for a in r.poisson]
        tokens = sum(a.tokens for a in r.poisson)
        print(
            f"| {r.mode} | {statistics.median(r.late_ratios):.3f} "
            f"({statistics.median(r.late_second_s):.2f} s / {statistics.median(r.late_first_s):.2f} s) "
            f"| {r.rate:.3f} | {len(r.poisson) / r.poisson_seconds:.3f} | {tokens / r.poisson_seconds:.1f} "
            f"| {pct(ttft, 50):.2f} | {pct(ttft, 95):.2f} | {pct(lat, 50):.2f} | {pct(lat, 95):.2f} "
            f"| {r.cpu_per_answer:.3f} |"
        )
    by = {r.mode: r for r in results}
    if "static" in by and "continuous" in by:
        s, c = by["static"], by["continuous"]
        print()
        print(f"late arrival ratio, continuous: {statistics.median(c.late_ratios):.3f} (target <= 0.15)")
        ttft_ratio = pct([a.ttft for a in c.poisson], 95) / pct([a.ttft for a in s.poisson], 95)
        print(f"TTFT p95 continuous / static: {ttft_ratio:.3f} (target <= 0.25)")
        thr = (sum(a.tokens for a in c.poisson) / c.poisson_seconds) / (
            sum(a.tokens for a in s.poisson) / s.poisson_seconds
        )
        print(f"throughput (tokens/s) continuous / static: {thr:.2f} (target >= 1)")
        print(
            f"CPU s per answer continuous / static: {c.cpu_per_answer / s.cpu_per_answer:.2f} (target <= 1.15)"
        )
        same = [k for k in c.texts.keys() & s.texts.keys() if c.texts[k] != s.texts[k]]
        print(
            f"greedy answers equal across modes: {'yes' if not same else 'NO ' + str(same)}"
            f" ({len(c.texts.keys() & s.texts.keys())} compared)"
        )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1, help="torch threads in the model worker")
    p.add_argument("--long-tokens", type=int, default=400)
    p.add_argument("--late-repeats", type=int, default=3)
    p.add_argument("--poisson-requests", type=int, default=40)
    p.add_argument("--rate", type=float, help="Poisson arrivals per second (default: calibrated)")
    p.add_argument("--calibrate-requests", type=int, default=16)
    p.add_argument("--closed-requests", type=int, default=24)
    p.add_argument("--seed", type=int, default=14)
    p.add_argument("--only", choices=["continuous", "static"])
    p.add_argument("--phase-timeout", type=float, default=600.0, help="seconds one phase may take")
    p.add_argument("--start-timeout", type=float, default=180.0)
    p.add_argument("--keep", type=Path, help="build the checkpoints here and keep them (default: a temp dir)")
    args = p.parse_args()

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-batching-") as tmp:
        root = args.keep or Path(tmp)
        if (root / "mllama" / "config.json").exists():
            model_dir, text_dir, image_dir = root / "mllama", root / "clip" / "text", root / "clip" / "vision"
        else:
            model_dir, text_dir, image_dir = build_checkpoints(root)
        params = parameter_count(model_dir)
        env = {
            "MODEL_NAME": str(model_dir),
            "TEXT_MODEL_PATH": str(text_dir),
            "IMAGE_MODEL_PATH": str(image_dir),
            "OMP_NUM_THREADS": str(args.threads),
            "VISIONRAG_LOG_LEVEL": "warning",
            "VISIONRAG_MAX_QUEUE": "128",
            "VISIONRAG_MAX_BATCH_SIZE": "8",
            "VISIONRAG_BATCH_TIMEOUT": "0.05",
            "VISIONRAG_MAX_TOKENS_LIMIT": "4096",
        }
        results, rate = [], args.rate
        for mode in ("continuous", "static"):  # continuous first: it calibrates the Poisson rate
            if args.only and args.only != mode:
                continue
            results.append(run_mode(root / f"server-{mode}", env, mode, args, rate))
            rate = results[-1].rate
    print_table(results, args, params)
    print(f"load after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
