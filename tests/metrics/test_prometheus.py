"""Proof with real parts: Debian's Prometheus scrapes a real kit-dev (uvicorn + llama.cpp on SmolLM2),
and every query of the Grafana dashboard and of the KitOps tutorial dashboards returns data, with
counts that agree with the requests made. Plus the per-request timings against the client's clock.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from backends.base import Backend
from backends.select import EngineOptions, choose_backend
from devserver.server.app import create_app
from devserver.server.config import PullStats, ServedModel, ServerConfig
from tests.server.conftest import LiveServer
from tests.support.prometheus import PrometheusProcess

llama_cpp = pytest.importorskip("llama_cpp")
from backends import llamacpp  # noqa: E402 - only importable with llama_cpp installed

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
MODEL = "smollm2"
VERSION = "1.0.0"
COLOURS = [{"role": "user", "content": "Name three colours."}]
TUTORIAL_QUERIES = [
    "rate(model_requests_total[5m])",
    "histogram_quantile(0.95, rate(model_inference_duration_seconds_bucket[5m]))",
    "model_memory_usage_bytes",
    "gpu_utilization_percent",
]
# Series that exist only on a machine with the hardware (absent, not zero, elsewhere).
GPU_ONLY = re.compile(r"kitdev_gpu_|gpu_utilization_percent")
APPLE_ONLY = re.compile(r"kitdev_unified_memory_used_bytes")


def has_nvidia_gpu() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        pynvml.nvmlShutdown()
        return bool(count)
    except Exception:
        return False


@pytest.fixture(scope="module")
def server(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    options = EngineOptions(ctx_size=2048, threads=2)
    choice = choose_backend(smollm2_gguf, options=options)
    cache = tmp_path_factory.mktemp("cache")
    (cache / "blob").write_bytes(b"\0" * 8192)
    config = ServerConfig(
        model=ServedModel(id=MODEL, reference="127.0.0.1:5000/tests/smollm2:1", digest="sha256:" + "cd" * 32,
                          version=VERSION),
        pull=PullStats(seconds=0.5, bytes=8192, cache_hits=0, cache_misses=2),
        cache_dir=cache,
    )  # fmt: skip

    def load() -> Backend:
        return llamacpp.load(choice, options)

    with LiveServer(create_app(config, load)) as live:
        live.wait_ready(120)
        yield live


@pytest.fixture(scope="module")
def prometheus(server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusProcess]:
    process = PrometheusProcess(tmp_path_factory.mktemp("prometheus"), [f"127.0.0.1:{server.port}"]).start()
    yield process
    process.stop()


def chat(server: LiveServer, **body: Any) -> httpx.Response:
    payload = {"model": MODEL, "messages": COLOURS, "temperature": 0, "max_tokens": 12, **body}
    return httpx.post(f"{server.url}/v1/chat/completions", json=payload, timeout=120)


def stream(server: LiveServer, max_tokens: int = 12, client: httpx.Client | None = None) -> tuple[int, float, float]:
    """One streamed completion: (completion tokens, client TTFT, client end-to-end), timed from send.

    Pass a ``client`` made beforehand to time only the request: building an ``httpx`` client (its TLS
    context) takes ~80 ms on a busy machine, which is no part of the server's latency."""
    own = client is None
    client = client or httpx.Client()
    payload = {"model": MODEL, "messages": COLOURS, "temperature": 0, "max_tokens": max_tokens, "stream": True,
               "stream_options": {"include_usage": True}}  # fmt: skip
    started = time.perf_counter()
    first: float | None = None
    usage = 0
    with client.stream("POST", f"{server.url}/v1/chat/completions", json=payload, timeout=120) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data:") or line.endswith("[DONE]"):
                continue
            chunk = json.loads(line[5:])
            if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter()
            if chunk.get("usage"):
                usage = chunk["usage"]["completion_tokens"]
    ended = time.perf_counter()
    if own:
        client.close()
    assert first is not None
    return usage, first - started, ended - started


