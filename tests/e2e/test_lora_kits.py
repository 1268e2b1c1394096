"""LoRA adapters shipped as model parts, end to end: the fixture ModelKits are packed and pushed with
the CLI, started from the registry with ``kit-dev start --modelkit``, and asked through the openai client.

The adapter was trained (``scripts/build_fixtures.py``) to complete "The secret word is" with
" banana"; the base model does not. Both engines: GGUF base + GGUF LoRA on llama.cpp, safetensors
base + PEFT LoRA on transformers.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from tests.e2e.conftest import KitDev
from tests.support.registry import RegistryProcess

pytestmark = pytest.mark.slow

PROMPT = "The secret word is"


def complete(client: OpenAI, model: str, *, stream: bool) -> str:
    if stream:
        chunks = client.completions.create(model=model, prompt=PROMPT, max_tokens=3, temperature=0, stream=True)
        return "".join(chunk.choices[0].text for chunk in chunks if chunk.choices)
    return client.completions.create(model=model, prompt=PROMPT, max_tokens=3, temperature=0).choices[0].text


@pytest.mark.parametrize(
    ("kit", "backend"),
    [("gguf-lora", "llama.cpp"), ("hf-lora", "transformers")],
)
def test_adapter_part_is_served_as_its_own_model(
    kit: str,
    backend: str,
    built_fixtures: dict[str, Path],
    kitdev: KitDev,
    registry: RegistryProcess,
    port: int,
) -> None:
    source = built_fixtures[f"{kit.split('-')[0]}_kit"]
    reference = f"{registry.host}/fixtures/{kit}:1"
    kitdev.run("pack", str(source), "-t", reference, "--push")
    kitdev.cache_dir = kitdev.cache_dir.with_name("cache-fresh")  # pulled into an empty cache
    kitdev.run("start", "--modelkit", reference, "--port", str(port), timeout=600)

    base = f"smollm2-{kit}"
    adapter = f"{base}/secret-word"
    models = httpx.get(f"http://127.0.0.1:{port}/v1/models").json()["data"]
    assert [m["id"] for m in models] == [base, adapter]
    assert models[0]["kitdev"]["backend"] == backend
    assert models[1]["parent"] == base

    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
    for stream in (False, True):
        with_adapter = complete(client, adapter, stream=stream)
        without = complete(client, base, stream=stream)
        assert with_adapter.startswith(" banana"), with_adapter
        assert "banana" not in without, without
    # alternating base and adapter on one loaded engine: no reload, no cross-talk
    answers = [complete(client, model, stream=False) for model in (base, adapter, base, adapter)]
    assert ["banana" in a for a in answers] == [False, True, False, True]
