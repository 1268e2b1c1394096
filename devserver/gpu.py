"""GPU figures for Prometheus, sampled on a background thread so a scrape never waits on the driver.

NVML calls can take tens of milliseconds (and far longer on a wedged driver); a scrape must not. A
``GpuSampler`` thread reads every device once per interval and swaps in an immutable ``Snapshot``;
``GpuCollector`` only formats the latest one. Without an NVIDIA GPU (no ``nvidia-ml-py``, no driver,
no device) the thread stops after its first try and every GPU series is *absent*, not zero, so a
dashboard shows "no data" instead of a GPU that idles at 0 %.

On Apple silicon there is no NVML and the GPU shares the process's memory: the sampler reports the
process's physical footprint (``proc_pid_rusage``'s ``ri_phys_footprint``, what Activity Monitor
shows as "Memory", Metal buffers included) as ``kitdev_unified_memory_used_bytes``. That path is
written from Apple's ``libproc.h`` and has not been run on a Mac in this repository's tests.

This module imports nothing of the server (only ``prometheus_client`` and, when present,
``nvidia-ml-py``), so ``python -m devserver.gpu`` watches the GPUs of any machine by itself.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuReading:
    """One device at one moment; ``None`` where the driver does not report the figure."""

    index: int
    name: str
    utilization_percent: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    temperature_celsius: float | None = None
    power_watts: float | None = None
    process_memory_bytes: int | None = None  # this process's memory there; None when it holds none


@dataclass(frozen=True)
class Snapshot:
    gpus: tuple[GpuReading, ...] = ()
    unified_memory_bytes: int | None = None  # Apple silicon: the process's physical footprint
    taken: float = 0.0  # time.time() of the reading

    def in_use_utilization(self) -> float | None:
        """Mean utilisation of the GPUs this process holds memory on; of all of them when NVML cannot
        tell (in a container NVML lists host PIDs, so the process never finds itself)."""
        mine = [g for g in self.gpus if g.process_memory_bytes and g.utilization_percent is not None]
        chosen = mine or [g for g in self.gpus if g.utilization_percent is not None]
        if not chosen:
            return None
        return sum(g.utilization_percent or 0.0 for g in chosen) / len(chosen)


class Reader:
    """A source of snapshots: ``open`` says whether it has anything to read here at all."""

    def open(self) -> bool:
        return False

    def read(self) -> Snapshot:
        return Snapshot()

    def close(self) -> None:
        """Release the driver; idempotent."""


class NvmlReader(Reader):
    """Every NVIDIA device through ``nvidia-ml-py`` (the optional ``gpu`` extra)."""

    def __init__(self) -> None:
        self._nvml: Any = None
        self._handles: list[tuple[int, str, Any]] = []

    def open(self) -> bool:
        try:
            import pynvml
        except ImportError:
            log.debug("nvidia-ml-py is not installed: no GPU metrics")
            return False
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            log.debug("NVML unavailable (%s): no GPU metrics", exc)
            return False
        self._nvml = pynvml
        try:
            for index in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                name = pynvml.nvmlDeviceGetName(handle)
                self._handles.append((index, name.decode() if isinstance(name, bytes) else str(name), handle))
        except pynvml.NVMLError as exc:
            log.warning("NVML could not list the GPUs: %s", exc)
            self.close()
            return False
        if not self._handles:
            self.close()
        return bool(self._handles)

    def read(self) -> Snapshot:
        nvml = self._nvml
        pid = os.getpid()
        readings = []
        for index, name, handle in self._handles:

            def get(fn: Callable[[], Any]) -> Any:
                try:
                    return fn()
                except nvml.NVMLError:  # NotSupported on some boards (power on laptops, temperature on vGPU)
                    return None

            utilization = get(lambda h=handle: nvml.nvmlDeviceGetUtilizationRates(h))
            memory = get(lambda h=handle: nvml.nvmlDeviceGetMemoryInfo(h))
            temperature = get(lambda h=handle: nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU))
            power_mw = get(lambda h=handle: nvml.nvmlDeviceGetPowerUsage(h))
            processes = get(lambda h=handle: nvml.nvmlDeviceGetComputeRunningProcesses(h)) or []
            mine = [p.usedGpuMemory or 0 for p in processes if p.pid == pid]
            readings.append(
                GpuReading(
                    index=index,
                    name=name,
                    utilization_percent=float(utilization.gpu) if utilization is not None else None,
                    memory_used_bytes=int(memory.used) if memory is not None else None,
                    memory_total_bytes=int(memory.total) if memory is not None else None,
                    temperature_celsius=float(temperature) if temperature is not None else None,
                    power_watts=power_mw / 1000.0 if power_mw is not None else None,
                    process_memory_bytes=sum(mine) if mine else None,
                )
            )
        return Snapshot(gpus=tuple(readings), taken=time.time())

    def close(self) -> None:
        if self._nvml is not None:
            nvml, self._nvml = self._nvml, None
            self._handles = []
            with contextlib.suppress(nvml.NVMLError):
                nvml.nvmlShutdown()


# fmt: off
_RUSAGE_V2_FIELDS = (
    "user_time", "system_time", "pkg_idle_wkups", "interrupt_wkups", "pageins", "wired_size", "resident_size",
    "phys_footprint", "proc_start_abstime", "proc_exit_abstime", "child_user_time", "child_system_time",
    "child_pkg_idle_wkups", "child_interrupt_wkups", "child_pageins", "child_elapsed_abstime", "diskio_bytesread",
    "diskio_byteswritten",
)
# fmt: on


class _RusageInfoV2(ctypes.Structure):
    """``struct rusage_info_v2`` from macOS ``<sys/resource.h>``: a uuid, then 18 ``uint64_t``."""

    _fields_ = [("ri_uuid", ctypes.c_uint8 * 16), *[(f"ri_{name}", ctypes.c_uint64) for name in _RUSAGE_V2_FIELDS]]


class AppleUnifiedMemoryReader(Reader):
    """Apple silicon: the process's physical footprint, which counts the Metal buffers that the GPU
    uses, since CPU and GPU share one memory."""

    _RUSAGE_INFO_V2 = 2

    def __init__(self) -> None:
        self._libproc: Any = None

    def open(self) -> bool:
        if sys.platform != "darwin" or platform.machine() != "arm64":
            return False
        try:
            self._libproc = ctypes.CDLL("/usr/lib/libproc.dylib")
        except OSError:
            return False
        return self.read().unified_memory_bytes is not None

    def read(self) -> Snapshot:
        info = _RusageInfoV2()
        if self._libproc.proc_pid_rusage(os.getpid(), self._RUSAGE_INFO_V2, ctypes.byref(info)) != 0:
            return Snapshot(taken=time.time())
        return Snapshot(unified_memory_bytes=int(info.ri_phys_footprint), taken=time.time())


def default_reader() -> Reader:
    """NVML where an NVIDIA driver may exist; the unified-memory reader on Apple silicon."""
    return AppleUnifiedMemoryReader() if sys.platform == "darwin" else NvmlReader()


class GpuSampler:
    """Reads ``reader`` every ``interval_s`` on a daemon thread; ``latest`` is always ready to format."""

    def __init__(self, reader: Reader | None = None, interval_s: float = 1.0) -> None:
        self._reader = reader if reader is not None else default_reader()
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.latest = Snapshot()  # replaced whole, never mutated: readers need no lock

    def start(self) -> None:
        """Open the driver and sample in the background (opening can block; the caller must not)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="kitdev-gpu-sampler", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        if not self._reader.open():
            return
        try:
            while True:
                try:
                    self.latest = self._reader.read()
                except Exception:  # a driver hiccup costs one sample, never the thread
                    log.warning("GPU sample failed", exc_info=True)
                if self._stop.wait(self._interval_s):
                    return
        finally:
            self._reader.close()
            self.latest = Snapshot()