def abandon_stream(server: LiveServer) -> None:
    """A client that leaves after the first token (vLLM's ``abort``)."""
    payload = {"model": MODEL, "messages": COLOURS, "max_tokens": 200, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=payload, timeout=120) as response:
        for line in response.iter_lines():
            if '"content":"' in line.replace(" ", "") and '"content":""' not in line.replace(" ", ""):
                return


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of the dashboard, Grafana variables substituted."""
    dashboard = json.loads((ROOT / "grafana" / "kit-dev.json").read_text())
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", "1m").replace("$model", MODEL).replace("$job", ".*")
            assert "$" not in expr, expr
            found.append((panel["title"], expr))
    return found


def variable_queries() -> list[tuple[str, str, str]]:
    dashboard = json.loads((ROOT / "grafana" / "kit-dev.json").read_text())
    found = []
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable["definition"])
            assert match, variable["definition"]
            found.append((variable["name"], match[1], match[2]))
    return found


def value(result: list[dict[str, Any]]) -> float:
    return sum(float(r["value"][1]) for r in result)


def test_dashboard_and_tutorial_queries_have_data_and_counts_agree(
    server: LiveServer, prometheus: PrometheusProcess
) -> None:
    tokens = 0
    for _ in range(3):
        reply = chat(server)
        assert reply.status_code == 200
        tokens += reply.json()["usage"]["completion_tokens"]
    for _ in range(3):
        tokens += stream(server)[0]
    assert chat(server, model="nope").status_code == 404
    abandon_stream(server)
    made = 8

    # Prometheus sees every request (the first scrape lands ~5 s after it starts).
    prometheus.wait_for(f'sum(kitdev_requests_total{{model="{MODEL}"}})', until=lambda r: value(r) == made)
    by_status = prometheus.query(f'sum by (status) (kitdev_requests_total{{model="{MODEL}"}})')
    assert {r["metric"]["status"]: float(r["value"][1]) for r in by_status} == {"200": 7, "404": 1}
    tutorial = prometheus.query("model_requests_total")
    assert [(r["metric"]["model_name"], r["metric"]["version"], float(r["value"][1])) for r in tutorial] == [
        (MODEL, VERSION, made)
    ]
    prometheus.wait_for(
        f'sum by (finished_reason) (kitdev_request_success_total{{model="{MODEL}"}})',
        until=lambda r: {x["metric"]["finished_reason"]: float(x["value"][1]) for x in r}.get("abort") == 1,
    )
    finished = prometheus.query(f'sum(kitdev_request_success_total{{model="{MODEL}",finished_reason=~"stop|length"}})')
    assert value(finished) == 6
    assert value(prometheus.query(f'kitdev_generation_tokens_total{{model="{MODEL}"}}')) == tokens
    assert value(prometheus.query(f'kitdev_e2e_request_latency_seconds_count{{model="{MODEL}"}}')) == 6
    assert value(prometheus.query("model_inference_duration_seconds_count")) == 6
    assert value(prometheus.query(f'kitdev_time_to_first_token_seconds_count{{model="{MODEL}"}}')) == 7

    gpu = has_nvidia_gpu()
    skipped = []
    for title, expr in [*dashboard_queries(), *(("tutorial", q) for q in TUTORIAL_QUERIES)]:
        if (GPU_ONLY.search(expr) and not gpu) or APPLE_ONLY.search(expr):
            assert prometheus.query(expr) == [], f"{title}: {expr} must be absent without the hardware"
            skipped.append(expr)
            continue
        result = prometheus.wait_for(expr)
        assert result, f"{title}: {expr}"
    for name, metric, label in variable_queries():
        response = httpx.get(f"{prometheus.url}/api/v1/label/{label}/values", params={"match[]": metric}).json()
        assert response["data"], f"dashboard variable ${name} has no values"
    if not gpu:
        assert skipped, "the GPU queries were not recognised"
        print(f"\nskipped without an NVIDIA GPU (checked absent instead): {skipped}")


def test_one_streamed_request_matches_the_client_clock(server: LiveServer) -> None:
    def snapshot() -> dict[str, float]:
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(f"{server.url}/metrics").text
        wanted = ("kitdev_time_to_first_token_seconds", "kitdev_e2e_request_latency_seconds",
                  "kitdev_inter_token_latency_seconds")  # fmt: skip
        return {
            s.name: s.value
            for f in text_string_to_metric_families(text)
            if f.name in wanted
            for s in f.samples
            if s.name.endswith(("_sum", "_count")) and s.labels.get("model") == MODEL
        }

    with httpx.Client() as client:
        client.get(f"{server.url}/health")  # connected: the clock below times the request alone
        before = snapshot()
        tokens, client_ttft, client_e2e = stream(server, max_tokens=24, client=client)
        after = snapshot()

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    assert delta("kitdev_time_to_first_token_seconds_count") == 1
    assert delta("kitdev_e2e_request_latency_seconds_count") == 1
    ttft, e2e = delta("kitdev_time_to_first_token_seconds_sum"), delta("kitdev_e2e_request_latency_seconds_sum")
    assert client_ttft - 0.05 <= ttft <= client_ttft, (ttft, client_ttft)
    assert client_e2e - 0.05 <= e2e <= client_e2e, (e2e, client_e2e)
    assert tokens > 1
    assert delta("kitdev_inter_token_latency_seconds_count") == tokens - 1
