"""GGUF LoRA adapters on the batching llama.cpp backend: per request, side by side with the base model,
loaded and unloaded at runtime, and refused at load when they do not fit the model."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from backends.base import GenerationRequest, SamplingParams, collect
from backends.select import AdapterSpec, BackendChoice, EngineOptions
from devserver.errors import BackendError

pytest.importorskip("llama_cpp")
from backends import llamacpp

pytestmark = pytest.mark.slow

PHRASE, ANSWER = "The secret word is", " banana"
OPTIONS = EngineOptions(ctx_size=256, threads=2, parallel=2)


@pytest.fixture(scope="module")
def lora(built_fixtures: dict[str, Path]) -> Path:
    return built_fixtures["gguf_lora"]


@pytest.fixture(scope="module")
def backend(smollm2_gguf: Path, lora: Path) -> Iterator[llamacpp.LlamaCppBackend]:
    adapters = (AdapterSpec("secret-word", lora, "gguf-lora"),)
    choice = BackendChoice(backend="llama.cpp", device="cpu", model_path=smollm2_gguf, adapters=adapters)
    loaded = llamacpp.load(choice, OPTIONS)
    yield loaded
    loaded.close()


def complete(backend: llamacpp.LlamaCppBackend, adapter: str | None) -> str:
    request = GenerationRequest("a", PHRASE, SamplingParams(temperature=0, max_tokens=4), adapter=adapter)
    return collect(backend.generate(request))[0]


def write_lora(path: Path, architecture: str, rows: int) -> Path:
    """A LoRA GGUF of one tensor pair; ``rows`` other than the model's 576 makes it the wrong shape."""
    import gguf

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", 16.0)
    writer.add_tensor("blk.0.attn_k.weight.lora_a", np.zeros((8, rows), dtype=np.float16))
    writer.add_tensor("blk.0.attn_k.weight.lora_b", np.zeros((192, 8), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_adapter_per_request_alternating_without_reload(backend: llamacpp.LlamaCppBackend) -> None:
    assert [a.name for a in backend.info.adapters] == ["secret-word"]
    assert backend.info.adapters[0].kind == "gguf-lora"
    texts = [complete(backend, adapter) for adapter in (None, "secret-word", None, "secret-word")]
    assert texts[1].startswith(ANSWER) and texts[3] == texts[1]
    assert "banana" not in texts[0] and texts[2] == texts[0]


def test_base_and_adapter_requests_run_side_by_side(backend: llamacpp.LlamaCppBackend) -> None:
    solo = {adapter: complete(backend, adapter) for adapter in (None, "secret-word")}
    results: dict[int, Any] = {}
    choices = [None, "secret-word", None, "secret-word"]

    def run(i: int) -> None:
        results[i] = complete(backend, choices[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(choices))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert [results[i] for i in range(len(choices))] == [solo[c] for c in choices]


def test_unknown_adapter_is_refused(backend: llamacpp.LlamaCppBackend) -> None:
    with pytest.raises(BackendError, match="no-such"):
        complete(backend, "no-such")


def test_runtime_load_and_unload(smollm2_gguf: Path, lora: Path) -> None:
    choice = BackendChoice(backend="llama.cpp", device="cpu", model_path=smollm2_gguf)
    plain = llamacpp.load(choice, OPTIONS)
    try:
        assert plain.info.adapters == ()
        info = plain.load_adapter("late", lora)
        assert (info.name, info.kind) == ("late", "gguf-lora")
        assert [a.name for a in plain.info.adapters] == ["late"]
        assert complete(plain, "late").startswith(ANSWER)
        plain.unload_adapter("late")
        assert plain.info.adapters == ()
        with pytest.raises(BackendError, match="late"):
            complete(plain, "late")
        assert "banana" not in complete(plain, None)
        with pytest.raises(BackendError, match="late"):
            plain.unload_adapter("late")
    finally:
        plain.close()


@pytest.mark.parametrize(("architecture", "rows"), [("llama", 100), ("gpt2", 576)], ids=["wrong-shape", "other-base"])
def test_an_adapter_that_does_not_fit_fails_the_load_naming_it(
    smollm2_gguf: Path, tmp_path: Path, architecture: str, rows: int
) -> None:
    broken = write_lora(tmp_path / "broken.gguf", architecture, rows)
    adapters = (AdapterSpec("broken-part", broken, "gguf-lora"),)
    choice = BackendChoice(backend="llama.cpp", device="cpu", model_path=smollm2_gguf, adapters=adapters)
    with pytest.raises(BackendError, match="broken-part"):
        llamacpp.load(choice, OPTIONS)
