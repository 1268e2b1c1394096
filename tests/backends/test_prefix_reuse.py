"""Prompt-prefix reuse on llama.cpp: how much of a kept prompt a new request may take, and that the
answers stay those of a whole-prompt evaluation (exact tokens against plain llama-cpp-python)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backends.base import FinishEvent, GenerationRequest, SamplingParams, TokenEvent
from backends.chat_template import ChatTemplate
from backends.llamacpp_engine import N_BATCH, reusable_length, reuse_point
from backends.llamacpp_prompt_store import common_prefix_length
from backends.select import BackendChoice, EngineOptions


@pytest.mark.parametrize(
    ("common", "length", "expected"),
    [
        (0, 40, 0),  # nothing in common
        (25, 40, 25),  # a shared system prompt: the rest (15 tokens) is evaluated
        (40, 40, 38),  # the same prompt without its logits: never a lone last token (other kernels), so two
        (39, 40, 38),
        (38, 40, 38),
        (N_BATCH - 1, 700, N_BATCH - 2),  # the first chunk would be [511, 512): one token, moved back
        (N_BATCH, 700, N_BATCH),  # aligned: chunks are those of a whole-prompt pass
        (N_BATCH + 1, N_BATCH + 1, N_BATCH),  # the whole pass also ends on a lone token at 512
        (N_BATCH + 1, 700, N_BATCH + 1),
        (1, 1, 0),
    ],
)
def test_reuse_point(common: int, length: int, expected: int) -> None:
    assert reuse_point(common, length) == expected


@pytest.mark.parametrize(
    ("evaluated", "kept"),
    [(0, 0), (1, 0), (40, 40), (N_BATCH, N_BATCH), (N_BATCH + 1, N_BATCH), (N_BATCH + 2, N_BATCH + 2)],
)
def test_a_lone_final_chunk_is_not_kept(evaluated: int, kept: int) -> None:
    assert reusable_length(evaluated) == kept


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([], [1, 2], 0),
        ([1, 2, 3], [1, 2, 3], 3),
        ([1, 2, 3], [1, 2], 2),
        ([1, 2, 4, 5], [1, 2, 3, 5], 2),
        ([9], [1], 0),
    ],
)
def test_common_prefix_length(a: list[int], b: list[int], expected: int) -> None:
    assert common_prefix_length(a, b) == expected


QUESTIONS = [
    "Hi.",
    "Name three colours.",
    "What is the capital of France? Answer in one sentence.",
    "Write a haiku about the sea.",
]
# A system prompt past one 512-token chunk, so reuse crosses a chunk boundary.
LONG_SYSTEM = "You answer questions about the sea. " + " ".join(
    f"Fact {i}: the sea is deep and wide." for i in range(70)
)


@pytest.fixture(scope="module")
def llama_cpp() -> Any:
    return pytest.importorskip("llama_cpp")


def one_slot(gguf: Path, prompt_cache_mib: int) -> Any:
    """A fresh one-slot backend: every request lands in the slot the previous one left."""
    from backends import llamacpp

    choice = BackendChoice(backend="llama.cpp", device="cpu", model_path=gguf)
    return llamacpp.load(choice, EngineOptions(ctx_size=2048, threads=2, parallel=1, prompt_cache_mib=prompt_cache_mib))


@pytest.fixture
def single(smollm2_gguf: Path, llama_cpp: Any) -> Iterator[Any]:
    loaded = one_slot(smollm2_gguf, 0)  # the slot alone, no host-memory store
    yield loaded
    loaded.close()


@pytest.fixture(scope="module")
def reference(smollm2_gguf: Path, llama_cpp: Any) -> Iterator[Any]:
    llm = llama_cpp.Llama(
        model_path=str(smollm2_gguf), n_ctx=2048, n_threads=2, n_threads_batch=2, flash_attn=True, verbose=False
    )
    yield llm
    llm.close()


def render(backend: Any, messages: list[dict[str, str]]) -> str:
    return ChatTemplate.for_backend(backend.chat_template, backend.special_tokens).render(messages)


def run(backend: Any, messages: list[dict[str, str]], max_tokens: int) -> tuple[list[int], FinishEvent]:
    events = list(
        backend.generate(
            GenerationRequest("t", render(backend, messages), SamplingParams(temperature=0, max_tokens=max_tokens))
        )
    )
    finish = events[-1]
    assert isinstance(finish, FinishEvent) and finish.reason in ("stop", "length")
    return [t for e in events if isinstance(e, TokenEvent) for t in e.token_ids], finish


def reference_tokens(reference: Any, backend: Any, messages: list[dict[str, str]], max_tokens: int) -> list[int]:
    """Greedy tokens of plain llama-cpp-python evaluating the whole prompt afresh."""
    reference.reset()
    prompt = reference.tokenize(render(backend, messages).encode(), add_bos=False, special=True)
    out = []
    for token in reference.generate(prompt, temp=0.0, reset=True):
        if reference.token_eos() == token or token in (reference.tokenize(b"<|im_end|>", add_bos=False, special=True)):
            break
        out.append(token)
        if len(out) == max_tokens:
            break
    return out


@pytest.mark.slow
@pytest.mark.parametrize("system", [None, LONG_SYSTEM], ids=["template-system-prompt", "long-system-prompt"])
def test_reused_prefix_gives_the_whole_prompt_answer(single: Any, reference: Any, system: str | None) -> None:
    previous: list[int] = []
    for question in [*QUESTIONS, QUESTIONS[-1]]:
        messages = [*([{"role": "system", "content": system}] if system else []), {"role": "user", "content": question}]
        prompt = reference.tokenize(render(single, messages).encode(), add_bos=False, special=True)
        tokens, finish = run(single, messages, 12)
        common = 0
        while common < min(len(prompt), len(previous)) and prompt[common] == previous[common]:
            common += 1
        assert finish.prompt_tokens == len(prompt)
        whole = prompt == previous  # the slot kept this very prompt and the logits after it
        assert finish.cached_tokens == (len(prompt) if whole else reuse_point(common, len(prompt)))
        assert tokens == reference_tokens(reference, single, messages, 12)
        previous = prompt
    assert finish.cached_tokens == len(prompt)  # the same prompt again: nothing evaluated


def prompt_of(reference: Any, backend: Any, question: str) -> list[int]:
    return list(
        reference.tokenize(
            render(backend, [{"role": "user", "content": question}]).encode(), add_bos=False, special=True
        )
    )


@pytest.mark.slow
@pytest.mark.parametrize(("budget_mib", "kept"), [(64, "all"), (1, "the last saved only"), (0, "none")])
def test_prompts_kept_in_host_memory_come_back_bit_exact(
    smollm2_gguf: Path, reference: Any, budget_mib: int, kept: str
) -> None:
    backend = one_slot(smollm2_gguf, budget_mib)  # about 23 KB of KV per token: 1 MiB holds one prompt
    try:
        order = [QUESTIONS[1], QUESTIONS[2], QUESTIONS[3], QUESTIONS[1], QUESTIONS[2]]
        finishes = []
        for question in order:
            tokens, finish = run(backend, [{"role": "user", "content": question}], 8)
            assert tokens == reference_tokens(reference, backend, [{"role": "user", "content": question}], 8)
            finishes.append(finish)
    finally:
        backend.close()
    prompts = [prompt_of(reference, backend, q) for q in order]
    system = common_prefix_length(prompts[0], prompts[1])  # the template's system prompt and the user header
    full = [len(p) for p in prompts]  # a whole prompt found again, with the logits after it: nothing evaluated
    expected = {
        "all": [0, system, system, full[3], full[4]],  # QUESTIONS[1] and [2] come back from host memory
        "the last saved only": [0, system, system, system, system],  # each save evicted the one before
        "none": [0, system, system, system, system],
    }[kept]
    assert [f.cached_tokens for f in finishes] == expected
