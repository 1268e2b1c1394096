"""The fixture build: what it makes, that the ModelKits are valid and select as intended, and the cache."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from backends.gguf_meta import read_metadata
from backends.hardware import Hardware
from backends.select import BackendChoice, PartInfo, choose_backend
from devserver.modelkit.kitfile import find_kitfile, load_kitfile
from tests.conftest import FIXTURES, REPO

pytestmark = pytest.mark.slow
CPU = Hardware(cpu_count=2)


def _choose(kit: Path) -> BackendChoice:
    kitfile = load_kitfile(find_kitfile(kit))
    model = kitfile.model
    assert model is not None and model.path
    parts = [PartInfo(path=kit / p.path, type=p.type, name=p.name) for p in model.parts or []]
    return choose_backend(kit / model.path, model_format=model.format, framework=model.framework, parts=parts, hw=CPU)


def test_outputs_exist(built_fixtures: dict[str, Path]) -> None:
    hf = built_fixtures["hf_model"]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"):
        assert (hf / name).is_file(), name
    assert (built_fixtures["peft_lora"] / "adapter_config.json").is_file()
    meta = read_metadata(built_fixtures["gguf_lora"], ["general.type", "general.architecture", "adapter.type"])
    assert meta == {"general.type": "adapter", "general.architecture": "llama", "adapter.type": "lora"}


def test_gguf_kit_selects_llamacpp_with_its_gguf_lora(built_fixtures: dict[str, Path]) -> None:
    choice = _choose(built_fixtures["gguf_kit"])
    assert choice.backend == "llama.cpp" and choice.model_path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert [(a.name, a.kind) for a in choice.adapters] == [("secret-word", "gguf-lora")]


def test_hf_kit_selects_transformers_with_its_peft_lora(built_fixtures: dict[str, Path]) -> None:
    choice = _choose(built_fixtures["hf_kit"])
    assert choice.backend == "transformers" and choice.model_path == built_fixtures["hf_kit"] / "model"
    assert [(a.name, a.kind) for a in choice.adapters] == [("secret-word", "peft-lora")]


def test_second_build_is_a_cache_hit(built_fixtures: dict[str, Path]) -> None:
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "build_fixtures.py"), "--root", str(FIXTURES)],
        capture_output=True,
        text=True,
        check=True,
    )
    elapsed = time.perf_counter() - start
    assert "building:" not in result.stdout  # nothing was rebuilt
    assert elapsed < 10  # interpreter start-up only; a rebuild takes minutes
