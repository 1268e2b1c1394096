"""Load and fuzzing on the real llama.cpp server: 16 streaming clients of which half leave after the
first chunk, five rounds (gauges back to 0, memory flat); then schemathesis against /openapi.json."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from tests.conformance.conftest import llama_loader, start
from tests.server.conftest import MODEL_ID, LiveServer, sse_data
from tests.server.test_queue_and_metrics import samples, value, wait_for

pytestmark = pytest.mark.slow

CLIENTS = 16
ROUNDS = 5


def one_client(url: str, leave: bool, results: list[str | None]) -> None:
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Count to twenty."}], "stream": True,
            "max_tokens": 4}  # fmt: skip
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=300) as response:
        lines = response.iter_lines()
        if leave:
            next(line for line in lines if line.startswith("data:"))
            results.append(None)
            return
        payloads = sse_data(lines)
    finishes = [p for p in payloads if '"finish_reason":"' in p]
    results.append(payloads[-1] if finishes and payloads[-1] == "[DONE]" else "no finish_reason")


def test_half_the_clients_leave_the_rest_finish_and_nothing_leaks(llama_server: LiveServer) -> None:
    rss: list[int] = []
    for _ in range(ROUNDS):
        results: list[str | None] = []
        threads = [threading.Thread(target=one_client, args=(llama_server.url, i % 2 == 0, results))
                   for i in range(CLIENTS)]  # fmt: skip
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        assert sorted(r or "" for r in results) == [""] * (CLIENTS // 2) + ["[DONE]"] * (CLIENTS // 2)
        wait_for(lambda: value(samples(llama_server), "kitdev_num_requests_running") == 0, timeout=60)
        assert value(samples(llama_server), "kitdev_num_requests_waiting") == 0
        gc.collect()
        rss.append(psutil.Process().memory_info().rss)
    assert rss[-1] <= rss[0] * 1.10, rss


@pytest.fixture(scope="module")
def fuzz_server(smollm2_gguf: Path) -> Iterator[LiveServer]:
    """Generations capped at one token, so hundreds of accepted requests stay cheap."""
    pytest.importorskip("llama_cpp")
    server = start(llama_loader(smollm2_gguf), max_tokens_limit=1, queue_size=64)
    yield server
    server.__exit__(None, None, None)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/load_lora_adapter"])
def test_fuzzed_posts_get_no_server_error(fuzz_server: LiveServer, path: str) -> None:
    """Schema-valid and schema-violating bodies alike: any status but a 5xx."""
    schema = schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")
    for result in schema.include(method="POST", path=path).get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def fuzz(case: schemathesis.Case) -> None:
            case.call_and_validate(checks=[not_a_server_error], timeout=120)

        fuzz()


def test_the_server_is_still_up_after_fuzzing(fuzz_server: LiveServer) -> None:
    assert httpx.get(f"{fuzz_server.url}/health").json() == {"status": "ok"}
