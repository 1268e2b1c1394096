"""Bad bodies as raw HTTP against the real llama.cpp server: OpenAI-shaped 4xx, never a 500."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.server.conftest import MODEL_ID, LiveServer
from tests.server.test_errors import assert_openai_error

pytestmark = pytest.mark.slow


def post(server: LiveServer, path: str = "/v1/chat/completions", **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", timeout=60, **kwargs)


@pytest.mark.parametrize(
    ("content", "param"),
    [
        (b'{"model": "x", "messages": [', None),
        (b"\xff\xfe", None),
        (b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "stream": "true"}', "stream"),
        (b'{"model": "%s", "messages": {}}', "messages"),
        (b'{"model": "%s", "messages": []}', "messages"),
        (b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', None),
        (b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "top_k": 1e400}', None),
        (b'{"model": "%s", "messages": [{"role": "user", "content": 5}]}', "messages[0].content"),
        (b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "n": 99}', "n"),
    ],
)
def test_bad_chat_bodies_are_400(llama_server: LiveServer, content: bytes, param: str | None) -> None:
    body = content.replace(b"%s", MODEL_ID.encode())
    assert_openai_error(post(llama_server, content=body), 400, param=param)


def test_bad_completion_bodies_are_400(llama_server: LiveServer) -> None:
    assert_openai_error(post(llama_server, "/v1/completions", json={"model": MODEL_ID}), 400, param="prompt")
    assert_openai_error(post(llama_server, "/v1/completions", json={"model": MODEL_ID, "prompt": 3}), 400)


def test_unknown_model_is_404(llama_server: LiveServer) -> None:
    body = {"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}
    assert_openai_error(post(llama_server, json=body), 404, code="model_not_found")


def test_prompt_longer_than_the_context_is_400(llama_server: LiveServer) -> None:
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": "word " * 3000}]}
    assert_openai_error(post(llama_server, json=body), 400, code="context_length_exceeded")
    completion = {"model": MODEL_ID, "prompt": "word " * 3000}
    assert_openai_error(post(llama_server, "/v1/completions", json=completion), 400, code="context_length_exceeded")


def test_peft_adapter_on_a_gguf_base_is_400(llama_server: LiveServer, built_fixtures: dict[str, Any]) -> None:
    body = {"lora_name": "peft", "lora_path": str(built_fixtures["peft_lora"])}
    error = assert_openai_error(post(llama_server, "/v1/load_lora_adapter", json=body), 400, param="lora_path")
    assert "PEFT" in error["message"]
