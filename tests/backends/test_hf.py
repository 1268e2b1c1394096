"""The transformers backend on the real SmolLM2 (CPU): parity with llama.cpp, PEFT adapters per
request, the GGUF conversion of the same LoRA in llama.cpp, seeds, stop strings, cancellation, refusals."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backends.base import FinishEvent, GenerationRequest, SamplingParams, TokenEvent, collect
from backends.chat_template import ChatTemplate
from backends.select import AdapterSpec, BackendChoice, EngineOptions
from devserver.errors import BackendError, InvalidRequest

pytest.importorskip("torch")
pytest.importorskip("transformers")
from backends import hf

pytestmark = [pytest.mark.hf]
OPTIONS = EngineOptions(threads=2)
PHRASE, ANSWER = "The secret word is", " banana"
MESSAGES = [{"role": "user", "content": "Name three colours."}]


def _request(prompt: str, adapter: str | None = None, **params: Any) -> GenerationRequest:
    params.setdefault("temperature", 0.0)
    params.setdefault("max_tokens", 6)
    return GenerationRequest("test", prompt, SamplingParams(**params), adapter=adapter)


def _choice(directory: Path, *adapters: AdapterSpec) -> BackendChoice:
    return BackendChoice("transformers", "cpu", directory, adapters, ("test",))


@pytest.fixture(scope="module")
def backend(built_fixtures: dict[str, Path]) -> Iterator[hf.HFBackend]:
    kit = built_fixtures["hf_kit"]
    adapter = AdapterSpec("secret-word", kit / "lora", "peft-lora")
    loaded = hf.load(_choice(kit / "model", adapter), OPTIONS)
    yield loaded
    loaded.close()


@pytest.fixture(scope="module")
def gguf(built_fixtures: dict[str, Path]) -> Path:
    return built_fixtures["gguf_kit"] / "SmolLM2-135M-Instruct.Q4_1.gguf"


# ---- loading -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_loads_with_template_tokens_and_adapter(backend: hf.HFBackend) -> None:
    assert backend.info.name == "transformers" and backend.info.device == "cpu"
    assert backend.info.extra["dtype"] == "float32"
    assert [a.name for a in backend.info.adapters] == ["secret-word"]
    assert backend.chat_template and "<|im_start|>" in backend.chat_template
    assert backend.special_tokens == {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}
    assert backend.count_tokens(PHRASE) == 4


def test_pickle_weights_are_refused_without_allow_pickle(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(BackendError) as err:
        hf.load(_choice(tmp_path), OPTIONS)
    assert "--allow-pickle" in err.value.one_line()


def test_remote_code_is_refused_without_trust_remote_code(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"auto_map": {"AutoModelForCausalLM": "m.Model"}}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(BackendError) as err:
        hf.load(_choice(tmp_path), OPTIONS)
    assert "--trust-remote-code" in err.value.one_line()


def test_adapter_without_weights_names_the_part(tmp_path: Path) -> None:
    model, broken = tmp_path / "model", tmp_path / "broken"
    model.mkdir(), broken.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (model / "model.safetensors").write_bytes(b"")
    (broken / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    with pytest.raises(BackendError, match=r"part 'tone'.*adapter_model\.safetensors"):  # before any model loads
        hf.load(_choice(model, AdapterSpec("tone", broken, "peft-lora")), OPTIONS)


@pytest.mark.slow
def test_adapter_for_another_base_names_the_part(built_fixtures: dict[str, Path], tmp_path: Path) -> None:
    from safetensors.torch import save_file
    from torch import zeros

    wrong = tmp_path / "wrong"
    wrong.mkdir()
    shutil.copy(built_fixtures["peft_lora"] / "adapter_config.json", wrong)
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file(  # shaped for a 1024-wide model; SmolLM2-135M is 576 wide
        {f"{prefix}.lora_A.weight": zeros(8, 1024), f"{prefix}.lora_B.weight": zeros(1024, 8)},
        wrong / "adapter_model.safetensors",
    )
    with pytest.raises(BackendError, match="part 'other'") as err:
        hf.load(_choice(built_fixtures["hf_model"], AdapterSpec("other", wrong, "peft-lora")), OPTIONS)
    assert "another base model" in err.value.one_line()


# ---- generation ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_greedy_matches_llamacpp_on_the_same_gguf(backend: hf.HFBackend, gguf: Path) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    prompt = ChatTemplate.for_backend(backend.chat_template or "", backend.special_tokens).render(MESSAGES)
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=512, n_threads=2, verbose=False)
    try:
        prompt_ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
        reference: list[int] = []
        for token in llm.generate(prompt_ids, temp=0.0, top_k=1, repeat_penalty=1.0):
            if llm.token_eos() == token or len(reference) == 16:
                break
            reference.append(token)
    finally:
        llm.close()
    events = list(backend.generate(_request(prompt, max_tokens=16)))
    ours = [t for e in events if isinstance(e, TokenEvent) for t in e.token_ids]
    assert events[-1].prompt_tokens == len(prompt_ids)  # same tokenisation of the rendered prompt
    matched = next((i for i, (a, b) in enumerate(zip(ours, reference, strict=False)) if a != b), len(reference))
    print(f"\nparity: {matched} of {len(reference)} greedy tokens equal; text {collect(events)[0]!r}")
    assert matched >= 8, (ours, reference)


@pytest.mark.slow
def test_adapter_per_request_without_reload(backend: hf.HFBackend) -> None:
    model = backend._model  # the same object afterwards: switching did not reload
    base1, _ = collect(backend.generate(_request(PHRASE)))
    tuned, _ = collect(backend.generate(_request(PHRASE, adapter="secret-word")))
    base2, _ = collect(backend.generate(_request(PHRASE)))
    assert tuned.startswith(ANSWER), tuned
    assert "banana" not in base1
    assert base1 == base2
    assert backend._model is model


@pytest.mark.slow
def test_gguf_lora_completes_the_phrase_in_llamacpp(built_fixtures: dict[str, Path], gguf: Path) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    texts = {}
    for lora in (None, built_fixtures["gguf_lora"]):
        kwargs = {"lora_path": str(lora)} if lora else {}
        llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=128, n_threads=2, verbose=False, **kwargs)
        try:
            texts[lora is not None] = llm.create_completion(PHRASE, max_tokens=6, temperature=0.0)["choices"][0]["text"]
        finally:
            llm.close()
    assert texts[True].startswith(ANSWER), texts
    assert "banana" not in texts[False], texts


@pytest.mark.slow
def test_stop_string_cuts_the_text(backend: hf.HFBackend) -> None:
    text, finish = collect(backend.generate(_request(PHRASE, adapter="secret-word", max_tokens=10, stop=(". The",))))
    assert (text, finish.reason) == (ANSWER, "stop")


@pytest.mark.slow
def test_seed_makes_sampling_repeatable(backend: hf.HFBackend) -> None:
    def sample(seed: int) -> str:
        return collect(backend.generate(_request(PHRASE, temperature=1.0, top_p=0.95, max_tokens=8, seed=seed)))[0]

    first, again, other = sample(7), sample(7), [sample(s) for s in (8, 9, 10)]
    assert first == again
    assert any(text != first for text in other)


@pytest.mark.slow
def test_cancel_stops_within_a_token(backend: hf.HFBackend) -> None:
    request = _request(PHRASE, max_tokens=200)
    events = backend.generate(request)
    first = next(events)
    assert isinstance(first, TokenEvent)
    request.cancel.set()
    rest = list(events)
    finish = rest[-1]
    assert isinstance(finish, FinishEvent) and finish.reason == "cancelled"
    assert finish.completion_tokens <= 2
    already = _request(PHRASE)
    already.cancel.set()
    assert collect(backend.generate(already))[1].reason == "cancelled"


@pytest.mark.slow
def test_refuses_grammar_and_unknown_adapters(backend: hf.HFBackend) -> None:
    with pytest.raises(InvalidRequest, match=r"llama\.cpp"):
        list(backend.generate(_request(PHRASE, grammar='root ::= "a"')))
    with pytest.raises(InvalidRequest, match="unknown adapter"):
        list(backend.generate(_request(PHRASE, adapter="nope")))


@pytest.mark.slow
def test_cpu_throughput(backend: hf.HFBackend) -> None:
    prompt = ChatTemplate.for_backend(backend.chat_template or "", backend.special_tokens).render(MESSAGES)
    start = time.perf_counter()
    text, finish = collect(backend.generate(_request(prompt, max_tokens=32, repeat_penalty=1.0)))
    rate = finish.completion_tokens / (time.perf_counter() - start)
    print(f"\ntransformers CPU: {finish.completion_tokens} tokens, {rate:.1f} tokens/s; {text!r}")
    assert finish.completion_tokens > 0 and text


@pytest.mark.gpu
@pytest.mark.slow
def test_cuda_generates_in_bfloat16(built_fixtures: dict[str, Path]) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    choice = BackendChoice("transformers", "cuda:0", built_fixtures["hf_model"], (), ("test",))
    loaded = hf.load(choice, OPTIONS)
    try:
        assert loaded.info.extra["dtype"] == "bfloat16"
        text, finish = collect(loaded.generate(_request(PHRASE, max_tokens=8)))
        assert finish.completion_tokens > 0 and text
    finally:
        loaded.close()
