"""The metric names, labels and sources, against a real uvicorn with the FakeBackend (fast)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from backends.base import FinishEvent, GenerationEvent, Timings, TokenEvent
from backends.fake import FakeBackend
from devserver.gpu import GpuCollector, GpuReading, GpuSampler, Reader, Snapshot
from devserver.server.app import create_app
from devserver.server.config import PullStats
from devserver.server.metrics import ITL_BUCKETS, TTFT_BUCKETS, RequestTracker, ServerMetrics
from devserver.server.metrics_system import CacheSizeCollector
from tests.server.conftest import MODEL_ID, LiveServer, chat_body, make_config

Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(text: str) -> Samples:
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found.setdefault(s.name, []).append((s.labels, s.value))
    return found


@pytest.fixture
def live() -> Iterator[Any]:
    servers: list[LiveServer] = []

    def start(backend: FakeBackend | None = None, **config: Any) -> LiveServer:
        app = create_app(make_config(**config), lambda: backend or FakeBackend())
        server = LiveServer(app).__enter__()
        servers.append(server)
        server.wait_ready()
        return server

    yield start
    for server in servers:
        server.__exit__(None, None, None)


def test_vllm_names_only_behind_the_flag_with_the_same_buckets(live: Any) -> None:
    plain, compat = live(), live(metrics_compat=("vllm",))
    for server in (plain, compat):
        assert httpx.post(f"{server.url}/v1/chat/completions", json=chat_body()).status_code == 200
    assert not [n for n in scrape(httpx.get(f"{plain.url}/metrics").text) if n.startswith("vllm:")]
    samples = scrape(httpx.get(f"{compat.url}/metrics").text)
    counts = {"time_to_first_token_seconds": 1, "inter_token_latency_seconds": 3, "e2e_request_latency_seconds": 1,
              "request_queue_time_seconds": 1, "request_time_per_output_token_seconds": 1}  # fmt: skip
    for name, count in counts.items():
        assert samples[f"vllm:{name}_count"] == [({"model_name": MODEL_ID}, count)]
        vllm_le = [labels["le"] for labels, _ in samples[f"vllm:{name}_bucket"]]
        assert vllm_le == [labels["le"] for labels, _ in samples[f"kitdev_{name}_bucket"]]
    ttft_le = [float(labels["le"]) for labels, _ in samples["vllm:time_to_first_token_seconds_bucket"]]
    assert ttft_le[:-1] == list(TTFT_BUCKETS)
    assert samples["vllm:request_success_total"] == [({"model_name": MODEL_ID, "finished_reason": "stop"}, 1.0)]
    assert samples["vllm:generation_tokens_total"] == [({"model_name": MODEL_ID}, 4.0)]
    assert samples["vllm:num_requests_running"] == [({"model_name": MODEL_ID}, 0.0)]


def test_status_counts_tutorial_names_and_model_series(live: Any, tmp_path: Path) -> None:
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / "a").write_bytes(b"x" * 40_000)
    os.link(tmp_path / "blobs" / "a", tmp_path / "same-file")  # a hard link is counted once
    pull = PullStats(seconds=1.5, bytes=1234, cache_hits=1, cache_misses=2)
    server = live(api_key="k", pull=pull, cache_dir=tmp_path)
    url = f"{server.url}/v1/chat/completions"
    auth = {"Authorization": "Bearer k"}
    assert httpx.post(url, json=chat_body()).status_code == 401
    assert httpx.post(url, json=chat_body(), headers=auth).status_code == 200
    assert httpx.post(url, json=chat_body(model="nope"), headers=auth).status_code == 404
    assert httpx.post(url, content=b"{", headers=auth).status_code == 400
    assert httpx.get(f"{server.url}/v1/models", headers=auth).status_code == 200  # not an inference request
    s = scrape(httpx.get(f"{server.url}/metrics").text)
    statuses = {labels["status"]: v for labels, v in s["kitdev_requests_total"]}
    assert statuses == {"401": 1, "200": 1, "404": 1, "400": 1}
    assert s["model_requests_total"] == [({"model_name": MODEL_ID, "version": "v1"}, 4.0)]
    assert s["model_inference_duration_seconds_count"] == [({"model_name": MODEL_ID, "version": "v1"}, 1.0)]
    [(labels, rss)] = s["model_memory_usage_bytes"]
    assert labels == {"model_name": MODEL_ID, "version": "v1"} and rss > 10 * 2**20
    assert s["process_resident_memory_bytes"][0][1] > 10 * 2**20  # the client library's process collector
    assert "gpu_utilization_percent" not in s and not [n for n in s if n.startswith("kitdev_gpu_")]  # absent
    [(info, one)] = s["kitdev_model_info"]
    assert one == 1 and info == {"model": MODEL_ID, "reference": "127.0.0.1:5000/acme/tiny-chat:v1",
                                 "digest": "sha256:" + "ab" * 32, "backend": "fake", "device": "cpu"}  # fmt: skip
    assert s["kitdev_model_load_seconds"][0][1] >= 0
    assert s["kitdev_model_pull_bytes"][0][1] == 1234 and s["kitdev_model_pull_seconds"][0][1] == 1.5
    assert s["kitdev_cache_hits_total"][0][1] == 1 and s["kitdev_cache_misses_total"][0][1] == 2
    assert 40_000 <= s["kitdev_cache_size_bytes"][0][1] < 80_000


def test_the_cache_walk_is_remembered_between_scrapes(tmp_path: Path) -> None:
    collector = CacheSizeCollector(tmp_path, ttl_s=60)
    first = next(iter(collector.collect())).samples[0].value
    (tmp_path / "new").write_bytes(b"y" * 100_000)
    assert next(iter(collector.collect())).samples[0].value == first


class FakeReader(Reader):
    """Two GPUs, this process on the second; each read takes ``read_s`` (a slow driver)."""

    def __init__(self, read_s: float = 0.0, available: bool = True) -> None:
        self.read_s, self.available, self.reads = read_s, available, 0

    def open(self) -> bool:
        return self.available

    def read(self) -> Snapshot:
        time.sleep(self.read_s)
        self.reads += 1
        gpus = (
            GpuReading(0, "H200", 10.0, 1 << 30, 141 << 30, 40.0, 120.5),
            GpuReading(1, "H200", 70.0, 2 << 30, 141 << 30, 50.0, 300.0, process_memory_bytes=1 << 30),
        )
        return Snapshot(gpus=gpus, taken=time.time())


def wait_until(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_gpu_series_per_device_and_the_tutorial_mean_over_gpus_in_use() -> None:
    sampler = GpuSampler(FakeReader(), interval_s=0.05)
    metrics = ServerMetrics(make_config(), gpu=sampler)
    metrics.start()
    try:
        wait_until(lambda: sampler.latest.gpus)
        s = scrape(metrics.exposition().decode())
    finally:
        metrics.close()
    assert s["kitdev_gpu_utilization_percent"] == [({"gpu": "0", "name": "H200"}, 10.0),
                                                   ({"gpu": "1", "name": "H200"}, 70.0)]  # fmt: skip
    assert s["kitdev_gpu_memory_total_bytes"][1] == ({"gpu": "1", "name": "H200"}, float(141 << 30))
    assert s["kitdev_gpu_power_watts"][0][1] == 120.5 and s["kitdev_gpu_temperature_celsius"][1][1] == 50.0
    assert s["kitdev_gpu_process_memory_bytes"] == [({"gpu": "1", "name": "H200"}, float(1 << 30))]
    assert s["gpu_utilization_percent"] == [({"model_name": MODEL_ID, "version": "v1"}, 70.0)]  # only GPU 1 is ours
    assert not sampler.latest.gpus  # stopping clears the snapshot: no stale figures


def test_a_scrape_never_waits_for_a_slow_driver_and_no_gpu_means_absent() -> None:
    reader = FakeReader(read_s=1.0)
    sampler = GpuSampler(reader, interval_s=0.01)
    registry = CollectorRegistry()
    registry.register(GpuCollector(sampler))
    sampler.start()
    try:
        wait_until(lambda: reader.reads >= 1)
        started = time.perf_counter()
        for _ in range(20):
            list(registry.collect())
        assert time.perf_counter() - started < 0.5  # 20 scrapes inside one 1 s driver call
    finally:
        sampler.stop()
    absent = GpuSampler(FakeReader(available=False))
    absent.start()
    absent.stop()
    assert list(GpuCollector(absent).collect()) == []


def run(tracker: RequestTracker, events: list[GenerationEvent], gap_s: float = 0.0) -> None:
    async def source() -> AsyncIterator[GenerationEvent]:
        for event in events:
            await asyncio.sleep(gap_s)
            yield event

    async def drain() -> None:
        async for _ in tracker.watch(source()):
            pass

    asyncio.run(drain())


def test_adapter_label_itl_per_token_tpot_and_finish_reasons() -> None:
    metrics = ServerMetrics(make_config(), registry=CollectorRegistry(), gpu=GpuSampler(FakeReader(available=False)))
    tracker = RequestTracker(metrics)
    tracker.adapter = "french"
    tracker.started(tracker.arrived + 0.01)
    events: list[GenerationEvent] = [
        TokenEvent("Bon", (1,)), TokenEvent("jour", (2,)), TokenEvent("é", (3, 4)),  # two tokens held back
        FinishEvent("stop", 5, 4, Timings(prefill_s=0.02, decode_s=0.1)),
    ]  # fmt: skip
    run(tracker, events, gap_s=0.01)
    tracker.end(cancelled=False, tool_calls=1)
    get = metrics.registry.get_sample_value
    labels = {"model": MODEL_ID, "adapter": "french"}
    assert get("kitdev_inter_token_latency_seconds_count", labels) == 3  # 4 tokens - 1
    assert get("kitdev_time_to_first_token_seconds_count", labels) == 1
    assert get("kitdev_request_time_per_output_token_seconds_count", labels) == 1
    tpot = get("kitdev_request_time_per_output_token_seconds_sum", labels)
    assert tpot == pytest.approx(get("kitdev_inter_token_latency_seconds_sum", labels) / 3)
    assert get("kitdev_request_queue_time_seconds_sum", labels) == pytest.approx(0.01)
    assert get("kitdev_request_success_total", {**labels, "finished_reason": "tool_calls"}) == 1
    assert get("kitdev_generation_tokens_total", labels) == 4

    left = RequestTracker(metrics)
    run(left, [TokenEvent("a", (1,))])
    left.end(cancelled=True)
    left.end(cancelled=True)  # counted once
    base = {"model": MODEL_ID, "adapter": ""}
    assert get("kitdev_request_success_total", {**base, "finished_reason": "abort"}) == 1
    assert min(ITL_BUCKETS) == 0.01


def test_python_m_devserver_gpu_runs_standalone() -> None:
    import subprocess
    import sys

    code = (
        "import sys, devserver.gpu; sys.exit(any(m.startswith(('devserver.server', 'backends')) for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
    out = subprocess.run([sys.executable, "-m", "devserver.gpu", "--seconds", "0.3", "--interval", "0.1"],
                         capture_output=True, text=True, timeout=60, check=True).stdout  # fmt: skip
    assert "no GPU series" in out or "kitdev_gpu_utilization_percent" in out
    assert threading.active_count() >= 1
