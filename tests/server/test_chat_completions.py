"""The chat completion contract against FakeBackend through a real uvicorn: JSON and the SSE chunks."""

from __future__ import annotations

import httpx

from backends.fake import FakeBackend
from tests.server.conftest import ALIAS, MODEL_ID, ServerFactory, chat_body, chunks, stream_chat


def test_non_streaming_response_has_message_finish_and_usage(serve: ServerFactory) -> None:
    backend = FakeBackend()
    server = serve(backend)
    response = httpx.post(f"{server.url}/v1/chat/completions", json=chat_body())
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == MODEL_ID
    assert body["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "Hello, world!"}, "logprobs": None,
         "finish_reason": "stop"}
    ]  # fmt: skip
    prompt = backend.requests[0].prompt
    assert prompt == "<|im_start|>user\nSay hello<|im_end|>\n<|im_start|>assistant\n"
    assert body["usage"] == {"prompt_tokens": len(prompt.split()), "completion_tokens": 4,
                             "total_tokens": len(prompt.split()) + 4,
                             "prompt_tokens_details": {"cached_tokens": 0}}  # fmt: skip


def test_stream_chunks_follow_the_openai_outline(serve: ServerFactory) -> None:
    server = serve(FakeBackend())
    status, payloads = stream_chat(server.url, chat_body())
    assert status == 200
    assert payloads[-1] == "[DONE]"
    data = chunks(payloads)
    assert {c["id"] for c in data} == {data[0]["id"]}
    assert {c["created"] for c in data} == {data[0]["created"]}
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == MODEL_ID for c in data)
    assert data[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all("role" not in c["choices"][0]["delta"] for c in data[1:])
    assert [c["choices"][0]["finish_reason"] for c in data[:-1]] == [None] * (len(data) - 1)
    assert data[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in data) == "Hello, world!"
    assert all("usage" not in c for c in data)


def test_include_usage_adds_one_usage_chunk_with_no_choices(serve: ServerFactory) -> None:
    server = serve(FakeBackend())
    _, payloads = stream_chat(server.url, chat_body(stream_options={"include_usage": True}))
    data = chunks(payloads)
    assert data[-2]["choices"][0]["finish_reason"] == "stop"
    assert data[-1]["choices"] == []
    assert data[-1]["usage"]["completion_tokens"] == 4
    assert data[-1]["usage"]["total_tokens"] == data[-1]["usage"]["prompt_tokens"] + 4
    assert data[-1]["id"] == data[0]["id"]


def test_stop_string_split_across_tokens_is_never_streamed(serve: ServerFactory) -> None:
    server = serve(FakeBackend(["Hel", "lo <", "|st", "op|>", " tail"]))
    _, payloads = stream_chat(server.url, chat_body(stop=["<|stop|>"]))
    data = chunks(payloads)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in data)
    assert text == "Hello "
    assert data[-1]["choices"][0]["finish_reason"] == "stop"
    assert not any("<" in c["choices"][0]["delta"].get("content", "") for c in data)


def test_max_tokens_finishes_with_length(serve: ServerFactory) -> None:
    server = serve(FakeBackend())
    body = httpx.post(f"{server.url}/v1/chat/completions", json=chat_body(max_tokens=2)).json()
    assert body["choices"][0]["message"]["content"] == "Hello,"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 2


def test_sampling_options_reach_the_backend(serve: ServerFactory) -> None:
    backend = FakeBackend()
    server = serve(backend, max_tokens_limit=3)
    body = chat_body(temperature=0, top_p=0.5, top_k=7, min_p=0.1, seed=42, stop="x", presence_penalty=0.5,
                     frequency_penalty=-0.5, repeat_penalty=1.1, logit_bias={"15": -100}, max_tokens=100)  # fmt: skip
    assert httpx.post(f"{server.url}/v1/chat/completions", json=body).status_code == 200
    params = backend.requests[0].params
    assert (params.temperature, params.top_p, params.top_k, params.min_p, params.seed) == (0, 0.5, 7, 0.1, 42)
    assert params.stop == ("x",)
    assert (params.presence_penalty, params.frequency_penalty, params.repeat_penalty) == (0.5, -0.5, 1.1)
    assert params.logit_bias == {15: -100.0}
    assert params.max_tokens == 3  # capped by the server's max_tokens_limit


def test_alias_is_accepted_and_json_is_read_whatever_the_content_type(serve: ServerFactory) -> None:
    server = serve(FakeBackend())
    import json

    response = httpx.post(
        f"{server.url}/v1/chat/completions",
        content=json.dumps(chat_body(model=ALIAS)),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "Hello, world!"


def test_models_lists_the_served_id_with_kitdev_details(serve: ServerFactory) -> None:
    server = serve(FakeBackend())
    body = httpx.get(f"{server.url}/v1/models").json()
    assert body["object"] == "list"
    [card] = body["data"]
    assert card["id"] == MODEL_ID
    assert card["object"] == "model"
    assert card["owned_by"] == "kit-dev"
    details = card["kitdev"]
    assert details["backend"] == "fake"
    assert details["device"] == "cpu"
    assert details["reasons"] == ["FakeBackend: scripted events for tests"]
    assert details["reference"] == ALIAS
    assert details["digest"] == "sha256:" + "ab" * 32
    assert details["metadata"]["license"] == "Apache-2.0"
