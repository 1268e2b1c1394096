"""How long a ``/metrics`` scrape takes while 50 requests are in flight (a benchmark, not a test).

A real uvicorn serves the FakeBackend with 4 generations running (held on its gate) and 46 queued;
then ``GET /metrics`` is timed from a connected client, and ``ServerMetrics.exposition()`` alone
(the server's own share).

    .venv/bin/python -m bench.scrape --scrapes 200
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import httpx

from backends.fake import FakeBackend
from devserver.server.app import create_app
from devserver.server.config import ServedModel, ServerConfig
from tests.server.conftest import LiveServer

IN_FLIGHT = 50
RUNNING = 4


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--vllm", action="store_true", help="also expose the vllm: names")
    args = parser.parse_args()
    gate = threading.Event()
    backend = FakeBackend(gate=gate, max_concurrency=RUNNING)
    config = ServerConfig(
        model=ServedModel(id="bench", version="1"),
        queue_size=IN_FLIGHT,
        metrics_compat=("vllm",) if args.vllm else (),
    )
    with LiveServer(create_app(config, lambda: backend)) as server:
        server.wait_ready()
        body = {"model": "bench", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        clients = [
            threading.Thread(target=httpx.post, args=(f"{server.url}/v1/chat/completions",),
                             kwargs={"json": body, "timeout": 120}, daemon=True)
            for _ in range(IN_FLIGHT)
        ]  # fmt: skip
        for thread in clients:
            thread.start()
        state = server.app.state.kitdev
        worker = state.loaded.worker
        while worker.running < RUNNING or worker.waiting < IN_FLIGHT - RUNNING:
            time.sleep(0.05)
        with httpx.Client() as client:
            http_ms, render_ms = [], []
            size = 0
            for _ in range(args.scrapes):
                started = time.perf_counter()
                size = len(client.get(f"{server.url}/metrics").content)
                http_ms.append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                state.metrics.exposition()
                render_ms.append((time.perf_counter() - started) * 1000)
        gate.set()
        for thread in clients:
            thread.join(30)
    print(f"{IN_FLIGHT} requests in flight ({RUNNING} running, {IN_FLIGHT - RUNNING} waiting), {size} bytes a scrape")
    for name, values in (("GET /metrics", http_ms), ("exposition()", render_ms)):
        print(f"{name:14} median {statistics.median(values):6.2f} ms   p99 {percentile(values, 99):6.2f} ms   "
              f"({len(values)} scrapes)")  # fmt: skip


if __name__ == "__main__":
    main()
