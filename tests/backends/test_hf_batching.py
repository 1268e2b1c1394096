"""Batching on the transformers backend with the real SmolLM2 (float32, CPU): requests that arrive
together are decoded as one left-padded batch, and each still gets exactly what it gets alone —
greedy tokens, seeded samples, log-probabilities — with its own cancellation, errors and adapter."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from backends.base import FinishEvent, GenerationEvent, GenerationRequest, SamplingParams, TokenEvent, collect
from backends.chat_template import ChatTemplate
from backends.select import AdapterSpec, BackendChoice, EngineOptions

pytest.importorskip("torch")
pytest.importorskip("transformers")
from backends import hf

pytestmark = [pytest.mark.hf, pytest.mark.slow]
PHRASE, ANSWER = "The secret word is", " banana"
QUESTIONS = [  # 32, 34, 42 and 49 tokens once rendered: rows are padded by up to 17
    "Hi.",
    "Name three colours.",
    "What is the capital of France? Answer in one sentence.",
    "Explain in two sentences why the sky is blue, for a child who is five years old.",
]


@pytest.fixture(scope="module")
def backend(built_fixtures: dict[str, Path]) -> Iterator[hf.HFBackend]:
    kit = built_fixtures["hf_kit"]
    adapter = AdapterSpec("secret-word", kit / "lora", "peft-lora")
    choice = BackendChoice("transformers", "cpu", kit / "model", (adapter,), ("test",))
    loaded = hf.load(choice, EngineOptions(threads=2, parallel=4))
    yield loaded
    loaded.close()


def chat(backend: hf.HFBackend, question: str, adapter: str | None = None, **params: Any) -> GenerationRequest:
    prompt = ChatTemplate.for_backend(backend.chat_template or "", backend.special_tokens).render(
        [{"role": "user", "content": question}]
    )
    params.setdefault("temperature", 0.0)
    return GenerationRequest(question[:12], prompt, SamplingParams(**params), adapter=adapter)


def token_ids(events: list[GenerationEvent]) -> list[int]:
    return [t for e in events if isinstance(e, TokenEvent) for t in e.token_ids]


def together(
    backend: hf.HFBackend,
    requests: list[GenerationRequest],
    consume: Callable[[GenerationRequest], list[GenerationEvent]] | None = None,
) -> list[list[GenerationEvent]]:
    """Run ``requests`` from one thread each, all queued before the model is free, as a server's
    worker threads would when a burst arrives while a batch runs. Holding the backend's lock stands in
    for that running batch, so what ends up batched together does not depend on timing."""
    results: list[list[GenerationEvent]] = [[] for _ in requests]

    def run(i: int) -> None:
        results[i] = consume(requests[i]) if consume else list(backend.generate(requests[i]))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    with backend._lock:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while backend._batcher.waiting < len(requests) and time.monotonic() < deadline:
            time.sleep(0.001)
        assert backend._batcher.waiting == len(requests)
    for thread in threads:
        thread.join(timeout=300)
    return results


def test_info_says_how_many_are_batched(backend: hf.HFBackend) -> None:
    assert backend.info.max_concurrency == 4  # the server runs that many generate() calls at once
    assert backend.info.extra["parallel"] == 4


def test_batched_greedy_equals_solo_token_for_token(backend: hf.HFBackend) -> None:
    # Different prompt lengths (left padding) and budgets, so rows leave the batch at different steps:
    # "Paris" ends at EOS after 7 tokens, the others at their max_tokens.
    budgets = [6, 20, 12, 16]
    solo = [list(backend.generate(chat(backend, q, max_tokens=n))) for q, n in zip(QUESTIONS, budgets, strict=True)]
    before = backend.batch_sizes
    batched = together(backend, [chat(backend, q, max_tokens=n) for q, n in zip(QUESTIONS, budgets, strict=True)])
    assert backend.batch_sizes.get(4, 0) == before.get(4, 0) + 1  # the four ran as one batch
    for alone, with_others in zip(solo, batched, strict=True):
        assert token_ids(with_others) == token_ids(alone)
        assert collect(with_others)[0] == collect(alone)[0]
    finishes = [collect(events)[1] for events in batched]
    assert collect(batched[2])[0] == "The capital of France is Paris."
    assert [(f.reason, f.completion_tokens) for f in finishes] == [
        ("length", 6),
        ("length", 20),
        ("stop", 7),
        ("length", 16),
    ]
    assert [f.prompt_tokens for f in finishes] == [32, 34, 42, 49]
    assert all(f.timings.prefill_s is not None and f.timings.decode_s is not None for f in finishes)


def test_seeded_sampling_is_the_same_batched_or_alone(backend: hf.HFBackend) -> None:
    def sampled(seed: int) -> GenerationRequest:
        return chat(backend, QUESTIONS[1], temperature=1.0, top_p=0.95, seed=seed, max_tokens=12)

    alone = [collect(backend.generate(sampled(seed)))[0] for seed in (7, 8)]
    batched = together(backend, [sampled(7), chat(backend, QUESTIONS[0], max_tokens=8), sampled(8), sampled(7)])
    texts = [collect(events)[0] for events in batched]
    assert texts[0] == texts[3] == alone[0]
    assert texts[2] == alone[1]
    assert alone[0] != alone[1]


def test_logprobs_and_penalties_are_the_same_batched_or_alone(backend: hf.HFBackend) -> None:
    def request() -> GenerationRequest:
        return chat(
            backend,
            QUESTIONS[1],
            max_tokens=10,
            logprobs=True,
            top_logprobs=3,
            repeat_penalty=1.3,
            frequency_penalty=0.5,
            logit_bias={30: -100.0},  # token 30 is "." in SmolLM2
        )

    alone = list(backend.generate(request()))
    batched = together(backend, [request(), chat(backend, QUESTIONS[3], max_tokens=10)])[0]
    assert token_ids(batched) == token_ids(alone)
    assert 30 not in token_ids(alone)
    pairs = [
        (a.logprob, b.logprob, [t.token for t in a.top_logprobs], [t.token for t in b.top_logprobs])
        for a, b in zip(alone, batched, strict=True)
        if isinstance(a, TokenEvent) and isinstance(b, TokenEvent) and a.logprob is not None
    ]
    assert len(pairs) >= 8
    for solo_lp, batched_lp, solo_top, batched_top in pairs:
        # Not bit-equal: the batch's shapes change float32 summation order (backends/hf_decode.py has
        # the measured size, about 1e-4); the tokens and the alternatives are equal.
        assert batched_lp == pytest.approx(solo_lp, abs=1e-3)
        assert batched_top == solo_top and len(solo_top) == 3


def test_batches_hold_one_adapter(backend: hf.HFBackend) -> None:
    before = backend.batch_sizes
    base, tuned, base2, tuned2 = together(
        backend,
        [
            chat(backend, PHRASE, max_tokens=6),
            GenerationRequest("t", PHRASE, SamplingParams(temperature=0.0, max_tokens=6), adapter="secret-word"),
            chat(backend, PHRASE, max_tokens=6),
            GenerationRequest("t", PHRASE, SamplingParams(temperature=0.0, max_tokens=6), adapter="secret-word"),
        ],
    )
    assert backend.batch_sizes.get(2, 0) == before.get(2, 0) + 2  # base pair, then adapter pair
    assert collect(tuned)[0] == collect(tuned2)[0]
    assert collect(tuned)[0].startswith(ANSWER)
    assert collect(base)[0] == collect(base2)[0]
    assert "banana" not in collect(base)[0]


def test_cancel_ends_only_its_own_row(backend: hf.HFBackend) -> None:
    solo = collect(backend.generate(chat(backend, QUESTIONS[3], max_tokens=16)))[0]

    def cancel_after_first_token(request: GenerationRequest) -> list[GenerationEvent]:
        events: list[GenerationEvent] = []
        for event in backend.generate(request):
            events.append(event)
            if isinstance(event, TokenEvent) and request.request_id == "cancel me":
                request.cancel.set()
        return events

    doomed = chat(backend, QUESTIONS[1], max_tokens=200)
    doomed.request_id = "cancel me"
    cancelled, kept = together(backend, [doomed, chat(backend, QUESTIONS[3], max_tokens=16)], cancel_after_first_token)
    finish = cancelled[-1]
    assert isinstance(finish, FinishEvent) and finish.reason == "cancelled"
    assert finish.completion_tokens <= 2
    assert collect(kept)[0] == solo
    assert collect(kept)[1].completion_tokens == 16


def test_a_consumer_that_stops_reading_frees_its_row(backend: hf.HFBackend) -> None:
    abandoned = backend.generate(chat(backend, QUESTIONS[1], max_tokens=200))
    assert isinstance(next(abandoned), TokenEvent)
    abandoned.close()  # its row is dropped from the batch, so the next request does not wait for 200 tokens
    text, finish = collect(backend.generate(chat(backend, QUESTIONS[2], max_tokens=12)))
    assert (text, finish.reason) == ("The capital of France is Paris.", "stop")


def test_cancel_while_waiting_for_a_batch(backend: hf.HFBackend) -> None:
    request = chat(backend, QUESTIONS[0], max_tokens=8)
    result: list[GenerationEvent] = []
    thread = threading.Thread(target=lambda: result.extend(backend.generate(request)))
    with backend._lock:  # the model is busy: the request waits in the batcher's queue
        thread.start()
        while backend._batcher.waiting == 0:
            time.sleep(0.001)
        request.cancel.set()
        thread.join(timeout=30)  # it leaves the queue without waiting for the model
        assert not thread.is_alive()
        assert backend._batcher.waiting == 0
    assert result == [FinishEvent("cancelled", 32, 0, result[-1].timings)]  # type: ignore[union-attr]


def test_a_requests_own_bad_setting_fails_only_that_request(backend: hf.HFBackend) -> None:
    bad = chat(backend, QUESTIONS[0], max_tokens=8, logit_bias={10**8: 1.0})  # no such token
    good_solo = collect(backend.generate(chat(backend, QUESTIONS[2], max_tokens=12)))[0]
    failed, good = together(backend, [bad, chat(backend, QUESTIONS[2], max_tokens=12)])
    finish = failed[-1]
    assert isinstance(finish, FinishEvent) and finish.reason == "error"
    assert finish.error is not None and finish.error.startswith("generation failed: ")
    assert collect(good)[0] == good_solo


def test_a_model_failure_fails_the_batch_and_the_backend_goes_on(
    backend: hf.HFBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("out of memory\nmore lines the client never sees")

    with monkeypatch.context() as patch:
        patch.setattr(backend._model, "forward", broken)
        failed = together(backend, [chat(backend, q, max_tokens=4) for q in QUESTIONS[:3]])
    for events in failed:
        assert events == [FinishEvent("error", events[-1].prompt_tokens, 0, error="generation failed: out of memory")]
    text, finish = collect(backend.generate(chat(backend, QUESTIONS[2], max_tokens=12)))
    assert (text, finish.reason) == ("The capital of France is Paris.", "stop")
