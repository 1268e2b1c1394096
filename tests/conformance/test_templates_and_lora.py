"""Chat templates from fixture ModelKits (no system slot, unparsable, Hermes tools) and LoRA adapters
loaded at runtime and chosen by model id, on the real engines."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conformance.conftest import UNPARSABLE_TEMPLATE, hf_loader, llama_loader, start
from tests.server.conftest import MODEL_ID, LiveServer

pytestmark = pytest.mark.slow

SECRET = "The secret word is"


def chat(server: LiveServer, messages: list[dict[str, Any]], **extra: Any) -> httpx.Response:
    body = {"model": MODEL_ID, "messages": messages, "max_tokens": 4, **extra}
    return httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=120)


def load_error(server: LiveServer) -> str:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        body = httpx.get(f"{server.url}/health").json()
        if body["status"] == "error":
            return str(body["error"])
        time.sleep(0.1)
    raise AssertionError("the load did not fail")


def test_template_without_system_slot_folds_system_and_joins_turns(template_kits: dict[str, Path]) -> None:
    server = start(llama_loader(template_kits["no-system"]))
    try:
        system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                  {"role": "user", "content": "Again"}]  # fmt: skip
        assert chat(server, system).status_code == 200
        refused = chat(server, [{"role": "assistant", "content": "I start"}])
        assert refused.status_code == 400 and "alternate" in refused.json()["error"]["message"]
        assert refused.json()["error"]["code"] == "chat_template_error"
    finally:
        server.__exit__(None, None, None)


def test_unparsable_template_fails_the_start_naming_the_flag(template_kits: dict[str, Path]) -> None:
    server = start(llama_loader(template_kits["unparsable"]), ready=False)
    try:
        assert "--chat-template" in load_error(server)
    finally:
        server.__exit__(None, None, None)
    override = start(llama_loader(template_kits["hermes"]), ready=False, chat_template=UNPARSABLE_TEMPLATE)
    try:
        assert "--chat-template file" in load_error(override)
    finally:
        override.__exit__(None, None, None)


def test_hermes_template_renders_tools_and_auto_calls_parse(template_kits: dict[str, Path]) -> None:
    server = start(llama_loader(template_kits["hermes"]))
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    try:
        # Greedy: sampled at temperature 1 this 135M model sometimes writes a "<tool_call>" that holds no
        # call, which rightly stays text (as vLLM's hermes parser leaves it), and the test would flake.
        messages = [{"role": "user", "content": "Weather in Oslo?"}]
        response = chat(server, messages, tools=[tool], max_tokens=24, temperature=0)
        assert response.status_code == 200
        choice = response.json()["choices"][0]
        assert choice["finish_reason"] == "length"
        assert "<tool_call>" not in (choice["message"]["content"] or "")
        without_tools = chat(server, messages, max_tokens=1, temperature=0).json()["usage"]["prompt_tokens"]
        assert response.json()["usage"]["prompt_tokens"] > without_tools + 20  # the tool's schema was rendered
    finally:
        server.__exit__(None, None, None)


def complete(server: LiveServer, model: str) -> str:
    body = {"model": model, "prompt": SECRET, "max_tokens": 3, "temperature": 0}
    response = httpx.post(f"{server.url}/v1/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["text"])


def lora_round_trip(server: LiveServer, path: Path) -> None:
    load = {"lora_name": "secret", "lora_path": str(path)}
    assert httpx.post(f"{server.url}/v1/load_lora_adapter", json=load, timeout=120).status_code == 200
    ids = [m["id"] for m in httpx.get(f"{server.url}/v1/models").json()["data"]]
    assert f"{MODEL_ID}/secret" in ids
    assert "banana" in complete(server, f"{MODEL_ID}/secret")
    assert "banana" not in complete(server, MODEL_ID)
    unload = httpx.post(f"{server.url}/v1/unload_lora_adapter", json={"lora_name": "secret"}, timeout=60)
    assert unload.status_code == 200
    gone = httpx.post(f"{server.url}/v1/completions", json={"model": f"{MODEL_ID}/secret", "prompt": "x"})
    assert gone.status_code == 404


def test_gguf_lora_at_runtime_on_llama_cpp(smollm2_gguf: Path, built_fixtures: dict[str, Path]) -> None:
    server = start(llama_loader(smollm2_gguf), allow_runtime_lora=True)
    try:
        lora_round_trip(server, built_fixtures["gguf_lora"])
    finally:
        server.__exit__(None, None, None)


def test_peft_lora_at_runtime_on_transformers(built_fixtures: dict[str, Path]) -> None:
    server = start(hf_loader(built_fixtures["hf_model"]), allow_runtime_lora=True)
    try:
        lora_round_trip(server, built_fixtures["peft_lora"])
    finally:
        server.__exit__(None, None, None)
