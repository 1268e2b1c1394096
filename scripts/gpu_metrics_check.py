"""On an NVIDIA machine: show the GPU sampler's gauges moving while torch works the GPU.

Imports only the sampler (``devserver.gpu``), ``nvidia-ml-py``, ``prometheus-client`` and ``torch``:
no server, no model. Idle for a few seconds, then fp16 matmuls on ``cuda:0`` holding ~2 GiB, then
idle again, printing each second what ``/metrics`` would show. Exits 1 when the figures did not
move (utilisation up under load, memory up by the tensors this process allocated).

    .venv/bin/python scripts/gpu_metrics_check.py [--seconds 6]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

import pynvml
import torch
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from devserver.gpu import GpuCollector, GpuSampler, NvmlReader


def gauges(registry: CollectorRegistry) -> dict[str, float]:
    """GPU 0's figures (and this process's share) as the exposition shows them."""
    text = generate_latest(registry).decode()
    return {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.labels.get("gpu") == "0"
    }


def work(stop: threading.Event) -> None:
    a = torch.randn(8192, 8192, device="cuda:0", dtype=torch.float16)
    b = torch.randn(8192, 8192, device="cuda:0", dtype=torch.float16)
    keep = [torch.empty(2**30 // 2, device="cuda:0", dtype=torch.float16) for _ in range(2)]  # ~2 GiB held
    while not stop.is_set():
        for _ in range(20):
            a = (a @ b).clamp_(-1, 1)
        torch.cuda.synchronize()
    del keep


def phase(name: str, registry: CollectorRegistry, seconds: float) -> list[dict[str, float]]:
    seen = []
    for _ in range(int(seconds)):
        time.sleep(1.0)
        g = gauges(registry)
        seen.append(g)
        print(
            f"{name:5} util {g.get('kitdev_gpu_utilization_percent', float('nan')):5.1f} %  "
            f"used {g.get('kitdev_gpu_memory_used_bytes', 0) / 2**30:6.2f} GiB / "
            f"{g.get('kitdev_gpu_memory_total_bytes', 0) / 2**30:6.2f}  "
            f"this process {g.get('kitdev_gpu_process_memory_bytes', 0) / 2**30:5.2f} GiB  "
            f"{g.get('kitdev_gpu_temperature_celsius', float('nan')):4.0f} °C  "
            f"{g.get('kitdev_gpu_power_watts', float('nan')):6.1f} W",
            flush=True,
        )
    return seen


def main() -> int:
    parser = argparse.ArgumentParser(description="GPU sampler gauges under a torch load")
    parser.add_argument("--seconds", type=float, default=6.0, help="per phase: idle, load, idle")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to show", file=sys.stderr)
        return 1
    pynvml.nvmlInit()
    print(f"driver {pynvml.nvmlSystemGetDriverVersion()}, {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    pynvml.nvmlShutdown()
    sampler = GpuSampler(NvmlReader(), interval_s=0.5)
    registry = CollectorRegistry()
    registry.register(GpuCollector(sampler))
    sampler.start()
    try:
        torch.zeros(1, device="cuda:0")  # a CUDA context first, so "idle" already counts it
        idle = phase("idle", registry, args.seconds)
        stop = threading.Event()
        worker = threading.Thread(target=work, args=(stop,), daemon=True)
        worker.start()
        busy = phase("load", registry, args.seconds)
        stop.set()
        worker.join(30)
        torch.cuda.empty_cache()
        phase("after", registry, args.seconds)
    finally:
        sampler.stop()
    peak = max(g.get("kitdev_gpu_utilization_percent", 0) for g in busy)
    rest = min(g.get("kitdev_gpu_utilization_percent", 100) for g in idle)
    # This process's share when NVML can see our PID (not in every container), else the device total.
    key = "kitdev_gpu_process_memory_bytes" if any("kitdev_gpu_process_memory_bytes" in g for g in busy) else (
        "kitdev_gpu_memory_used_bytes"
    )  # fmt: skip
    grew = max(g.get(key, 0) for g in busy) - max(g.get(key, 0) for g in idle)
    moved = peak > rest + 20 and grew > 2**30
    print(f"utilisation {rest:.0f} % idle → {peak:.0f} % under load; {key} +{grew / 2**30:.2f} GiB: "
          f"{'the gauges moved' if moved else 'the gauges did NOT move'}")  # fmt: skip
    return 0 if moved else 1


if __name__ == "__main__":
    sys.exit(main())
