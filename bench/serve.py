"""Streaming speed of kit-dev against its peers, on the same GGUF, threads, prompt and max_tokens.

Peers, measured in one run, interleaved round by round (the machine is shared and noisy, so only
ratios within a run mean anything):
  a) in-process llama-cpp-python ``create_chat_completion(stream=True)``
  b) kit-dev streaming over HTTP (``kit-dev start DIR --foreground``)
  c) llama-cpp-python's own server (``python -m llama_cpp.server``) streaming over HTTP

For each: decode tokens/s (streamed chunks after the first, over the time from the first to the last)
and time to first token (send → first content chunk). Prints medians and the paired ratios b/a, b/c.

    .venv/bin/python bench/serve.py [--rounds 5] [--max-tokens 96] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.link_smollm2 import smollm2_gguf  # noqa: E402
from tests.support.ports import free_port, wait_http  # noqa: E402

MESSAGES = [{"role": "user", "content": "Write a short story about a lighthouse keeper and a storm."}]


@dataclass(frozen=True)
class Sample:
    ttft_s: float
    tokens: int
    decode_tps: float


def measure(chunks: Iterator[str], started: float) -> Sample:
    """Time the content chunks of one stream; ``started`` is when the request was sent."""
    first = last = None
    count = 0
    for text in chunks:
        if not text:
            continue
        now = time.perf_counter()
        first = first or now
        last = now
        count += 1
    if first is None or last is None or count < 2:
        raise RuntimeError("the stream produced fewer than two content chunks")
    return Sample(ttft_s=first - started, tokens=count, decode_tps=(count - 1) / (last - first))


def sse_contents(url: str, body: dict) -> Iterator[str]:
    with httpx.stream("POST", url, json=body, timeout=120) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for choice in json.loads(line[6:]).get("choices", []):
                yield choice.get("delta", {}).get("content") or ""


def http_runner(base_url: str, model: str, max_tokens: int) -> Callable[[], Sample]:
    body = {"model": model, "messages": MESSAGES, "stream": True, "temperature": 0, "max_tokens": max_tokens}

    def run() -> Sample:
        started = time.perf_counter()
        return measure(sse_contents(f"{base_url}/v1/chat/completions", body), started)

    return run


def inprocess_runner(gguf: Path, threads: int, ctx: int, max_tokens: int) -> Callable[[], Sample]:
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=ctx, n_threads=threads, verbose=False)

    def run() -> Sample:
        llm.reset()
        started = time.perf_counter()
        stream = llm.create_chat_completion(MESSAGES, temperature=0, max_tokens=max_tokens, stream=True)
        return measure((c["choices"][0]["delta"].get("content") or "" for c in stream), started)

    return run


def start_process(argv: list[str], health_url: str, log_path: Path) -> subprocess.Popen[bytes]:
    log = log_path.open("wb")
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_http(health_url, timeout=120)
    except TimeoutError:
        process.kill()
        raise RuntimeError(f"{argv[0]} did not start; see {log_path}") from None
    return process


def kit_dir(gguf: Path, ctx: int, workdir: Path) -> Path:
    """A local ModelKit directory serving the same GGUF with the same context size."""
    directory = workdir / "kit"
    directory.mkdir()
    (directory / gguf.name).symlink_to(gguf)  # served in place, never packed: a link is enough
    (directory / "Kitfile").write_text(
        f"manifestVersion: 1.0.0\nmodel:\n  name: bench\n  path: {gguf.name}\n  parameters:\n    ctx_size: {ctx}\n"
    )
    return directory


def median_ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=2048)
    args = parser.parse_args()

    gguf = smollm2_gguf()
    python = sys.executable
    with tempfile.TemporaryDirectory(prefix="kit-dev-bench-") as tmp:
        work = Path(tmp)
        kit_port, peer_port = free_port(), free_port()
        kit = start_process(
            [python, "-m", "devserver.cli", "start", str(kit_dir(gguf, args.ctx, work)), "--foreground",
             "--port", str(kit_port), "--threads", str(args.threads), "--cache-dir", str(work / "cache")],
            f"http://127.0.0.1:{kit_port}/health", work / "kit-dev.log",
        )  # fmt: skip
        peer = start_process(
            [python, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
             "--port", str(peer_port), "--n_threads", str(args.threads), "--n_ctx", str(args.ctx)],
            f"http://127.0.0.1:{peer_port}/v1/models", work / "llama_cpp.server.log",
        )  # fmt: skip
        try:
            runners = {
                "a in-process llama-cpp-python": inprocess_runner(gguf, args.threads, args.ctx, args.max_tokens),
                "b kit-dev (HTTP)": http_runner(f"http://127.0.0.1:{kit_port}", "bench", args.max_tokens),
                "c llama_cpp.server (HTTP)": http_runner(f"http://127.0.0.1:{peer_port}", "x", args.max_tokens),
            }
            for run in runners.values():  # warm-up: load pages, fill caches
                run()
            results: dict[str, list[Sample]] = {name: [] for name in runners}
            for _ in range(args.rounds):
                for name, run in runners.items():
                    results[name].append(run())
        finally:
            for process in (kit, peer):
                process.terminate()
                process.wait(timeout=20)

    print(f"SmolLM2-135M Q4_1, {args.threads} threads, ctx {args.ctx}, greedy, max_tokens {args.max_tokens}, "
          f"{args.rounds} interleaved rounds")  # fmt: skip
    print(f"{'peer':34} {'decode tok/s':>13} {'TTFT ms':>9} {'tokens':>7}")
    for name, samples in results.items():
        tps = statistics.median(s.decode_tps for s in samples)
        ttft = statistics.median(s.ttft_s for s in samples) * 1000
        print(f"{name:34} {tps:13.1f} {ttft:9.1f} {samples[0].tokens:7d}")
    a, b, c = (results[name] for name in runners)
    ratios = {
        "b/a decode tok/s": median_ratio([s.decode_tps for s in b], [s.decode_tps for s in a]),
        "b/c decode tok/s": median_ratio([s.decode_tps for s in b], [s.decode_tps for s in c]),
        "b/c TTFT (lower is better)": median_ratio([s.ttft_s for s in b], [s.ttft_s for s in c]),
    }
    for label, value in ratios.items():
        print(f"ratio {label:28} (median of paired rounds): {value:.3f}")


if __name__ == "__main__":
    main()
