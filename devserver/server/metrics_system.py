"""Figures read at scrape time rather than tracked: the process's memory and the cache's size on disk.

Both are cheaper to look up when Prometheus asks than to keep current, so they are ``Collector``s.
The cache walk is remembered for ``ttl_s`` so a 1 s scrape interval does not stat every blob each
second.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from devserver.gpu import GpuSampler


def resident_bytes() -> int:
    """The process's resident memory now (Linux ``/proc``); elsewhere its peak, the best the stdlib has."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, others KiB


def disk_usage(root: Path) -> int:
    """Bytes allocated under ``root``, each hard-linked file once (unpacked files may link to blobs)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    stack = [root]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:  # removed while we walked: the next scrape sees the new state
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                    continue
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512 if hasattr(st, "st_blocks") else st.st_size
    return total


class CacheSizeCollector(Collector):
    """``kitdev_cache_size_bytes``: the ModelKit cache on disk, re-walked at most every ``ttl_s``."""

    def __init__(self, root: Path, ttl_s: float = 10.0) -> None:
        self._root = root
        self._ttl_s = ttl_s
        self._lock = threading.Lock()
        self._at = -float("inf")
        self._bytes = 0

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily("kitdev_cache_size_bytes", "")]

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            if time.monotonic() - self._at > self._ttl_s:
                self._bytes = disk_usage(self._root)
                self._at = time.monotonic()
            size = self._bytes
        yield GaugeMetricFamily(
            "kitdev_cache_size_bytes", "Disk used by the ModelKit cache (blobs, unpacked files, downloads).", size
        )


class TutorialResourceCollector(Collector):
    """The gauges KitOps tutorial dashboards read: ``model_memory_usage_bytes`` (this server's resident
    memory) and ``gpu_utilization_percent`` (mean over the GPUs in use; absent without one)."""

    def __init__(self, model_name: str, version: str, gpu: GpuSampler) -> None:
        self._labels = [model_name, version]
        self._gpu = gpu

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily("model_memory_usage_bytes", "")]

    def collect(self) -> Iterator[Metric]:
        memory = GaugeMetricFamily(
            "model_memory_usage_bytes", "Resident memory of the server process.", labels=["model_name", "version"]
        )
        memory.add_metric(self._labels, resident_bytes())
        yield memory
        utilization = self._gpu.latest.in_use_utilization()
        if utilization is not None:
            gpu = GaugeMetricFamily(
                "gpu_utilization_percent", "Mean utilisation of the GPUs in use.", labels=["model_name", "version"]
            )
            gpu.add_metric(self._labels, utilization)
            yield gpu
