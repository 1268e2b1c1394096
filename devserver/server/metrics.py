"""Prometheus metrics, in their own registry (fresh per app, so tests and several apps never collide).

Names follow vLLM's meanings with the ``kitdev_`` prefix and base units in the name; latency
histograms use vLLM's bucket sets verbatim so its dashboards' expectations carry over. Every series
is labelled ``model``. ``kitdev_requests_total{status}`` counts each chat request exactly once when
it ends: ``stop``/``length``/``tool_calls`` (finished), ``cancelled`` (client left), ``error``
(failed while generating) or ``rejected`` (refused before it was queued: bad request, unknown model,
queue full, not loaded). Running/waiting gauges are read from the worker at scrape time.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from backends.base import FinishEvent, GenerationEvent, TokenEvent

# vllm/v1/metrics/buckets.py, verbatim
# fmt: off
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
               40.0, 80.0)
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
                           120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
# fmt: on

CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServerMetrics:
    """The served model's metric families, bound to ``model`` once."""

    def __init__(self, model: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.model = model
        r = self.registry

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, ["model"], buckets=buckets, registry=r)

        self.ttft = histogram(
            "kitdev_time_to_first_token_seconds", "Arrival to first generated text.", TTFT_BUCKETS
        ).labels(model)
        self.itl = histogram(
            "kitdev_inter_token_latency_seconds", "Gap between successive text events of one request.", ITL_BUCKETS
        ).labels(model)
        self.e2e = histogram(
            "kitdev_e2e_request_latency_seconds", "Arrival to finish.", REQUEST_LATENCY_BUCKETS
        ).labels(model)
        self.queue = histogram(
            "kitdev_request_queue_time_seconds", "Arrival to a worker starting it.", REQUEST_LATENCY_BUCKETS
        ).labels(model)
        self.prefill = histogram(
            "kitdev_request_prefill_time_seconds",
            "Prompt evaluation, as the backend measured it.",
            REQUEST_LATENCY_BUCKETS,
        ).labels(model)
        self.decode = histogram(
            "kitdev_request_decode_time_seconds",
            "First to last token, as the backend measured it.",
            REQUEST_LATENCY_BUCKETS,
        ).labels(model)
        self._requests = Counter("kitdev_requests", "Chat requests by how they ended.", ["model", "status"], registry=r)
        self.prompt_tokens = Counter("kitdev_prompt_tokens", "Prompt tokens processed.", ["model"], registry=r).labels(
            model
        )
        self.generation_tokens = Counter("kitdev_generation_tokens", "Tokens generated.", ["model"], registry=r).labels(
            model
        )
        self._running = Gauge("kitdev_num_requests_running", "Requests generating now.", ["model"], registry=r)
        self._waiting = Gauge("kitdev_num_requests_waiting", "Requests queued, not started.", ["model"], registry=r)
        self._running.labels(model).set(0)
        self._waiting.labels(model).set(0)

    def watch_worker(self, running: Callable[[], int], waiting: Callable[[], int]) -> None:
        """Read the gauges from the worker at scrape time (cheaper than tracking every change)."""
        self._running.labels(self.model).set_function(running)
        self._waiting.labels(self.model).set_function(waiting)

    def count_request(self, status: str) -> None:
        self._requests.labels(self.model, status).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class RequestTracker:
    """Times one request from arrival through its events and counts it exactly once."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics
        self.arrived = time.perf_counter()
        self._last_text: float | None = None
        self._counted = False
        self.finish: FinishEvent | None = None

    def started(self, at: float) -> None:
        """The worker picked the request up at ``at`` (perf_counter)."""
        self._metrics.queue.observe(max(0.0, at - self.arrived))

    async def watch(self, events: AsyncIterator[GenerationEvent]) -> AsyncIterator[GenerationEvent]:
        async for event in events:
            self._observe(event)
            yield event

    def _observe(self, event: GenerationEvent) -> None:
        now = time.perf_counter()
        m = self._metrics
        if isinstance(event, TokenEvent):
            if self._last_text is None:
                m.ttft.observe(now - self.arrived)
            else:
                m.itl.observe(now - self._last_text)
            self._last_text = now
            return
        self.finish = event
        m.e2e.observe(now - self.arrived)
        m.prompt_tokens.inc(event.prompt_tokens)
        m.generation_tokens.inc(event.completion_tokens)
        if event.timings.prefill_s is not None:
            m.prefill.observe(event.timings.prefill_s)
        if event.timings.decode_s is not None:
            m.decode.observe(event.timings.decode_s)

    def end(self, *, cancelled: bool) -> None:
        """Count a request that was queued: its finish reason, else cancelled or error."""
        self.done(None if self.finish is not None else "cancelled" if cancelled else "error")

    def done(self, status: str | None = None) -> None:
        """Count the request once: with ``status``, else its finish reason, else ``cancelled``."""
        if self._counted:
            return
        self._counted = True
        if status is None:
            status = self.finish.reason if self.finish is not None else "cancelled"
        self._metrics.count_request(status)
