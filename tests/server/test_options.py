"""Request options through a real uvicorn and FakeBackend: n, logprobs, tools, completions, model ids."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from backends.base import AdapterInfo, BackendInfo
from backends.chat_template import ChatTemplate
from backends.fake import FakeBackend
from devserver.server import chat
from devserver.server.protocol import ChatCompletionRequest
from devserver.server.tools import CallDelta, Content, HermesExtractor
from tests.server.conftest import MODEL_ID, ServerFactory, chat_body, chunks, sse_data, stream_chat

TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def post(url: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, timeout=30)


def test_n_choices_each_with_index_and_summed_usage(serve: ServerFactory) -> None:
    backend = FakeBackend()
    server = serve(backend)
    body = post(server.url, "/v1/chat/completions", chat_body(n=3, seed=7)).json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert all(c["message"]["content"] == "Hello, world!" for c in body["choices"])
    assert body["usage"]["completion_tokens"] == 12
    assert [r.params.seed for r in backend.requests] == [7, 8, 9]  # seeded choices differ, and repeat


def test_n_choices_stream_with_their_index_each_finishing(serve: ServerFactory) -> None:
    server = serve(FakeBackend(max_concurrency=2), queue_size=8)
    status, payloads = stream_chat(server.url, chat_body(n=2, stream_options={"include_usage": True}))
    assert status == 200
    data = chunks(payloads)
    for index in (0, 1):
        mine = [c["choices"][0] for c in data if c["choices"] and c["choices"][0]["index"] == index]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        assert "".join(c["delta"].get("content", "") for c in mine) == "Hello, world!"
        assert mine[-1]["finish_reason"] == "stop"
    assert data[-1]["choices"] == [] and data[-1]["usage"]["completion_tokens"] == 8


def test_n_beyond_the_queue_is_400(serve: ServerFactory) -> None:
    server = serve(FakeBackend(), queue_size=2)
    response = post(server.url, "/v1/chat/completions", chat_body(n=3))
    assert response.status_code == 400 and response.json()["error"]["param"] == "n"


def test_logprobs_plain_and_streamed(serve: ServerFactory) -> None:
    server = serve(FakeBackend())
    body = post(server.url, "/v1/chat/completions", chat_body(logprobs=True, top_logprobs=2)).json()
    content = body["choices"][0]["logprobs"]["content"]
    assert [e["token"] for e in content] == ["Hello", ",", " world", "!"]
    assert content[0]["logprob"] == -0.5 and len(content[0]["top_logprobs"]) == 2
    assert content[0]["bytes"] == list(b"Hello")
    _, payloads = stream_chat(server.url, chat_body(logprobs=True))
    streamed = [e for c in chunks(payloads) if c["choices"] and c["choices"][0]["logprobs"]
                for e in c["choices"][0]["logprobs"]["content"]]  # fmt: skip
    assert [e["logprob"] for e in streamed] == [e["logprob"] for e in content]


def test_named_tool_choice_streams_id_and_name_once_then_arguments(serve: ServerFactory) -> None:
    backend = FakeBackend(pieces=('{"city"', ': "Paris"', "}"))
    server = serve(backend)
    named = {"type": "function", "function": {"name": "get_weather"}}
    _, payloads = stream_chat(server.url, chat_body(tools=[TOOL], tool_choice=named))
    data = chunks(payloads)
    deltas = [c["choices"][0]["delta"]["tool_calls"][0] for c in data if "tool_calls" in c["choices"][0]["delta"]]
    assert deltas[0]["id"].startswith("call_") and deltas[0]["type"] == "function"
    assert deltas[0]["function"]["name"] == "get_weather"
    assert all("id" not in d and "name" not in d["function"] for d in deltas[1:])
    assert "".join(d["function"]["arguments"] for d in deltas) == '{"city": "Paris"}'
    assert data[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert backend.requests[0].params.json_schema == TOOL["function"]["parameters"]


def test_required_tool_choice_constrains_to_a_whole_call(serve: ServerFactory) -> None:
    backend = FakeBackend(pieces=('{"name": "get_weather", ', '"arguments": {"city": "Oslo"}}'))
    server = serve(backend)
    other = {"type": "function", "function": {"name": "get_time"}}
    body = post(server.url, "/v1/chat/completions", chat_body(tools=[TOOL, other], tool_choice="required")).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    call = choice["message"]["tool_calls"][0]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Oslo"}'}
    schema = backend.requests[0].params.json_schema
    assert schema is not None and schema["anyOf"][0]["properties"]["name"] == {"const": "get_weather"}


def test_auto_tool_calls_are_parsed_from_hermes_tags(serve: ServerFactory) -> None:
    pieces = ("Let me check. <tool", '_call>{"name": "get_weather", "arguments": {"city": "Rome"}}', "</tool_call>")
    backend = FakeBackend(pieces=pieces)
    server = serve(backend)
    body = post(server.url, "/v1/chat/completions", chat_body(tools=[TOOL])).json()
    choice = body["choices"][0]
    assert choice["message"]["content"] == "Let me check. "
    assert json.loads(choice["message"]["tool_calls"][0]["function"]["arguments"]) == {"city": "Rome"}
    assert choice["finish_reason"] == "tool_calls"
    assert "<tools>" in backend.requests[0].prompt  # the Hermes instructions, the template has no tools slot
    _, payloads = stream_chat(server.url, chat_body(tools=[TOOL]))
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks(payloads))
    assert text == "Let me check. "  # no part of a tag leaks into content


def test_tool_history_renders_for_a_template_without_tools(serve: ServerFactory) -> None:
    backend = FakeBackend()
    server = serve(backend)
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    assert post(server.url, "/v1/chat/completions", chat_body(messages=messages, tools=[TOOL])).status_code == 200
    prompt = backend.requests[0].prompt
    assert "Be brief." in prompt and "<tool_response>\nsunny\n</tool_response>" in prompt
    assert '"city": "Oslo"' in prompt


def test_response_format_becomes_the_json_schema(serve: ServerFactory) -> None:
    backend = FakeBackend()
    server = serve(backend)
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "thing", "schema": schema}}
    assert post(server.url, "/v1/chat/completions", chat_body(response_format=fmt)).status_code == 200
    assert (
        post(server.url, "/v1/chat/completions", chat_body(response_format={"type": "json_object"})).status_code == 200
    )
    assert [r.params.json_schema for r in backend.requests] == [schema, {"type": "object"}]


def test_completions_prompt_list_n_echo_and_stream(serve: ServerFactory) -> None:
    backend = FakeBackend()
    server = serve(backend, queue_size=8)
    body = post(server.url, "/v1/completions", {"model": MODEL_ID, "prompt": ["a b", "c"], "n": 2, "echo": True}).json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert body["choices"][2]["text"] == "cHello, world!"
    assert body["usage"]["prompt_tokens"] == 3  # each prompt counted once, not once per choice
    assert all(r.add_special_tokens for r in backend.requests)
    with httpx.stream("POST", f"{server.url}/v1/completions", timeout=30,
                      json={"model": MODEL_ID, "prompt": "x", "stream": True, "logprobs": 1}) as response:  # fmt: skip
        data = [json.loads(p) for p in sse_data(response.iter_lines())[:-1]]
    assert "".join(c["choices"][0]["text"] for c in data) == "Hello, world!"
    assert data[0]["choices"][0]["logprobs"]["tokens"] == ["Hello"]
    assert data[-1]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(("extra", "param"), [({"suffix": "x"}, "suffix"), ({"best_of": 3}, "best_of"),
                                              ({"prompt": []}, "prompt"), ({"logprobs": 6}, "logprobs"),
                                              ({"prompt": ""}, "prompt"), ({"prompt": ["", "Hi"]}, "prompt"),
                                              ({"logit_bias": {"5000": 1}}, "logit_bias")])  # fmt: skip
def test_completions_refusals_name_the_param(serve: ServerFactory, extra: dict[str, Any], param: str) -> None:
    server = serve(FakeBackend())
    response = post(server.url, "/v1/completions", {"model": MODEL_ID, "prompt": "x", **extra})
    assert response.status_code == 400 and response.json()["error"]["param"] == param


class AdapterFake(FakeBackend):
    """A FakeBackend with one adapter from its ModelKit and runtime loading."""

    def __init__(self) -> None:
        super().__init__()
        self.info = BackendInfo(name="llama.cpp", device="cpu", model_file="f.gguf", context_size=4096,
                                adapters=(AdapterInfo("secret", "parts/secret.gguf", "gguf-lora"),))  # fmt: skip
        self.loaded: dict[str, str] = {}

    def load_adapter(self, name: str, path: Any) -> None:
        self.loaded[name] = str(path)

    def unload_adapter(self, name: str) -> None:
        self.loaded.pop(name)


def test_adapters_are_model_ids_and_load_at_runtime(serve: ServerFactory, tmp_path: Any) -> None:
    backend = AdapterFake()
    server = serve(backend, allow_runtime_lora=True)
    models = httpx.get(f"{server.url}/v1/models").json()["data"]
    assert [m["id"] for m in models] == [MODEL_ID, f"{MODEL_ID}/secret"]
    assert models[1]["parent"] == MODEL_ID
    assert httpx.get(f"{server.url}/v1/models/{MODEL_ID}/secret").json()["id"] == f"{MODEL_ID}/secret"
    assert httpx.get(f"{server.url}/v1/models/nope").status_code == 404
    post(server.url, "/v1/chat/completions", chat_body(model=f"{MODEL_ID}/secret"))
    post(server.url, "/v1/chat/completions", chat_body())
    assert [r.adapter for r in backend.requests] == ["secret", None]
    lora = tmp_path / "other.gguf"
    lora.write_bytes(b"GGUF")
    loaded = post(server.url, "/v1/load_lora_adapter", {"lora_name": "other", "lora_path": str(lora)})
    assert loaded.status_code == 200, loaded.text
    assert post(server.url, "/v1/chat/completions", chat_body(model=f"{MODEL_ID}/other")).status_code == 200
    peft = tmp_path / "peft"
    peft.mkdir()
    (peft / "adapter_config.json").write_text("{}")
    refused = post(server.url, "/v1/load_lora_adapter", {"lora_name": "p", "lora_path": str(peft)})
    assert refused.status_code == 400 and "PEFT" in refused.json()["error"]["message"]
    assert post(server.url, "/v1/unload_lora_adapter", {"lora_name": "other"}).status_code == 200
    gone = post(server.url, "/v1/chat/completions", chat_body(model=f"{MODEL_ID}/other"))
    assert gone.status_code == 404


def test_runtime_lora_is_off_by_default(serve: ServerFactory) -> None:
    server = serve(AdapterFake())
    response = post(server.url, "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "/tmp"})
    assert response.status_code == 403 and response.json()["error"]["code"] == "runtime_lora_disabled"


NO_SYSTEM = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% if loop.index0 > 0 and (m['role'] == 'user') == (messages[loop.index0 - 1]['role'] == 'user') %}"
    "{{ raise_exception('roles must alternate') }}{% endif %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
)


def test_system_folds_into_the_first_user_turn_and_runs_join() -> None:
    template = ChatTemplate(NO_SYSTEM)
    assert not template.has_system_slot and template.needs_alternation
    request = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "S"},
                {"role": "user", "content": "a"},
                {"role": "user", "content": "b"},
            ],
        }
    )
    prompt = template.render(chat.template_messages(request, template))
    assert prompt == "<user>S\n\na\n\nb</s>"


def test_hermes_extractor_holds_back_a_split_tag() -> None:
    extractor = HermesExtractor()
    items = [i for piece in ("Hi <tool", "_call>", '{"name": "f", "arguments": {}}', "</tool_call>")
             for i in extractor.feed(piece)] + list(extractor.finish())  # fmt: skip
    assert items[0] == Content("Hi ")
    assert isinstance(items[1], CallDelta) and items[1].name == "f"
    assert not any(isinstance(i, Content) and "<" in i.text for i in items)
