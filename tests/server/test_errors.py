"""Whatever a client sends, the answer is an OpenAI-shaped 4xx (never a 500), and the server stays up."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from backends.fake import FakeBackend
from devserver.errors import BackendError
from tests.server.conftest import LiveServer, ServerFactory, chat_body, chunks, stream_chat


def post(server: LiveServer, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/chat/completions", timeout=30, **kwargs)


def assert_openai_error(response: httpx.Response, status: int, *, param: str | None = None,
                        code: str | None = None) -> dict[str, Any]:  # fmt: skip
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


@pytest.fixture
def server(serve: ServerFactory) -> LiveServer:
    return serve(FakeBackend())


def test_malformed_json_is_400(server: LiveServer) -> None:
    error = assert_openai_error(post(server, content=b'{"model": "tiny-chat", "messages": ['), 400)
    assert error["type"] == "invalid_request_error"
    assert "JSON" in error["message"]


def test_empty_body_is_400(server: LiveServer) -> None:
    assert_openai_error(post(server, content=b""), 400)


def test_stream_as_a_string_is_400(server: LiveServer) -> None:
    assert_openai_error(post(server, json=chat_body(stream="true")), 400, param="stream")


def test_empty_messages_is_400(server: LiveServer) -> None:
    assert_openai_error(post(server, json=chat_body(messages=[])), 400, param="messages")


def test_unknown_fields_are_refused_by_name(server: LiveServer) -> None:
    error = assert_openai_error(post(server, json=chat_body(functions=[], frobnicate=1)), 400)
    assert "functions" in error["message"] and "frobnicate" in error["message"]


@pytest.mark.parametrize(
    ("overrides", "param"),
    [
        ({"n": 0}, "n"),
        ({"n": 17}, "n"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"response_format": {"type": "yaml"}}, "response_format"),
        ({"temperature": 3}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"logit_bias": {"hello": 1}}, "logit_bias"),
        ({"logit_bias": {"1000": 1}}, "logit_bias"),  # FakeBackend's vocabulary is ids 0-999
        ({"logit_bias": {"-1": 1}}, "logit_bias"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ],
)
def test_invalid_options_are_400_naming_the_param(server: LiveServer, overrides: dict[str, Any],
                                                   param: str) -> None:  # fmt: skip
    assert_openai_error(post(server, json=chat_body(**overrides)), 400, param=param)


@pytest.mark.parametrize(
    ("path", "overrides", "message"),
    [
        ("chat/completions", {"stop": ["a", "b", "c", "d", "e"]}, "stop: List should have at most 4 items"),
        ("chat/completions", {"stop": 5}, "stop: should be one of: str, list[str]"),
        ("completions", {"prompt": [1, 2, 3]}, "prompt: token-id prompts are not supported; send text"),
        ("completions", {"prompt": [[1, 2], [3]]}, "prompt: token-id prompts are not supported; send text"),
    ],
)
def test_a_field_of_several_types_says_what_is_wrong(server: LiveServer, path: str, overrides: dict[str, Any],
                                                     message: str) -> None:  # fmt: skip
    """Not the first type's mismatch ("Input should be a valid string" for a list one too long)."""
    body = chat_body(**overrides)
    if path == "completions":
        del body["messages"]
    response = httpx.post(f"{server.url}/v1/{path}", json=body, timeout=30)
    error = assert_openai_error(response, 400, param=next(iter(overrides)))
    assert error["message"].startswith(message)


def test_unknown_model_is_404(server: LiveServer) -> None:
    error = assert_openai_error(post(server, json=chat_body(model="gpt-4")), 404, param="model",
                                code="model_not_found")  # fmt: skip
    assert "gpt-4" in error["message"]


def test_unknown_route_and_wrong_method_are_openai_shaped(server: LiveServer) -> None:
    assert_openai_error(httpx.get(f"{server.url}/v1/nothing-here"), 404)
    assert_openai_error(httpx.get(f"{server.url}/v1/chat/completions"), 405)


def test_prompt_beyond_the_context_is_400(serve: ServerFactory) -> None:
    server = serve(FakeBackend(context_size=8))
    long = chat_body(messages=[{"role": "user", "content": "word " * 50}])
    assert_openai_error(post(server, json=long), 400, param="messages", code="context_length_exceeded")
    assert_openai_error(post(server, json=chat_body(max_tokens=100)), 400, param="max_tokens")


def test_unexpected_backend_failure_is_500_and_the_server_stays_up(serve: ServerFactory) -> None:
    server = serve(FakeBackend(fail_after=0, error=RuntimeError("boom at 0x7f00")))
    error = assert_openai_error(post(server, json=chat_body()), 500)
    assert error["type"] == "server_error"
    assert "0x7f00" not in error["message"]
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    assert post(server, json=chat_body()).status_code == 500  # the worker thread survived


def test_backend_error_mid_stream_becomes_an_error_event_then_done(serve: ServerFactory) -> None:
    server = serve(FakeBackend(fail_after=2, error=BackendError("the engine fell over")))
    status, payloads = stream_chat(server.url, chat_body())
    assert status == 200
    data = chunks(payloads)
    assert data[-1] == {"error": {"message": "the engine fell over", "type": "server_error", "param": None,
                                  "code": "backend_error"}}  # fmt: skip
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in data[:-1])
    assert text == "Hello,"
    assert all(c["choices"][0]["finish_reason"] is None for c in data[:-1])