_PER_GPU: tuple[tuple[str, str, str], ...] = (
    ("utilization_percent", "kitdev_gpu_utilization_percent", "Percent of the last sample period a kernel ran."),
    ("memory_used_bytes", "kitdev_gpu_memory_used_bytes", "Device memory in use, by every process."),
    ("memory_total_bytes", "kitdev_gpu_memory_total_bytes", "Device memory installed."),
    ("temperature_celsius", "kitdev_gpu_temperature_celsius", "Core temperature."),
    ("power_watts", "kitdev_gpu_power_watts", "Board power draw."),
    ("process_memory_bytes", "kitdev_gpu_process_memory_bytes", "Device memory this server process holds."),
)


class GpuCollector(Collector):
    """Formats the sampler's latest snapshot; yields nothing at all when there is no GPU."""

    def __init__(self, sampler: GpuSampler) -> None:
        self._sampler = sampler

    def describe(self) -> list[Metric]:
        return []  # the series come and go with the hardware; nothing to pre-register

    def collect(self) -> Iterator[Metric]:
        snapshot = self._sampler.latest
        for attribute, name, doc in _PER_GPU:
            family = GaugeMetricFamily(name, doc, labels=["gpu", "name"])
            for gpu in snapshot.gpus:
                value = getattr(gpu, attribute)
                if value is not None:
                    family.add_metric([str(gpu.index), gpu.name], value)
            if family.samples:
                yield family
        if snapshot.unified_memory_bytes is not None:
            yield GaugeMetricFamily(
                "kitdev_unified_memory_used_bytes",
                "Apple silicon: this process's physical footprint in the memory CPU and GPU share.",
                value=snapshot.unified_memory_bytes,
            )


def main(argv: list[str] | None = None) -> int:
    """Print the GPU series once per interval, as ``/metrics`` would show them."""
    from prometheus_client import CollectorRegistry, generate_latest

    parser = argparse.ArgumentParser(prog="python -m devserver.gpu", description=main.__doc__)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    sampler = GpuSampler(interval_s=args.interval)
    registry = CollectorRegistry()
    registry.register(GpuCollector(sampler))
    sampler.start()
    try:
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            time.sleep(args.interval)
            lines = [line for line in generate_latest(registry).decode().splitlines() if not line.startswith("#")]
            print("\n".join(lines) or "(no GPU series: no NVIDIA GPU or driver here)", flush=True)
    finally:
        sampler.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
