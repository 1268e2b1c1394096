"""The llama.cpp backend with the real SmolLM2 GGUF, checked against in-process llama-cpp-python."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backends.base import FinishEvent, GenerationRequest, SamplingParams, TokenEvent, collect
from backends.chat_template import ChatTemplate
from backends.select import BackendChoice, EngineOptions

llama_cpp = pytest.importorskip("llama_cpp")
from backends import llamacpp  # noqa: E402 - only importable with llama_cpp installed

pytestmark = pytest.mark.slow

OPTIONS = EngineOptions(ctx_size=2048, threads=2)
MESSAGES = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def backend(smollm2_gguf: Path) -> Iterator[llamacpp.LlamaCppBackend]:
    choice = BackendChoice(backend="llama.cpp", device="cpu", model_path=smollm2_gguf, reasons=("test",))
    loaded = llamacpp.load(choice, OPTIONS)
    yield loaded
    loaded.close()


@pytest.fixture(scope="module")
def reference(smollm2_gguf: Path, backend: llamacpp.LlamaCppBackend) -> Iterator[Any]:
    """Plain llama-cpp-python with the same context settings as the backend (flash attention: ``auto`` is
    on for every device llama.cpp has here)."""
    llm = llama_cpp.Llama(
        model_path=str(smollm2_gguf),
        n_ctx=OPTIONS.ctx_size,
        n_threads=2,
        n_threads_batch=2,
        n_gpu_layers=backend.info.extra["n_gpu_layers"],
        flash_attn=True,
        verbose=False,
    )
    yield llm
    llm.close()


def render(backend: llamacpp.LlamaCppBackend, messages: list[dict[str, str]]) -> str:
    assert backend.chat_template is not None
    return ChatTemplate.for_backend(backend.chat_template, backend.special_tokens).render(messages)


def generate(backend: llamacpp.LlamaCppBackend, messages: list[dict[str, str]], **params: Any) -> list[Any]:
    request = GenerationRequest("test", render(backend, messages), SamplingParams(**params))
    return list(backend.generate(request))


def reference_text(reference: Any, messages: list[dict[str, str]], max_tokens: int) -> str:
    reference.reset()  # the whole prompt afresh: the backend's prefix reuse must give the same tokens
    stream = reference.create_chat_completion(messages, temperature=0, max_tokens=max_tokens, stream=True)
    return "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in stream)


def test_load_reports_what_it_loaded(backend: llamacpp.LlamaCppBackend, smollm2_gguf: Path) -> None:
    assert backend.info.name == "llama.cpp"
    assert backend.info.context_size == 2048
    assert backend.info.model_file == str(smollm2_gguf)
    assert backend.info.reasons == ("test",)
    assert backend.info.extra["n_threads"] == 2
    assert backend.info.max_concurrency == llamacpp.default_parallel(2048) == 4  # slots for --parallel
    assert backend.chat_template and "im_start" in backend.chat_template
    assert backend.special_tokens["eos_token"] == "<|im_end|>"


def test_default_context_is_capped_at_4096(smollm2_gguf: Path) -> None:
    choice = BackendChoice(backend="llama.cpp", device="cpu", model_path=smollm2_gguf)
    loaded = llamacpp.load(choice, EngineOptions(threads=1))
    try:
        assert loaded.info.context_size == min(4096, loaded.info.extra["n_ctx_train"])
    finally:
        loaded.close()


def test_the_log_says_what_the_engine_made_of_the_flags(smollm2_gguf: Path, caplog: pytest.LogCaptureFixture) -> None:
    choice = BackendChoice(backend="llama.cpp", device="cpu", model_path=smollm2_gguf)
    with caplog.at_level(logging.INFO, logger="backends.llamacpp"):
        loaded = llamacpp.load(choice, EngineOptions(ctx_size=1000, threads=1, flash_attn="off"))
    loaded.close()
    assert [r.getMessage() for r in caplog.records if r.name == "backends.llamacpp"] == [
        "llama.cpp: 4 slots of 1024 tokens (llama.cpp rounds a context of 1000 up to a multiple of 256; "
        "--parallel not given: at most 4, within 16384 KV tokens in all), 1 thread, flash attention off"
    ]


def test_prompt_matches_llama_cpp_python_rendering(backend: llamacpp.LlamaCppBackend, reference: Any) -> None:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    formatter = Jinja2ChatFormatter(
        template=reference.metadata["tokenizer.chat_template"],
        eos_token=backend.special_tokens["eos_token"],
        bos_token=backend.special_tokens["bos_token"],
    )
    messages = [{"role": "system", "content": "Be brief."}, *MESSAGES,
                {"role": "assistant", "content": "Red."}, {"role": "user", "content": "More?"}]  # fmt: skip
    for case in (MESSAGES, messages):
        assert render(backend, case) == formatter(messages=case).prompt
    prompt = render(backend, MESSAGES)
    assert backend.count_tokens(prompt) == len(reference.tokenize(prompt.encode(), add_bos=False, special=True))


def test_greedy_text_equals_create_chat_completion(backend: llamacpp.LlamaCppBackend, reference: Any) -> None:
    events = generate(backend, MESSAGES, temperature=0, max_tokens=32)
    text, finish = collect(events)
    assert text == reference_text(reference, MESSAGES, 32)
    assert text.strip()
    assert finish.reason == "length"
    assert finish.completion_tokens == 32
    assert finish.prompt_tokens == backend.count_tokens(render(backend, MESSAGES))
    assert finish.timings.prefill_s is not None and finish.timings.decode_s is not None
    assert sum(len(e.token_ids) for e in events if isinstance(e, TokenEvent)) == 32


def test_flash_attn_off_gives_what_a_default_llama_gives(backend: llamacpp.LlamaCppBackend, smollm2_gguf: Path) -> None:
    """``Llama()`` defaults to flash attention off, llama.cpp to ``auto`` (on here): the kernels differ in
    their last bits, enough to change this greedy text, so the flag must reach the context."""
    choice = BackendChoice(backend="llama.cpp", device="cpu", model_path=smollm2_gguf)
    off = llamacpp.load(choice, EngineOptions(ctx_size=2048, threads=2, parallel=1, flash_attn="off"))
    default = llama_cpp.Llama(model_path=str(smollm2_gguf), n_ctx=2048, n_threads=2, n_threads_batch=2, verbose=False)
    try:
        assert off.info.extra["flash_attn"] == "off" and backend.info.extra["flash_attn"] == "auto"
        text = collect(generate(off, MESSAGES, temperature=0, max_tokens=32))[0]
        assert text == reference_text(default, MESSAGES, 32)
        assert text != collect(generate(backend, MESSAGES, temperature=0, max_tokens=32))[0]
    finally:
        off.close()
        default.close()


def test_multibyte_characters_are_emitted_whole(backend: llamacpp.LlamaCppBackend, reference: Any) -> None:
    messages = [{"role": "user", "content": "Say café, naïve and 日本語."}]
    events = generate(backend, messages, temperature=0, max_tokens=24)
    pieces = [e for e in events if isinstance(e, TokenEvent)]
    assert any(len(e.token_ids) > 1 for e in pieces)  # a character spread over several tokens waited for all
    assert all("\ufffd" not in e.text for e in pieces)
    assert "".join(e.text for e in pieces) == reference_text(reference, messages, 24)


def test_the_same_request_twice_gives_the_same_greedy_text(backend: llamacpp.LlamaCppBackend) -> None:
    first = collect(generate(backend, MESSAGES, temperature=0, max_tokens=16))[0]
    assert collect(generate(backend, MESSAGES, temperature=0, max_tokens=16))[0] == first


def test_stop_string_spanning_tokens_is_cut_and_never_emitted(backend: llamacpp.LlamaCppBackend) -> None:
    events = generate(backend, MESSAGES, temperature=0, max_tokens=32)
    pieces = [e.text for e in events if isinstance(e, TokenEvent)]
    full = "".join(pieces)
    # A stop string made of the end of one token and the start of the next.
    index = next(i for i in range(3, len(pieces) - 1) if len(pieces[i]) >= 2 and len(pieces[i + 1]) >= 2)
    stop = pieces[index][-2:] + pieces[index + 1][:2]
    expected = full[: full.index(stop)]
    stopped = generate(backend, MESSAGES, temperature=0, max_tokens=32, stop=(stop,))
    text, finish = collect(stopped)
    assert text == expected
    assert finish.reason == "stop"  # and ``text == expected``: not one character of the stop string went out


def test_cancel_stops_within_one_token(backend: llamacpp.LlamaCppBackend) -> None:
    request = GenerationRequest("c", render(backend, MESSAGES), SamplingParams(temperature=0, max_tokens=32))
    events = []
    for event in backend.generate(request):
        events.append(event)
        if isinstance(event, TokenEvent):
            request.cancel.set()
    assert isinstance(events[-1], FinishEvent)
    assert events[-1].reason == "cancelled"
    assert events[-1].completion_tokens <= 2
    assert sum(isinstance(e, TokenEvent) for e in events) == 1


def test_seeded_sampling_repeats_and_logit_bias_bans_a_token(backend: llamacpp.LlamaCppBackend) -> None:
    sampled = {collect(generate(backend, MESSAGES, temperature=0.9, seed=7, max_tokens=12))[0] for _ in range(2)}
    assert len(sampled) == 1
    greedy = generate(backend, MESSAGES, temperature=0, max_tokens=4)
    first = next(e for e in greedy if isinstance(e, TokenEvent)).token_ids[0]
    banned = generate(backend, MESSAGES, temperature=0, max_tokens=4, logit_bias={first: -100.0})
    assert next(e for e in banned if isinstance(e, TokenEvent)).token_ids[0] != first


def test_penalties_change_greedy_output(backend: llamacpp.LlamaCppBackend) -> None:
    plain = collect(generate(backend, MESSAGES, temperature=0, max_tokens=24))[0]
    penalised = collect(generate(backend, MESSAGES, temperature=0, max_tokens=24, frequency_penalty=2.0,
                                 presence_penalty=2.0, repeat_penalty=1.5))[0]  # fmt: skip
    assert penalised != plain
