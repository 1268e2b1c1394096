"""The bounded queue (429 when full), cancellation on disconnect, and metrics that count exactly, for a
backend the worker runs on its threads and for one that pushes its events itself (as llama.cpp's does)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from backends.fake import FakeBackend, FakePushBackend
from tests.server.conftest import MODEL_ID, LiveServer, ServerFactory, chat_body, stream_chat

URL = "/v1/chat/completions"


@pytest.fixture(params=[FakeBackend, FakePushBackend], ids=["threads", "push"])
def fake(request: pytest.FixtureRequest) -> type[FakeBackend]:
    return request.param


def samples(server: LiveServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{server.url}/metrics").text
    return {
        (s.name, tuple(sorted((k, v) for k, v in s.labels.items() if v))): s.value  # "" is no label, as in Prometheus
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(snapshot: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    wanted = {"model": MODEL_ID, **labels}
    return snapshot.get((name, tuple(sorted((k, v) for k, v in wanted.items() if v))), 0.0)


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def in_background(fn: Callable[[], object]) -> threading.Thread:
    thread = threading.Thread(target=fn, daemon=True)
    thread.start()
    return thread


def test_full_queue_answers_429_with_retry_after(serve: ServerFactory, fake: type[FakeBackend]) -> None:
    gate = threading.Event()
    backend = fake(gate=gate)
    server = serve(backend, queue_size=1)
    results: list[int] = []
    running = in_background(lambda: results.append(httpx.post(server.url + URL, json=chat_body(), timeout=30)
                                                   .status_code))  # fmt: skip
    wait_for(backend.started.is_set)
    queued = in_background(lambda: results.append(httpx.post(server.url + URL, json=chat_body(), timeout=30)
                                                  .status_code))  # fmt: skip
    wait_for(lambda: value(samples(server), "kitdev_num_requests_waiting") == 1)
    refused = httpx.post(server.url + URL, json=chat_body())
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "1"
    assert refused.json()["error"]["code"] == "queue_full"
    assert refused.json()["error"]["type"] == "rate_limit_error"
    snapshot = samples(server)
    assert value(snapshot, "kitdev_num_requests_running") == 1
    assert value(snapshot, "kitdev_requests_total", status="429") == 1
    gate.set()
    running.join(10)
    queued.join(10)
    assert results == [200, 200]


def test_metrics_count_exactly_the_requests_made(serve: ServerFactory, fake: type[FakeBackend]) -> None:
    server = serve(fake())
    before = samples(server)
    for _ in range(2):
        assert httpx.post(server.url + URL, json=chat_body()).status_code == 200
    assert stream_chat(server.url, chat_body())[0] == 200
    assert httpx.post(server.url + URL, json=chat_body(max_tokens=1)).status_code == 200
    assert httpx.post(server.url + URL, json=chat_body(model="nope")).status_code == 404
    assert httpx.post(server.url + URL, content=b"{").status_code == 400
    after = samples(server)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("kitdev_requests_total", status="200") == 4
    assert delta("kitdev_requests_total", status="404") == 1
    assert delta("kitdev_requests_total", status="400") == 1
    assert delta("model_requests_total", model="", model_name=MODEL_ID, version="v1") == 6
    assert delta("kitdev_request_success_total", finished_reason="stop") == 3
    assert delta("kitdev_request_success_total", finished_reason="length") == 1
    assert delta("kitdev_generation_tokens_total") == 3 * 4 + 1
    prompt_tokens = 4  # FakeBackend counts words of "<|im_start|>user\nSay hello<|im_end|>\n<|im_start|>assistant\n"
    assert delta("kitdev_prompt_tokens_total") == 4 * prompt_tokens
    assert delta("kitdev_time_to_first_token_seconds_count") == 4
    assert delta("kitdev_e2e_request_latency_seconds_count") == 4
    assert delta("kitdev_request_queue_time_seconds_count") == 4
    assert delta("kitdev_inter_token_latency_seconds_count") == 3 * 3
    assert value(after, "kitdev_num_requests_running") == 0
    assert value(after, "kitdev_num_requests_waiting") == 0
    assert delta("kitdev_time_to_first_token_seconds_bucket", le="2560.0") == 4


def test_client_leaving_a_stream_cancels_the_generation(serve: ServerFactory, fake: type[FakeBackend]) -> None:
    backend = fake(["tok "] * 400, delay_s=0.02)
    server = serve(backend)
    with httpx.stream("POST", server.url + URL, json=chat_body(stream=True), timeout=30) as response:
        lines = response.iter_lines()
        while not next(lines).startswith('data: {"id"'):
            pass
    wait_for(lambda: backend.requests and backend.requests[0].cancel.is_set())
    wait_for(lambda: value(samples(server), "kitdev_request_success_total", finished_reason="abort") == 1)
    assert value(samples(server), "kitdev_num_requests_running") == 0


def test_a_failed_plain_request_counts_as_error_not_abort(serve: ServerFactory, fake: type[FakeBackend]) -> None:
    server = serve(fake(fail_after=2, error=RuntimeError("the engine fell over")))
    assert httpx.post(server.url + URL, json=chat_body(), timeout=30).status_code == 500
    after = samples(server)
    assert value(after, "kitdev_request_success_total", finished_reason="error") == 1
    assert value(after, "kitdev_request_success_total", finished_reason="abort") == 0
    assert value(after, "kitdev_requests_total", status="500") == 1


def test_client_leaving_a_plain_request_cancels_it(serve: ServerFactory, fake: type[FakeBackend]) -> None:
    backend = fake(["tok "] * 400, delay_s=0.02)
    server = serve(backend)

    with contextlib.suppress(httpx.TimeoutException):
        httpx.post(server.url + URL, json=chat_body(), timeout=0.3)
    wait_for(lambda: backend.requests and backend.requests[0].cancel.is_set())
    wait_for(lambda: value(samples(server), "kitdev_request_success_total", finished_reason="abort") == 1)
    wait_for(lambda: value(samples(server), "kitdev_requests_total", status="499") == 1)  # not a server error
    assert value(samples(server), "kitdev_requests_total", status="500") == 0


def test_a_queued_request_whose_client_left_is_dropped_before_it_starts(
    serve: ServerFactory, fake: type[FakeBackend]
) -> None:
    gate = threading.Event()
    backend = fake(gate=gate)
    server = serve(backend, queue_size=2)
    first = in_background(lambda: httpx.post(server.url + URL, json=chat_body(), timeout=30))
    wait_for(backend.started.is_set)
    with httpx.stream("POST", server.url + URL, json=chat_body(stream=True), timeout=30) as response:
        next(response.iter_lines())
        wait_for(lambda: value(samples(server), "kitdev_num_requests_waiting") == 1)
    wait_for(lambda: value(samples(server), "kitdev_request_success_total", finished_reason="abort") == 1)
    gate.set()
    first.join(10)
    assert httpx.post(server.url + URL, json=chat_body()).status_code == 200
    assert len(backend.requests) == 2  # the first and the last; the abandoned one never ran
