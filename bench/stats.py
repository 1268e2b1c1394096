"""The vLLM serving-benchmark vocabulary, computed from client-side timestamps.

Per request (``vllm bench serve`` definitions): TTFT = send → first content chunk; TPOT = (last chunk −
first chunk) / (output tokens − 1); ITL = every gap between successive chunks. Per concurrency level:
output tokens/s and requests/s over the level's wall time (first send → last byte), and median, p99
and max of TTFT, TPOT and ITL. A streamed chunk is counted as one token: every server here sends one
chunk per token for plain text, and all of them produce the same greedy tokens for the same prompts.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class RequestTiming:
    sent: float  # perf_counter when the request was sent
    chunks: tuple[float, ...]  # perf_counter of every content chunk
    text: str = ""  # the completion, to check that every peer answered the same

    @property
    def tokens(self) -> int:
        return len(self.chunks)

    @property
    def ttft(self) -> float:
        return self.chunks[0] - self.sent

    @property
    def tpot(self) -> float | None:
        return (self.chunks[-1] - self.chunks[0]) / (self.tokens - 1) if self.tokens > 1 else None

    @property
    def itls(self) -> list[float]:
        return [b - a for a, b in zip(self.chunks, self.chunks[1:], strict=False)]


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), ``q`` in 0–100."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Spread:
    median: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(statistics.median(values), percentile(values, 99), max(values))


@dataclass(frozen=True)
class LevelResult:
    """One peer at one concurrency level in one round."""

    requests: tuple[RequestTiming, ...]
    wall_s: float

    @property
    def output_tps(self) -> float:
        return sum(r.tokens for r in self.requests) / self.wall_s

    @property
    def request_rate(self) -> float:
        return len(self.requests) / self.wall_s

    def ttft(self) -> Spread:
        return Spread.of([r.ttft for r in self.requests])

    def tpot(self) -> Spread:
        return Spread.of([t for r in self.requests if (t := r.tpot) is not None])

    def itl(self) -> Spread:
        return Spread.of([gap for r in self.requests for gap in r.itls])


def merge(results: Sequence[LevelResult]) -> LevelResult:
    """All rounds of one peer and level as one sample (latency spreads); throughput sums the walls."""
    return LevelResult(tuple(r for result in results for r in result.requests), sum(r.wall_s for r in results))


def paired_ratio(ours: Sequence[float], theirs: Sequence[float]) -> float:
    """Median of per-round ratios: each round's pair shared the machine's load at that moment."""
    return statistics.median(a / b for a, b in zip(ours, theirs, strict=True))
