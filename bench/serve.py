"""Serving speed of kit-dev against its peers under concurrency, in vLLM's benchmark vocabulary.

Peers, all on the same GGUF, threads, per-request context and prompts, greedy, each with its own
prompt-prefix caching on and its own flash-attention default, as it ships:
  kit-dev            ``kit-dev start DIR --foreground --parallel 4`` (continuous batching; flash
                     attention ``auto``, llama.cpp's default: on for the CPU)
  llama_cpp.server   ``python -m llama_cpp.server`` (one request at a time behind a lock; with
                     ``--interrupt_requests false``, else a new request ends the running stream;
                     flash attention off, llama-cpp-python's default)
  llama-server       llama.cpp's C++ server ``-np 4`` (``make llama-server``), run on the same ggml
                     libraries as llama-cpp-python (flash attention ``auto``, its default)
  in-process         ``Llama.create_chat_completion(stream=True)`` in this process (concurrency 1;
                     flash attention off, ``Llama()``'s default)
  in-process+fa      the same with ``Llama(flash_attn=True)``: the same kernels as kit-dev, so the
                     ratio to it is the serving layer's alone (and its greedy texts equal kit-dev's)

A warm-up pass sends every question once to every peer, four at a time, so that every timed round
finds the prompts seen before (as an eval or a notebook sends the same prompts again) and concurrency-1
and concurrency-4 first tokens compare like with like; kit-dev's slowest first token of that cold
pass is printed too. Then for each concurrency level (1, 2, 4, 8) every peer serves ``2 × level``
streamed requests with at most ``level`` in flight; rounds interleave the peers (the machine is shared
and noisy, so only ratios within a run mean anything, and each ratio is the median of per-round
pairs). Printed per level: output tokens/s, requests/s, TTFT, TPOT and ITL (median, p99, max); then the
ratios.

    .venv/bin/python bench/serve.py [--rounds 2] [--max-tokens 64] [--threads 2] [--no-llama-server]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.stats import LevelResult, RequestTiming, merge, paired_ratio  # noqa: E402
from scripts.link_smollm2 import smollm2_gguf  # noqa: E402
from tests.support.ports import free_port, wait_http  # noqa: E402

LLAMA_SERVER = ROOT / ".tools" / "bin" / "llama-server"
LEVELS = (1, 2, 4, 8)
SLOTS = 4
QUESTIONS = [
    "Write a short story about a lighthouse keeper and a storm.",
    "Explain how a bicycle stays upright.",
    "Describe a busy market in the morning.",
    "What makes a good cup of tea? Give some advice.",
    "Tell me about the life of a honeybee.",
    "Why do leaves change colour in autumn?",
    "Describe the view from the top of a mountain.",
    "Give advice to someone learning to cook.",
]
KIT = "kit-dev"
LCPS = "llama_cpp.server"
LS = "llama-server"
INPROC = "in-process"
INPROC_FA = "in-process+fa"

Sender = Callable[[str], RequestTiming]


@dataclass
class Peer:
    name: str
    send: Sender
    levels: tuple[int, ...] = LEVELS
    results: dict[int, list[LevelResult]] = field(default_factory=dict)


def timed(chunks: Iterator[str], sent: float) -> RequestTiming:
    """Timestamps of the non-empty content chunks of one stream."""
    times: list[float] = []
    parts: list[str] = []
    for text in chunks:
        if text:
            times.append(time.perf_counter())
            parts.append(text)
    if not times:
        raise RuntimeError("the stream produced no content")
    return RequestTiming(sent, tuple(times), "".join(parts))


def http_sender(base_url: str, max_tokens: int, extra: dict[str, object]) -> Sender:
    """Streams over a fresh connection per request (llama-server may drop reused keep-alives under load)."""

    def send(question: str) -> RequestTiming:
        body = {"model": "bench", "messages": [{"role": "user", "content": question}], "stream": True,
                "temperature": 0, "max_tokens": max_tokens, **extra}  # fmt: skip
        sent = time.perf_counter()
        with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, timeout=300) as response:
            response.raise_for_status()
            return timed(_sse_contents(response.iter_lines()), sent)

    return send


def _sse_contents(lines: Iterator[str]) -> Iterator[str]:
    for line in lines:
        if line.startswith("data: ") and line != "data: [DONE]":
            for choice in json.loads(line[6:]).get("choices", []):
                yield (choice.get("delta") or {}).get("content") or ""


def inprocess_sender(
    engine: concurrent.futures.Executor, gguf: Path, threads: int, ctx: int, max_tokens: int, *, flash_attn: bool
) -> Sender:
    """``engine`` is the one thread that makes every llama.cpp call of this process, as in a notebook or
    kit-dev's scheduler: ggml's OpenMP keeps a thread team per calling thread, and decoding from a
    second thread once another has decoded measured ~1.6x slower per token here (2x with two models
    on two threads)."""
    from llama_cpp import Llama

    llm = engine.submit(
        Llama,
        model_path=str(gguf),
        n_ctx=ctx,
        n_threads=threads,
        n_threads_batch=threads,
        flash_attn=flash_attn,
        verbose=False,
    ).result()

    def generate(question: str, sent: float) -> RequestTiming:
        stream = llm.create_chat_completion([{"role": "user", "content": question}], temperature=0,
                                            max_tokens=max_tokens, stream=True)  # fmt: skip
        return timed((c["choices"][0]["delta"].get("content") or "" for c in stream), sent)

    def send(question: str) -> RequestTiming:
        return engine.submit(generate, question, time.perf_counter()).result()

    return send


def run_level(send: Sender, level: int, count: int | None = None) -> LevelResult:
    """``count`` (default ``2 × level``) requests, at most ``level`` in flight, timed from the first send
    to the last byte."""
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(count or 2 * level)]
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=level) as pool:
        timings = list(pool.map(send, questions))
    return LevelResult(tuple(timings), time.perf_counter() - started)


def start_process(
    argv: list[str], health_url: str, log_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    try:
        wait_http(health_url, timeout=120)
    except TimeoutError:
        process.kill()
        tail = log_path.read_text(errors="replace")[-2000:]
        raise SystemExit(f"{Path(argv[0]).name} did not start; see {log_path}:\n{tail}") from None
    return process


def kit_dir(gguf: Path, workdir: Path) -> Path:
    """A local ModelKit directory serving the same GGUF in place."""
    directory = workdir / "kit"
    directory.mkdir()
    (directory / gguf.name).symlink_to(gguf)
    (directory / "Kitfile").write_text(f"manifestVersion: 1.0.0\nmodel:\n  name: bench\n  path: {gguf.name}\n")
    return directory


def llama_server_env() -> dict[str, str]:
    """Run llama-server on llama-cpp-python's own ggml/llama libraries (same source, same build flags),
    so that the comparison is of the serving layers, not of two compilations of the kernels."""
    import llama_cpp

    libs = Path(llama_cpp.__file__).parent / "lib"
    return {**os.environ, "LD_LIBRARY_PATH": f"{libs}:{os.environ.get('LD_LIBRARY_PATH', '')}"}


def start_peers(args: argparse.Namespace, gguf: Path, work: Path) -> tuple[list[Peer], list[subprocess.Popen[bytes]]]:
    python, threads, ctx = sys.executable, str(args.threads), args.ctx
    processes: list[subprocess.Popen[bytes]] = []
    peers: list[Peer] = []
    port = free_port()
    processes.append(start_process(
        [python, "-m", "devserver.cli", "start", str(kit_dir(gguf, work)), "--foreground", "--port", str(port),
         "--threads", threads, "--ctx-size", str(ctx), "--parallel", str(SLOTS), "--cache-dir", str(work / "cache")],
        f"http://127.0.0.1:{port}/health", work / "kit-dev.log",
    ))  # fmt: skip
    peers.append(Peer(KIT, http_sender(f"http://127.0.0.1:{port}", args.max_tokens, {})))
    port = free_port()
    processes.append(start_process(
        [python, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1", "--port", str(port),
         "--n_threads", threads, "--n_threads_batch", threads, "--n_ctx", str(ctx), "--interrupt_requests", "false"],
        f"http://127.0.0.1:{port}/v1/models", work / "llama_cpp.server.log",
    ))  # fmt: skip
    peers.append(Peer(LCPS, http_sender(f"http://127.0.0.1:{port}", args.max_tokens, {})))
    if not args.no_llama_server:
        port = free_port()
        processes.append(start_process(
            [str(LLAMA_SERVER), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-c", str(ctx * SLOTS),
             "-np", str(SLOTS), "-t", threads, "-tb", threads, "-no-kvu", "--no-webui"],
            f"http://127.0.0.1:{port}/health", work / "llama-server.log", env=llama_server_env(),
        ))  # fmt: skip
        peers.append(Peer(LS, http_sender(f"http://127.0.0.1:{port}", args.max_tokens, {})))
    engine = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="in-process")
    for name, flash_attn in ((INPROC, False), (INPROC_FA, True)):
        sender = inprocess_sender(engine, gguf, args.threads, ctx, args.max_tokens, flash_attn=flash_attn)
        peers.append(Peer(name, sender, levels=(1,)))
    return peers, processes


def measure(peers: list[Peer], rounds: int, levels: list[int]) -> float:
    """Run the warm-up and the rounds; return kit-dev's slowest first token in the cold warm-up."""
    cold = 0.0
    for peer in peers:  # every question once, four at a time: weights paged in, prompts seen
        warm_up = run_level(peer.send, SLOTS, len(QUESTIONS))
        if peer.name == KIT:
            cold = max(r.ttft for r in warm_up.requests)
    for round_index in range(rounds):
        for level in levels:
            present = [p for p in peers if level in p.levels]
            shift = round_index % len(present)  # rotate who goes first
            for peer in present[shift:] + present[:shift]:
                result = run_level(peer.send, level)
                peer.results.setdefault(level, []).append(result)
                print(f"round {round_index + 1} concurrency {level} {peer.name}: {result.output_tps:.1f} tok/s",
                      file=sys.stderr, flush=True)  # fmt: skip
    return cold


