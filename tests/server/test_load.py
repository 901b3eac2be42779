"""Bounded loopback load: 200 requests at concurrency 32 on the tiny model, zero errors, and every answer
matched to its own request (see tests/bench/bench_load.py, which runs the same load as a benchmark)."""

from __future__ import annotations

import requests

from tests.bench.bench_load import run_load


def test_200_requests_at_concurrency_32(server) -> None:
    result = run_load(server.url, n=200, concurrency=32, images=20, max_tokens=12, timeout=120)
    print("\n" + result.table())
    assert not result.errors, [(o.case.index, o.status, o.error) for o in result.errors[:5]]
    assert not result.mismatches, result.mismatches[:5]
    assert len(result.outcomes) == 200
    ids = [o.body["id"] for o in result.outcomes]
    assert len(set(ids)) == 200  # each request its own interaction
    assert result.wall_seconds < 240
    # the server is idle again and still answering
    metrics = requests.get(server.url + "/metrics", timeout=10).text
    assert "visionrag_inflight_requests 0.0" in metrics
