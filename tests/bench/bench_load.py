"""Loopback load on the tiny model: N requests at a given concurrency, every answer checked against its own
request, and a latency table (p50 / p95 / p99, throughput, errors).

    .venv/bin/python tests/bench/bench_load.py                 # builds the tiny checkpoints, starts a server
    .venv/bin/python tests/bench/bench_load.py --url http://127.0.0.1:8000 [--api-key KEY]

Each request asks about one of `images` diagrams with its own max_tokens (1..max_tokens). Greedy decoding
is deterministic and batching must not change an answer, so each answer must be the first tokens of the
answer that diagram gets alone (asked once, before the load) and have exactly its own max_tokens tokens.
tests/server/test_load.py runs the same load as a test.
"""

from __future__ import annotations

import argparse
import base64
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.conftest import diagram_png  # noqa: E402


@dataclass
class Case:
    index: int
    seed: int
    question: str
    max_tokens: int


@dataclass
class Outcome:
    case: Case
    status: int | None
    seconds: float
    body: dict | None = None
    error: str | None = None


@dataclass
class LoadResult:
    outcomes: list[Outcome]
    wall_seconds: float
    concurrency: int
    mismatches: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status != 200]

    def percentile(self, p: float) -> float:
        latencies = sorted(o.seconds for o in self.outcomes if o.status == 200)
        if not latencies:
            return float("nan")
        k = max(0, min(len(latencies) - 1, round(p / 100 * len(latencies) + 0.5) - 1))
        return latencies[k]

    def table(self) -> str:
        ok = [o for o in self.outcomes if o.status == 200]
        tokens = sum(o.body["usage"]["completion_tokens"] for o in ok if o.body)
        rows = [
            ("requests", f"{len(self.outcomes)}"),
            ("concurrency", f"{self.concurrency}"),
            ("errors", f"{len(self.errors)}"),
            ("mismatched answers", f"{len(self.mismatches)}"),
            ("wall time", f"{self.wall_seconds:.2f} s"),
            (
                "throughput",
                f"{len(ok) / self.wall_seconds:.1f} req/s, {tokens / self.wall_seconds:.0f} tokens/s",
            ),
            ("latency p50", f"{self.percentile(50) * 1000:.0f} ms"),
            ("latency p95", f"{self.percentile(95) * 1000:.0f} ms"),
            ("latency p99", f"{self.percentile(99) * 1000:.0f} ms"),
            ("latency max", f"{max((o.seconds for o in ok), default=0) * 1000:.0f} ms"),
            ("latency mean", f"{statistics.fmean(o.seconds for o in ok) * 1000 if ok else 0:.0f} ms"),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"| {k:<{width}} | {v} |" for k, v in rows)


def data_url(seed: int) -> str:
    return "data:image/png;base64," + base64.b64encode(diagram_png(seed)).decode()


def make_cases(n: int = 200, images: int = 20, max_tokens: int = 12) -> list[Case]:
    return [
        Case(i, 500 + i % images, f"what does diagram {i % images} show", 1 + (i * 7) % max_tokens)
        for i in range(n)
    ]


def run_load(
    url: str,
    n: int = 200,
    concurrency: int = 32,
    images: int = 20,
    max_tokens: int = 12,
    headers: dict[str, str] | None = None,
    store: bool = True,
    timeout: float = 120.0,
) -> LoadResult:
    """Ask each diagram alone first (the references), then run the load and check every answer."""
    headers = headers or {}
    cases = make_cases(n, images, max_tokens)
    urls = {seed: data_url(seed) for seed in {c.seed for c in cases}}
    references: dict[int, str] = {}
    with requests.Session() as session:
        for seed in sorted(urls):
            case = next(c for c in cases if c.seed == seed)
            body = {
                "image_url": urls[seed],
                "user_query": case.question,
                "max_tokens": max_tokens,
                "store": False,
            }
            r = session.post(f"{url}/predict", json=body, headers=headers, timeout=timeout)
            r.raise_for_status()
            references[seed] = r.json()["output"]

    def one(case: Case) -> Outcome:
        body = {
            "image_url": urls[case.seed],
            "user_query": case.question,
            "max_tokens": case.max_tokens,
            "store": store,
            "user": "load-test",
        }
        started = time.perf_counter()
        try:
            r = requests.post(f"{url}/predict", json=body, headers=headers, timeout=timeout)
        except requests.RequestException as exc:
            return Outcome(case, None, time.perf_counter() - started, error=repr(exc))
        seconds = time.perf_counter() - started
        if r.status_code != 200:
            return Outcome(case, r.status_code, seconds, error=r.text[:300])
        return Outcome(case, 200, seconds, r.json())

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        outcomes = list(pool.map(one, cases))
    result = LoadResult(outcomes, time.perf_counter() - started, concurrency)
    for o in outcomes:
        if o.status != 200 or o.body is None:
            continue
        ref = references[o.case.seed]
        got = o.body["output"]
        usage = o.body["usage"]["completion_tokens"]
        if (
            usage != o.case.max_tokens
            or not ref.startswith(got)
            or (o.case.max_tokens == max_tokens and got != ref)
        ):
            result.mismatches.append(
                f"request {o.case.index} (diagram {o.case.seed}, max_tokens {o.case.max_tokens}): "
                f"{usage} tokens, {got!r} is not the start of {ref!r}"
            )
        if store and not o.body.get("id"):
            result.mismatches.append(f"request {o.case.index}: no interaction id")
    return result


def _start_tiny_server(workdir: Path):
    from tests.checkpoints.clip import build_tiny_clip
    from tests.checkpoints.mllama import build_tiny_mllama
    from tests.conftest import ServerProcess

    (workdir / "mllama").mkdir(parents=True)
    (workdir / "clip").mkdir()
    model = build_tiny_mllama(workdir / "mllama")
    text, image = build_tiny_clip(workdir / "clip")
    env = {
        "MODEL_NAME": str(model),
        "TEXT_MODEL_PATH": str(text),
        "IMAGE_MODEL_PATH": str(image),
        "VISIONRAG_MAX_BATCH_SIZE": "8",
        "VISIONRAG_BATCH_TIMEOUT": "0.1",
    }
    return ServerProcess(workdir / "server", env).start()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="a running server (default: start one on the tiny checkpoints)")
    parser.add_argument("--api-key")
    parser.add_argument("-n", "--requests", type=int, default=200)
    parser.add_argument("-c", "--concurrency", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=12)
    args = parser.parse_args()
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        server = None if args.url else _start_tiny_server(Path(tmp))
        url = args.url or server.url
        try:
            result = run_load(
                url, args.requests, args.concurrency, max_tokens=args.max_tokens, headers=headers
            )
        finally:
            if server is not None:
                server.stop()
    print(f"load: {args.requests} POST /predict at concurrency {args.concurrency} against {url}")
    print("| metric | value |\n|---|---|")
    print(result.table())
    for line in result.mismatches[:10]:
        print("MISMATCH", line)
    for o in result.errors[:10]:
        print("ERROR", o.case.index, o.status, o.error)
    return 1 if result.errors or result.mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