def report(peers: list[Peer], args: argparse.Namespace, cold_first_token: float) -> None:
    by_name = {p.name: p for p in peers}
    print(f"SmolLM2-135M-Instruct Q4_1, {args.threads} threads, {args.ctx} tokens of context per request, "
          f"greedy, max_tokens {args.max_tokens}, {args.rounds} interleaved rounds, 2 × concurrency requests "
          "per level")  # fmt: skip
    spreads = "".join(f"  {f'{name} ms med/p99/max':>21}" for name in ("TTFT", "TPOT", "ITL"))
    header = f"{'peer':17} {'out tok/s':>9} {'req/s':>6}{spreads}"
    for level in LEVELS:
        print(f"\nconcurrency {level}")
        print(header)
        for peer in peers:
            if level not in peer.results:
                continue
            merged = merge(peer.results[level])
            print(f"{peer.name:17} {merged.output_tps:9.1f} {merged.request_rate:6.2f}  {_ms(merged.ttft())}  "
                  f"{_ms(merged.tpot())}  {_ms(merged.itl())}")  # fmt: skip
    print("\nratios kit-dev / peer (median of per-round pairs)" + "".join(f"{f'c={n}':>8}" for n in LEVELS))
    missing: list[str] = []
    rows = [("output tok/s", "output_tps"), ("median TTFT", "ttft_median")]
    for peer_name in (INPROC, INPROC_FA, LCPS, LS):
        for label, metric in rows:
            name = f"kit-dev / {peer_name} {label}"
            if peer_name not in by_name:
                missing.append(name)
                continue
            cells = [_ratio(by_name[KIT], by_name[peer_name], level, metric) for level in LEVELS]
            print(f"  {name:52}" + "".join(f"{c:>8}" for c in cells))
    kit = by_name[KIT].results
    if 1 in kit and SLOTS in kit:
        c1_ttft = merge(kit[1]).ttft().median
        slowest = merge(kit[SLOTS]).ttft().max
        print(f"\nkit-dev slowest first token at concurrency {SLOTS}: {slowest * 1000:.0f} ms "
              f"(4 × concurrency-1 median TTFT + 100 ms = {(4 * c1_ttft + 0.1) * 1000:.0f} ms); "
              f"in the cold warm-up, prompts never seen: {cold_first_token * 1000:.0f} ms")  # fmt: skip
    if 1 in kit:
        reference = {r.text for r in merge(kit[1]).requests}
        for peer in peers:
            same = {r.text for r in merge(peer.results[1]).requests} == reference
            print(f"greedy texts at concurrency 1 equal kit-dev's: {peer.name}: {'yes' if same else 'NO'}")
    if missing:
        print("\nnot computed (no llama-server; run `make llama-server`): " + "; ".join(missing))


