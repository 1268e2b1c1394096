"""Cold-pull throughput of kit-dev against curl, from the same loopback registry, to the same disk.

Builds a ModelKit of random weights (default 1 GiB in 4 layers), pushes it to a fresh
``docker-registry`` on loopback, then alternates, ``--rounds`` times each:

* ``kit-dev pull`` into an empty cache (a subprocess; its peak RSS from ``wait4``);
* ``curl --parallel`` fetching the same blobs (config and layers) with the same number of
  transfers in flight (``--concurrency``), to files in the same temporary directory tree.

Prints the load average it started under, each run, the median of the paired per-round ratios,
and kit-dev's peak RSS. The target: ratio >= 0.8 and RSS < 200 MiB whatever the blob size
(downloads stream in 1 MiB chunks). The defaults are the acceptance run: 5 transfers in flight
(kit's and kit-dev's default ``--concurrency``) and 5 rounds. The machine should be otherwise idle:
on two cores, anything else running shows up in the ratio.

    .venv/bin/python bench/pull.py [--gib 1] [--layers 4] [--concurrency 5] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devserver.modelkit.pack import pack_modelkit  # noqa: E402
from devserver.oci.options import DEFAULT_CONCURRENCY  # noqa: E402
from devserver.oci.push import push_modelkit  # noqa: E402
from devserver.oci.reference import parse_reference  # noqa: E402
from devserver.oci.store import LocalStore  # noqa: E402
from tests.support.registry import RegistryProcess  # noqa: E402


def make_kit(directory: Path, total: int, layers: int) -> None:
    """``layers`` weight files of random bytes (one model, the rest parts), written 16 MiB at a time."""
    directory.mkdir(parents=True)
    size = total // layers
    names = [f"w{i}.bin" for i in range(layers)]
    for name in names:
        with (directory / name).open("wb") as f:
            for _ in range(size // (16 << 20)):
                f.write(os.urandom(16 << 20))
    parts = "".join(f"    - name: p{i}\n      path: {n}\n" for i, n in enumerate(names[1:]))
    (directory / "Kitfile").write_text(
        f"manifestVersion: 1.0.0\npackage:\n  name: bench\nmodel:\n  name: bench\n  path: {names[0]}\n  parts:\n{parts}"
    )


def run_kitdev(reference: str, cache: Path, concurrency: int) -> tuple[float, int]:
    command = [sys.executable, "-m", "devserver.cli", "pull", reference, "--cache-dir", str(cache),
               "--concurrency", str(concurrency)]  # fmt: skip
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    elapsed = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"kit-dev pull failed: {child.stderr.read().decode() if child.stderr else status}")
    return elapsed, usage.ru_maxrss * 1024


def run_curl(registry_url: str, repository: str, digests: list[str], target: Path, concurrency: int) -> float:
    target.mkdir(parents=True)
    command = [
        "curl",
        "--silent",
        "--show-error",
        "--no-progress-meter",
        "--fail",
        "--parallel",
        "--parallel-max",
        str(concurrency),
    ]
    for digest in digests:
        command += ["-o", str(target / digest[7:]), f"{registry_url}/v2/{repository}/blobs/{digest}"]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="kit-dev-bench-pull-"))
    registry = RegistryProcess(root=work / "registry").start()
    try:
        make_kit(work / "kit", int(args.gib * (1 << 30)), args.layers)
        source = LocalStore(work / "source")
        result = pack_modelkit(work / "kit", source)
        shutil.rmtree(work / "kit")
        reference = f"{registry.host}/bench/weights:1"
        push_modelkit(parse_reference(reference), source, source=result.reference)
        blobs = [result.config_descriptor, *result.layers]
        total = sum(d.size for d in blobs)
        shutil.rmtree(work / "source")
        print(f"ModelKit: {total / (1 << 30):.2f} GiB in {len(result.layers)} layers; "
              f"{args.concurrency} transfers in flight; loopback docker-registry; {args.rounds} rounds; "
              f"load average {load:.2f} at the start")  # fmt: skip
        kitdev_times: list[float] = []
        curl_times: list[float] = []
        peak = 0
        for round_ in range(args.rounds):
            elapsed, rss = run_kitdev(reference, work / f"cache-{round_}", args.concurrency)
            shutil.rmtree(work / f"cache-{round_}")
            kitdev_times.append(elapsed)
            peak = max(peak, rss)
            rate = total / elapsed / 1e6
            print(f"  kit-dev pull  {elapsed:6.2f} s  {rate:7.1f} MB/s  peak RSS {rss / (1 << 20):.0f} MiB")
            elapsed = run_curl(registry.url, "bench/weights", [d.digest for d in blobs], work / f"curl-{round_}",
                               args.concurrency)  # fmt: skip
            shutil.rmtree(work / f"curl-{round_}")
            curl_times.append(elapsed)
            print(f"  curl          {elapsed:6.2f} s  {total / elapsed / 1e6:7.1f} MB/s")
        # each round pairs a kit-dev pull with the curl run right after it, under the same machine load
        ratio = statistics.median(c / k for k, c in zip(kitdev_times, curl_times, strict=True))
        summary = {
            "bytes": total,
            "kitdev_mb_s_median": round(total / statistics.median(kitdev_times) / 1e6, 1),
            "curl_mb_s_median": round(total / statistics.median(curl_times) / 1e6, 1),
            "ratio_median_of_pairs": round(ratio, 2),
            "kitdev_peak_rss_mib": round(peak / (1 << 20)),
            "load_average_at_start": round(load, 2),
        }
        print(f"throughput ratio kit-dev/curl (median of paired rounds): {ratio:.2f} (target >= 0.8); "
              f"kit-dev peak RSS {peak / (1 << 20):.0f} MiB (target < 200)")  # fmt: skip
        print(json.dumps(summary))
    finally:
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
