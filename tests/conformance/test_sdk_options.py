"""Every request option through the official ``openai`` SDK, on llama.cpp and on transformers.

On transformers the options it cannot honour (constrained decoding: ``response_format`` JSON modes,
``tool_choice`` required/named) are asserted as 400s naming the option; everything else must work
the same on both.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.conformance.conftest import TOKENS_LIMIT
from tests.server.conftest import MODEL_ID, LiveServer

openai = pytest.importorskip("openai")

pytestmark = pytest.mark.slow

ASK = [{"role": "user", "content": "Name three colours."}]
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def client(server: LiveServer) -> Any:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


def text_of(stream: Any) -> tuple[str, list[Any]]:
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


def test_roles_and_text_part_content(served: tuple[str, LiveServer]) -> None:
    _, server = served
    messages = [
        {"role": "system", "content": "You answer briefly."},
        {"role": "developer", "content": "Use plain words."},
        {"role": "user", "content": [{"type": "text", "text": "What is "}, {"type": "text", "text": "Paris?"}]},
        {"role": "assistant", "content": "A city."},
        {"role": "user", "content": "And Rome?"},
        {"role": "user", "content": "Be short."},
    ]
    reply = client(server).chat.completions.create(model=MODEL_ID, messages=messages, temperature=0, user="u-1")
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason in ("stop", "length")
    with pytest.raises(openai.BadRequestError) as refused:  # SmolLM2's ids run 0-49151
        client(server).chat.completions.create(model=MODEL_ID, messages=ASK, logit_bias={"49152": -100}, stream=True)
    assert refused.value.body["param"] == "logit_bias" and "49151" in refused.value.body["message"]


def test_same_seed_same_output_and_stream_equals_plain(served: tuple[str, LiveServer]) -> None:
    _, server = served
    api = client(server)
    kwargs: dict[str, Any] = {"model": MODEL_ID, "messages": ASK, "temperature": 0.9, "top_p": 0.95, "seed": 42}
    first = api.chat.completions.create(**kwargs).choices[0].message.content
    again = api.chat.completions.create(**kwargs).choices[0].message.content
    streamed, _ = text_of(api.chat.completions.create(stream=True, **kwargs))
    assert first == again == streamed
    assert "\ufffd" not in first


def test_stop_strings_are_never_emitted(served: tuple[str, LiveServer]) -> None:
    _, server = served
    api = client(server)
    full = api.chat.completions.create(model=MODEL_ID, messages=ASK, temperature=0).choices[0].message.content
    assert full and len(full) > 6
    stop = full[3:6]  # spans token boundaries more often than not
    cut = full[: full.find(stop)]
    plain = api.chat.completions.create(model=MODEL_ID, messages=ASK, temperature=0, stop=[stop, "zzz"])
    assert plain.choices[0].message.content == cut and plain.choices[0].finish_reason == "stop"
    streamed, _ = text_of(api.chat.completions.create(model=MODEL_ID, messages=ASK, temperature=0, stop=stop,
                                                      stream=True))  # fmt: skip
    assert streamed == cut


def test_max_tokens_and_max_completion_tokens(served: tuple[str, LiveServer]) -> None:
    _, server = served
    api = client(server)
    for field in ("max_tokens", "max_completion_tokens"):
        reply = api.chat.completions.create(model=MODEL_ID, messages=ASK, temperature=0, **{field: 2})
        assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens <= 2
        with pytest.raises(openai.BadRequestError):
            api.chat.completions.create(model=MODEL_ID, messages=ASK, **{field: 0})


def test_n_choices_plain_and_streamed_interleaved(served: tuple[str, LiveServer]) -> None:
    _, server = served
    api = client(server)
    reply = api.chat.completions.create(model=MODEL_ID, messages=ASK, n=3, seed=1, max_tokens=6)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    _, chunks = text_of(api.chat.completions.create(model=MODEL_ID, messages=ASK, n=2, max_tokens=6, stream=True))
    finished = {c.choices[0].index: c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason}
    assert finished.keys() == {0, 1}


def test_penalties_bias_and_extra_sampling_fields(served: tuple[str, LiveServer]) -> None:
    _, server = served
    reply = client(server).chat.completions.create(
        model=MODEL_ID, messages=ASK, temperature=0.7, presence_penalty=0.5, frequency_penalty=0.5,
        logit_bias={"0": -100, "1": 5}, max_tokens=8, extra_body={"top_k": 20, "min_p": 0.05, "repeat_penalty": 1.1},
    )  # fmt: skip
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_logprobs_plain_and_streamed(served: tuple[str, LiveServer]) -> None:
    _, server = served
    api = client(server)
    reply = api.chat.completions.create(model=MODEL_ID, messages=ASK, logprobs=True, top_logprobs=3, max_tokens=5)
    entries = reply.choices[0].logprobs.content
    assert entries and all(e.logprob <= 0 and len(e.top_logprobs) <= 3 for e in entries)
    assert "".join(e.token for e in entries) == reply.choices[0].message.content
    _, chunks = text_of(api.chat.completions.create(model=MODEL_ID, messages=ASK, logprobs=True, max_tokens=5,
                                                    stream=True))  # fmt: skip
    assert any(c.choices and c.choices[0].logprobs and c.choices[0].logprobs.content for c in chunks)


def test_response_format_json(served: tuple[str, LiveServer]) -> None:
    backend, server = served
    api = client(server)
    schema = {"type": "object", "properties": {"colour": {"type": "string", "maxLength": 8}}, "required": ["colour"]}
    formats = [{"type": "json_object"}, {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}}]
    for fmt in formats:
        if backend == "transformers":
            with pytest.raises(openai.BadRequestError) as refused:
                api.chat.completions.create(model=MODEL_ID, messages=ASK, response_format=fmt)
            assert refused.value.body["param"] == "response_format"
            continue
        reply = api.chat.completions.create(model=MODEL_ID, messages=ASK, response_format=fmt, temperature=0)
        content = reply.choices[0].message.content
        assert content.lstrip().startswith("{")
        if reply.choices[0].finish_reason == "stop":
            assert isinstance(json.loads(content), dict)


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_forced_tool_calls(served: tuple[str, LiveServer], choice: Any) -> None:
    backend, server = served
    api = client(server)
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    if backend == "transformers":
        with pytest.raises(openai.BadRequestError):
            api.chat.completions.create(model=MODEL_ID, messages=messages, tools=[TOOL], tool_choice=choice)
        return
    reply = api.chat.completions.create(model=MODEL_ID, messages=messages, tools=[TOOL], tool_choice=choice,
                                        temperature=0, max_tokens=TOKENS_LIMIT)  # fmt: skip
    call = reply.choices[0].message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    if reply.choices[0].finish_reason == "tool_calls":
        assert "city" in json.loads(call.function.arguments)
    stream = api.chat.completions.create(model=MODEL_ID, messages=messages, tools=[TOOL], tool_choice=choice,
                                         temperature=0, max_tokens=TOKENS_LIMIT, stream=True)  # fmt: skip
    deltas = [d for c in stream if c.choices and c.choices[0].delta.tool_calls for d in c.choices[0].delta.tool_calls]
    assert deltas[0].id and deltas[0].function.name == "get_weather"
    assert all(d.id is None and d.function.name is None for d in deltas[1:])
    assert "".join(d.function.arguments or "" for d in deltas) == call.function.arguments


def test_auto_tools_answer_in_content_or_calls(served: tuple[str, LiveServer]) -> None:
    _, server = served
    reply = client(server).chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "Weather in Oslo?"}], tools=[TOOL], tool_choice="auto"
    )
    message = reply.choices[0].message
    assert message.content is not None or message.tool_calls
    assert "<tool_call>" not in (message.content or "")


def test_include_usage_only_when_asked(served: tuple[str, LiveServer]) -> None:
    _, server = served
    api = client(server)
    _, chunks = text_of(api.chat.completions.create(model=MODEL_ID, messages=ASK, max_tokens=4, stream=True,
                                                    stream_options={"include_usage": True}))  # fmt: skip
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens <= 4
    assert all(c.usage is None for c in chunks[:-1])
    _, plain = text_of(api.chat.completions.create(model=MODEL_ID, messages=ASK, max_tokens=4, stream=True))
    assert all(c.usage is None for c in plain)


def test_completions_string_and_list_prompts(served: tuple[str, LiveServer]) -> None:
    _, server = served
    api = client(server)
    one = api.completions.create(model=MODEL_ID, prompt="The capital of France is", max_tokens=4, temperature=0)
    assert one.object == "text_completion" and one.choices[0].text
    many = api.completions.create(model=MODEL_ID, prompt=["One, two,", "Red, green,"], max_tokens=3, n=2, logprobs=2)
    assert [c.index for c in many.choices] == [0, 1, 2, 3]
    assert all(len(c.logprobs.tokens) == len(c.logprobs.token_logprobs) for c in many.choices)
    stream = api.completions.create(model=MODEL_ID, prompt="The capital of France is", max_tokens=4, temperature=0,
                                    stream=True)  # fmt: skip
    streamed = "".join(c.choices[0].text for c in stream if c.choices)
    assert streamed == one.choices[0].text


def test_async_client_plain_and_streamed(served: tuple[str, LiveServer]) -> None:
    _, server = served

    async def run() -> tuple[str, str]:
        async with openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0) as api:
            plain = await api.chat.completions.create(model=MODEL_ID, messages=ASK, temperature=0, max_tokens=6)
            stream = await api.chat.completions.create(model=MODEL_ID, messages=ASK, temperature=0, max_tokens=6,
                                                       stream=True)  # fmt: skip
            parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
            return plain.choices[0].message.content, "".join(parts)

    plain, streamed = asyncio.run(run())
    assert plain == streamed


def test_models_and_model_retrieval(served: tuple[str, LiveServer]) -> None:
    _, server = served
    api = client(server)
    assert MODEL_ID in [m.id for m in api.models.list().data]
    assert api.models.retrieve(MODEL_ID).id == MODEL_ID
    with pytest.raises(openai.NotFoundError):
        api.models.retrieve("no-such-model")
