"""Prometheus metrics, in their own registry (fresh per app, so tests and several apps never collide).

Names follow vLLM's meanings with the ``kitdev_`` prefix and base units in the name; latency
histograms use vLLM's bucket sets verbatim so its dashboards' expectations carry over. Request series
are labelled ``model`` and ``adapter`` (empty for the base model, which Prometheus stores as no label
at all). ``--metrics-compat vllm`` adds the ``vllm:`` names (label ``model_name``) where the
semantics are vLLM's. The names that KitOps tutorial dashboards query (``model_*``,
``gpu_utilization_percent``) are always there, so a copied dashboard works unchanged.

Counting: ``kitdev_requests_total{status}`` counts every inference request once by its HTTP status
(``metrics_http``), refused ones included; ``kitdev_request_success_total{finished_reason}`` counts
each request that reached the worker once by how it ended (vLLM's ``stop``/``length``/``abort``, plus
``tool_calls`` and ``error``). Running/waiting gauges are read from the worker at scrape time.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from backends.base import BackendInfo, FinishEvent, GenerationEvent, TokenEvent
from devserver.gpu import GpuCollector, GpuSampler
from devserver.server.config import ServerConfig
from devserver.server.metrics_system import CacheSizeCollector, TutorialResourceCollector

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

# key: (name after the prefix, help, buckets); exposed as kitdev_<name> and, with the flag, vllm:<name>
_HISTOGRAMS: dict[str, tuple[str, str, tuple[float, ...]]] = {
    "ttft": ("time_to_first_token_seconds", "Arrival to the first generated text.", TTFT_BUCKETS),
    "itl": ("inter_token_latency_seconds", "Gap between successive generated tokens.", ITL_BUCKETS),
    "tpot": (
        "request_time_per_output_token_seconds",
        "Per request: first to last token over the tokens after the first.",
        ITL_BUCKETS,
    ),
    "e2e": ("e2e_request_latency_seconds", "Arrival to finish.", REQUEST_LATENCY_BUCKETS),
    "queue": ("request_queue_time_seconds", "Arrival to the engine starting the request.", REQUEST_LATENCY_BUCKETS),
    "prefill": ("request_prefill_time_seconds", "Prompt evaluation, as the backend timed it.", REQUEST_LATENCY_BUCKETS),
    "decode": ("request_decode_time_seconds", "First to last token, as the backend timed it.", REQUEST_LATENCY_BUCKETS),
}  # fmt: skip
_COUNTERS: dict[str, tuple[str, str]] = {
    "prompt_tokens": ("prompt_tokens", "Prompt tokens processed."),
    "generation_tokens": ("generation_tokens", "Tokens generated."),
    "prefix_cache_queries": ("prefix_cache_queries", "Prompt tokens looked up in the prompt-prefix cache."),
    "prefix_cache_hits": ("prefix_cache_hits", "Prompt tokens found there (KV kept from an earlier request)."),
}
# Our finish reasons in vLLM's words: a request whose client left is vLLM's "abort".
_FINISHED_REASON = {"cancelled": "abort"}


class _Observe:
    """One value into several bound histograms (``kitdev_``, maybe ``vllm:``, maybe a tutorial name)."""

    __slots__ = ("_children",)

    def __init__(self, *children: Histogram) -> None:
        self._children = children

    def observe(self, value: float) -> None:
        for child in self._children:
            child.observe(value)


class _Inc:
    __slots__ = ("_children",)

    def __init__(self, *children: Counter) -> None:
        self._children = children

    def inc(self, value: float = 1.0) -> None:
        for child in self._children:
            child.inc(value)


@dataclass(frozen=True)
class RequestSeries:
    """The bound series one request writes to, for its model and adapter."""

    ttft: _Observe
    itl: _Observe
    tpot: _Observe
    e2e: _Observe
    queue: _Observe
    prefill: _Observe
    decode: _Observe
    prompt_tokens: _Inc
    generation_tokens: _Inc
    prefix_cache_queries: _Inc
    prefix_cache_hits: _Inc


class ServerMetrics:
    """Every metric family of one app, bound to its served model."""

    def __init__(
        self, config: ServerConfig, registry: CollectorRegistry | None = None, gpu: GpuSampler | None = None
    ) -> None:
        self.registry = r = registry if registry is not None else CollectorRegistry()
        self.model = config.model.id
        self._version = config.model.version or ""
        self._reference = config.model.reference or ""
        self._digest = config.model.digest or ""
        self._vllm = "vllm" in config.metrics_compat
        self.gpu = gpu if gpu is not None else GpuSampler(interval_s=config.gpu_sample_seconds)
        labels = ["model", "adapter"]
        self._histograms = {
            key: (
                Histogram(f"kitdev_{name}", doc, labels, buckets=buckets, registry=r),
                Histogram(f"vllm:{name}", doc, ["model_name"], buckets=buckets, registry=r) if self._vllm else None,
            )
            for key, (name, doc, buckets) in _HISTOGRAMS.items()
        }
        self._counters = {
            key: (
                Counter(f"kitdev_{name}", doc, labels, registry=r),
                Counter(f"vllm:{name}", doc, ["model_name"], registry=r) if self._vllm else None,
            )
            for key, (name, doc) in _COUNTERS.items()
        }
        success_doc = "Requests that reached the worker, by how they ended."
        self._success = Counter("kitdev_request_success", success_doc, [*labels, "finished_reason"], registry=r)
        self._vllm_success = (
            Counter("vllm:request_success", success_doc, ["model_name", "finished_reason"], registry=r)
            if self._vllm
            else None
        )
        self._requests = Counter(
            "kitdev_requests", "Inference requests by HTTP status, refused ones included.", ["model", "status"],
            registry=r,
        )  # fmt: skip
        tutorial = ["model_name", "version"]
        self._tutorial_requests = Counter(
            "model_requests", "Inference requests (KitOps tutorial dashboards).", tutorial, registry=r
        ).labels(self.model, self._version)
        self._tutorial_duration = Histogram(
            "model_inference_duration_seconds",
            "Arrival to finish (KitOps tutorial dashboards).",
            tutorial,
            buckets=REQUEST_LATENCY_BUCKETS,
            registry=r,
        ).labels(self.model, self._version)
        self._gauges = [
            (Gauge(f"{prefix}num_requests_{what}", doc, [label], registry=r), what)
            for prefix, label in [("kitdev_", "model")] + ([("vllm:", "model_name")] if self._vllm else [])
            for what, doc in (("running", "Requests generating now."), ("waiting", "Requests queued, not started."))
        ]
        for gauge, _ in self._gauges:
            gauge.labels(self.model).set(0)
        self._load_seconds = Gauge("kitdev_model_load_seconds", "Time the backend took to load.", ["model"], registry=r)
        self._info = Gauge(
            "kitdev_model_info",
            "The served ModelKit and engine (always 1).",
            ["model", "reference", "digest", "backend", "device"],
            registry=r,
        )
        self._model_series(config, r)
        ProcessCollector(registry=r)
        r.register(GpuCollector(self.gpu))
        r.register(TutorialResourceCollector(self.model, self._version, self.gpu))
        self._series: dict[str, RequestSeries] = {}

    def _model_series(self, config: ServerConfig, r: CollectorRegistry) -> None:
        """What fetching the ModelKit cost at start-up, and the cache's size, when the launcher said."""
        if config.pull is not None:
            pull = config.pull
            seconds = Gauge(
                "kitdev_model_pull_seconds", "Time resolving the ModelKit at start-up.", ["model"], registry=r
            )
            size = Gauge("kitdev_model_pull_bytes", "Bytes downloaded at start-up.", ["model"], registry=r)
            hits = Counter("kitdev_cache_hits", "Blobs found in the cache.", ["model"], registry=r)
            misses = Counter("kitdev_cache_misses", "Blobs downloaded.", ["model"], registry=r)
            seconds.labels(self.model).set(pull.seconds)
            size.labels(self.model).set(pull.bytes)
            hits.labels(self.model).inc(pull.cache_hits)
            misses.labels(self.model).inc(pull.cache_misses)
        if config.cache_dir is not None:
            r.register(CacheSizeCollector(config.cache_dir))

    def start(self) -> None:
        """Begin background sampling (the app's lifespan calls this)."""
        self.gpu.start()

    def close(self) -> None:
        self.gpu.stop()

    def series(self, adapter: str | None) -> RequestSeries:
        """The bound series for requests served by ``adapter`` (None: the base model), made once."""
        key = adapter or ""
        found = self._series.get(key)
        if found is None:
            found = self._series[key] = self._bind(key)
        return found

    def _bind(self, adapter: str) -> RequestSeries:
        def observe(key: str) -> _Observe:
            own, vllm = self._histograms[key]
            children = [own.labels(self.model, adapter)] + ([vllm.labels(self.model)] if vllm else [])
            if key == "e2e":
                children.append(self._tutorial_duration)
            return _Observe(*children)

        def inc(key: str) -> _Inc:
            own, vllm = self._counters[key]
            return _Inc(own.labels(self.model, adapter), *([vllm.labels(self.model)] if vllm else []))

        return RequestSeries(
            **{key: observe(key) for key in _HISTOGRAMS},  # type: ignore[arg-type]
            **{key: inc(key) for key in _COUNTERS},
        )

    def count_finished(self, adapter: str | None, reason: str) -> None:
        reason = _FINISHED_REASON.get(reason, reason)
        self._success.labels(self.model, adapter or "", reason).inc()
        if self._vllm_success is not None:
            self._vllm_success.labels(self.model, reason).inc()

    def count_http(self, status: int) -> None:
        """One inference request answered with ``status`` (called as its response starts)."""
        self._requests.labels(self.model, str(status)).inc()
        self._tutorial_requests.inc()

    def watch_worker(self, running: Callable[[], int], waiting: Callable[[], int]) -> None:
        """Read the gauges from the worker at scrape time (cheaper than tracking every change)."""
        for gauge, what in self._gauges:
            gauge.labels(self.model).set_function(running if what == "running" else waiting)

    def model_loaded(self, info: BackendInfo, seconds: float) -> None:
        self._load_seconds.labels(self.model).set(seconds)
        self._info.labels(self.model, self._reference, self._digest, info.name, info.device).set(1)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _Tokens:
    """When one generation's first and latest tokens arrived (perf_counter)."""

    __slots__ = ("first", "last")

    def __init__(self) -> None:
        self.first: float | None = None
        self.last: float | None = None


