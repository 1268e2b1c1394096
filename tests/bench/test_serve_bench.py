"""bench/serve.py without servers: the vLLM metric definitions and the refusal without llama-server."""

from __future__ import annotations

import pytest

from bench import serve
from bench.stats import LevelResult, RequestTiming, Spread, merge, paired_ratio, percentile


def test_request_metrics_follow_vllm_definitions() -> None:
    timing = RequestTiming(sent=10.0, chunks=(10.5, 10.6, 10.8, 11.1))
    assert timing.tokens == 4
    assert timing.ttft == pytest.approx(0.5)
    assert timing.tpot == pytest.approx(0.6 / 3)  # (last − first) / (tokens − 1)
    assert timing.itls == pytest.approx([0.1, 0.2, 0.3])
    assert RequestTiming(0.0, (1.0,)).tpot is None


def test_level_throughput_and_spreads() -> None:
    level = LevelResult((RequestTiming(0.0, (1.0, 2.0)), RequestTiming(0.0, (2.0, 3.0, 4.0))), wall_s=4.0)
    assert level.output_tps == pytest.approx(5 / 4)
    assert level.request_rate == pytest.approx(0.5)
    assert level.ttft() == Spread(median=1.5, p99=pytest.approx(1.99), max=2.0)
    assert level.itl().max == pytest.approx(1.0)
    both = merge([level, level])
    assert (len(both.requests), both.wall_s) == (4, 8.0)


def test_percentile_interpolates_like_numpy() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile([5.0], 99) == 5.0
    assert percentile(list(range(101)), 99) == pytest.approx(99.0)


def test_paired_ratio_is_the_median_of_round_ratios() -> None:
    assert paired_ratio([2.0, 3.0, 10.0], [1.0, 3.0, 5.0]) == pytest.approx(2.0)


def test_refuses_without_llama_server_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serve, "LLAMA_SERVER", serve.ROOT / ".tools" / "bin" / "no-such-llama-server")
    with pytest.raises(SystemExit, match="make llama-server"):
        serve.main(["--rounds", "1"])


def test_report_names_the_ratios_it_could_not_compute(capsys: pytest.CaptureFixture[str]) -> None:
    def peer(name: str, levels: tuple[int, ...]) -> serve.Peer:
        result = LevelResult((RequestTiming(0.0, (0.1, 0.2, 0.3), "same text"),), wall_s=1.0)
        return serve.Peer(name, lambda q: result.requests[0], levels, {n: [result] for n in levels})

    peers = [peer(serve.KIT, serve.LEVELS), peer(serve.LCPS, serve.LEVELS), peer(serve.INPROC, (1,)),
             peer(serve.INPROC_FA, (1,))]  # fmt: skip
    args = serve.argparse.Namespace(threads=2, ctx=1024, max_tokens=3, rounds=1)
    serve.report(peers, args, cold_first_token=0.5)
    out = capsys.readouterr().out
    assert "kit-dev / llama_cpp.server output tok/s" in out and "1.00" in out
    assert "kit-dev / in-process+fa output tok/s" in out
    missing = out.split("not computed")[1]
    assert "kit-dev / llama-server output tok/s" in missing and "kit-dev / llama-server median TTFT" in missing
    assert "in-process" not in missing
    assert "equal kit-dev's: in-process: yes" in out
    assert "slowest first token at concurrency 4: 100 ms (4 × concurrency-1 median TTFT + 100 ms = 500 ms)" in out
    assert "in the cold warm-up, prompts never seen: 500 ms" in out
