"""Continuous batching on llama.cpp: batched greedy output equals solo output, slots are freed and
refilled, and the per-request sampling options (grammar, JSON schema, log-probabilities) work batched."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backends.base import FinishEvent, GenerationRequest, SamplingParams, TokenEvent, collect
from backends.chat_template import ChatTemplate
from backends.select import BackendChoice, EngineOptions
from devserver.errors import InvalidRequest

pytest.importorskip("llama_cpp")
from backends import llamacpp

pytestmark = pytest.mark.slow

QUESTIONS = [
    "Hi.",
    "Name three colours.",
    "What is the capital of France? Answer in one sentence.",
    "Write a haiku about the sea.",
    "Explain in two sentences why the sky is blue, for a child who is five years old.",
    "List four animals that live in the ocean and say one fact about each of them, briefly.",
    "Translate 'good morning' into French, Spanish and German, and say which is the most formal.",
    "You are a helpful assistant. A user asks how to boil an egg so that the yolk stays soft. "
    "Give short, numbered steps and mention the time in minutes.",
]


@pytest.fixture(scope="module")
def backend(smollm2_gguf: Path) -> Iterator[llamacpp.LlamaCppBackend]:
    choice = BackendChoice(backend="llama.cpp", device="cpu", model_path=smollm2_gguf)
    loaded = llamacpp.load(choice, EngineOptions(ctx_size=1024, threads=2, parallel=4))
    yield loaded
    loaded.close()


def request(backend: llamacpp.LlamaCppBackend, question: str, **params: Any) -> GenerationRequest:
    assert backend.chat_template is not None
    prompt = ChatTemplate.for_backend(backend.chat_template, backend.special_tokens).render(
        [{"role": "user", "content": question}]
    )
    return GenerationRequest(question[:12], prompt, SamplingParams(**params))


def token_ids(events: list[Any]) -> list[int]:
    return [t for e in events if isinstance(e, TokenEvent) for t in e.token_ids]


def run_together(backend: llamacpp.LlamaCppBackend, requests: list[GenerationRequest]) -> list[list[Any]]:
    results: list[list[Any]] = [[] for _ in requests]

    def run(i: int) -> None:
        results[i] = list(backend.generate(requests[i]))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


def test_info_says_how_many_run_at_once(backend: llamacpp.LlamaCppBackend) -> None:
    assert backend.info.max_concurrency == 4
    assert backend.info.context_size == 1024  # per request; the KV cache holds 4 × 1024
    assert backend.info.extra["kv_cache_tokens"] == 4096
    assert llamacpp.default_parallel(4096) == 4
    assert llamacpp.default_parallel(8192) == 2
    assert llamacpp.default_parallel(32768) == 1


def test_batched_greedy_equals_solo_token_for_token(backend: llamacpp.LlamaCppBackend) -> None:
    # Different prompt lengths and budgets, so sequences end at different steps and the four slots are
    # refilled while the others are mid-generation.
    budgets = [6, 20, 10, 24, 8, 16, 12, 22]
    cases = list(zip(QUESTIONS, budgets, strict=True))
    solo = [list(backend.generate(request(backend, q, temperature=0, max_tokens=n))) for q, n in cases]
    batched = run_together(backend, [request(backend, q, temperature=0, max_tokens=n) for q, n in cases])
    for alone, together in zip(solo, batched, strict=True):
        assert token_ids(together) == token_ids(alone)
        assert collect(together)[0] == collect(alone)[0]
    waited = [collect(events)[1].timings.queue_s or 0.0 for events in batched]
    assert sum(w > 0.01 for w in waited) >= 3  # eight requests, four slots: some waited for a freed one


def test_cancel_frees_the_slot_for_the_next_request(smollm2_gguf: Path) -> None:
    choice = BackendChoice(backend="llama.cpp", device="cpu", model_path=smollm2_gguf)
    single = llamacpp.load(choice, EngineOptions(ctx_size=512, threads=2, parallel=1))
    try:
        first = request(single, QUESTIONS[1], temperature=0, max_tokens=200)
        events = []
        for event in single.generate(first):
            events.append(event)
            if isinstance(event, TokenEvent):
                first.cancel.set()
        assert isinstance(events[-1], FinishEvent) and events[-1].reason == "cancelled"
        # A consumer that simply stops reading also gives its slot back.
        abandoned = single.generate(request(single, QUESTIONS[2], temperature=0, max_tokens=200))
        next(abandoned)
        abandoned.close()
        text, finish = collect(single.generate(request(single, QUESTIONS[0], temperature=0, max_tokens=4)))
        assert finish.reason == "length" and text
    finally:
        single.close()


def test_gbnf_grammar_constrains_the_output(backend: llamacpp.LlamaCppBackend) -> None:
    grammar = 'root ::= ("red" | "green" | "blue") ", " ("cat" | "dog")'
    constrained = request(backend, QUESTIONS[1], temperature=0, max_tokens=16, grammar=grammar)
    text, finish = collect(backend.generate(constrained))
    colour, animal = text.split(", ")
    assert colour in {"red", "green", "blue"} and animal in {"cat", "dog"}
    assert finish.reason == "stop"
    with pytest.raises(InvalidRequest):
        list(backend.generate(request(backend, "x", grammar="root ::= (")))


def test_json_schema_output_parses_while_batched(backend: llamacpp.LlamaCppBackend) -> None:
    schema = {
        "type": "object",
        "properties": {"colour": {"enum": ["red", "green", "blue"]}, "count": {"type": "integer", "maximum": 9}},
        "required": ["colour", "count"],
    }
    requests = [request(backend, q, temperature=0, max_tokens=40, json_schema=schema) for q in QUESTIONS[:3]]
    requests.append(request(backend, QUESTIONS[3], temperature=0, max_tokens=12))  # unconstrained neighbour
    results = run_together(backend, requests)
    for events in results[:3]:
        value = json.loads(collect(events)[0])
        assert value["colour"] in {"red", "green", "blue"} and isinstance(value["count"], int)


def test_logprobs_are_a_log_softmax_and_include_the_greedy_token(backend: llamacpp.LlamaCppBackend) -> None:
    asked = request(backend, QUESTIONS[1], temperature=0, max_tokens=8, logprobs=True, top_logprobs=5)
    events = list(backend.generate(asked))
    tokens = [e for e in events if isinstance(e, TokenEvent)]
    assert len(tokens) == 8 and all(len(e.token_ids) == 1 for e in tokens)
    for event in tokens:
        assert event.logprob is not None and event.logprob <= 0
        assert len(event.top_logprobs) == 5
        values = [t.logprob for t in event.top_logprobs]
        assert values == sorted(values, reverse=True)
        assert sum(math.exp(v) for v in values) <= 1 + 1e-4
        assert event.logprob == pytest.approx(values[0])  # greedy takes the most likely token
    plain = list(backend.generate(request(backend, QUESTIONS[1], temperature=0, max_tokens=8)))
    assert token_ids(plain) == token_ids(events)
    assert all(e.logprob is None for e in plain if isinstance(e, TokenEvent))