class RequestTracker:
    """Times one request from arrival through the events of each of its generations (``n`` choices are
    ``n`` generations, each timed and counted like a vLLM child request) and counts how each ended,
    once. A request refused before it was queued is counted by its HTTP status only."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics
        self.arrived = time.perf_counter()
        self.adapter: str | None = None  # the LoRA adapter serving it; set before the request is queued
        self._watched = 0
        self._finishes: list[FinishEvent] = []
        self._counted = False

    def started(self, at: float) -> None:
        """The engine started one generation at ``at`` (perf_counter); called on a backend or worker thread."""
        self._metrics.series(self.adapter).queue.observe(max(0.0, at - self.arrived))

    async def watch(self, events: AsyncIterator[GenerationEvent]) -> AsyncIterator[GenerationEvent]:
        """Pass one generation's events through, timing them."""
        self._watched += 1
        tokens = _Tokens()
        async for event in events:
            self._observe(tokens, event)
            yield event

    def _observe(self, tokens: _Tokens, event: GenerationEvent) -> None:
        now = time.perf_counter()
        series = self._metrics.series(self.adapter)
        if isinstance(event, TokenEvent):
            self._token(series, tokens, now, max(1, len(event.token_ids)))
            return
        self._finishes.append(event)
        series.e2e.observe(now - self.arrived)
        series.prompt_tokens.inc(event.prompt_tokens)
        series.generation_tokens.inc(event.completion_tokens)
        series.prefix_cache_queries.inc(event.prompt_tokens)
        series.prefix_cache_hits.inc(event.cached_tokens)
        if event.completion_tokens > 1 and tokens.first is not None and tokens.last is not None:
            series.tpot.observe((tokens.last - tokens.first) / (event.completion_tokens - 1))
        if event.timings.prefill_s is not None:
            series.prefill.observe(event.timings.prefill_s)
        if event.timings.decode_s is not None:
            series.decode.observe(event.timings.decode_s)

    def _token(self, series: RequestSeries, tokens: _Tokens, now: float, count: int) -> None:
        """One inter-token sample per token after the first, so the ITL count is tokens - 1. Tokens that
        arrive together (text held back until a character or a stop string is decided) share the gap
        before them; the first event's extra tokens arrived with the first, 0 s after it."""
        if tokens.last is None:
            series.ttft.observe(now - self.arrived)
            tokens.first = now
            gaps = [0.0] * (count - 1)
        else:
            gaps = [(now - tokens.last) / count] * count
        for gap in gaps:
            series.itl.observe(gap)
        tokens.last = now

    def end(self, *, cancelled: bool, tool_calls: int = 0) -> None:
        """Count each generation once: its finish reason, else ``abort`` (client left) or ``error``.

        ``tool_calls``: how many finished with tool calls, which only the API layer sees (the backend
        says ``stop``)."""
        if self._counted:
            return
        self._counted = True
        reasons: list[str] = [f.reason for f in self._finishes]
        for _ in range(tool_calls):
            if "stop" in reasons:
                reasons[reasons.index("stop")] = "tool_calls"
        reasons += ["cancelled" if cancelled else "error"] * max(0, self._watched - len(self._finishes))
        for reason in reasons:
            self._metrics.count_finished(self.adapter, reason)