def _ratio(ours: Peer, theirs: Peer, level: int, metric: str) -> str:
    if level not in ours.results or level not in theirs.results:
        return "-"

    def values(peer: Peer) -> list[float]:
        if metric == "output_tps":
            return [r.output_tps for r in peer.results[level]]
        return [r.ttft().median for r in peer.results[level]]

    return f"{paired_ratio(values(ours), values(theirs)):.2f}"


def _ms(spread: object) -> str:
    median, p99, top = (getattr(spread, k) * 1000 for k in ("median", "p99", "max"))
    return f"{median:7.1f}/{p99:6.1f}/{top:6.1f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=1024, help="context per request (llama-server gets 4× for -np 4)")
    parser.add_argument("--no-llama-server", action="store_true", help="run without llama.cpp's C++ server")
    parser.add_argument("--levels", type=int, nargs="+", default=list(LEVELS), help="concurrency levels to run")
    args = parser.parse_args(argv)
    if not args.no_llama_server and not LLAMA_SERVER.exists():
        raise SystemExit(f"{LLAMA_SERVER.relative_to(ROOT)} is missing: run `make llama-server` (~6 min), "
                         "or pass --no-llama-server to leave its ratios out")  # fmt: skip
    gguf = smollm2_gguf()
    with tempfile.TemporaryDirectory(prefix="kit-dev-bench-") as tmp:
        peers, processes = start_peers(args, gguf, Path(tmp))
        try:
            cold = measure(peers, args.rounds, args.levels)
        finally:
            for process in processes:
                process.terminate()
                process.wait(timeout=30)
    report(peers, args, cold)


if __name__ == "__main__":
    main()
