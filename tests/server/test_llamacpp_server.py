"""End to end: a real uvicorn serving SmolLM2 through llama.cpp, driven by the official openai client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from backends.select import BackendChoice, EngineOptions
from devserver.server.app import create_app
from tests.server.conftest import MODEL_ID, LiveServer, make_config
from tests.server.test_queue_and_metrics import samples, value

llama_cpp = pytest.importorskip("llama_cpp")
openai = pytest.importorskip("openai")
from backends import llamacpp  # noqa: E402 - only importable with llama_cpp installed

pytestmark = pytest.mark.slow

MAX_TOKENS = 32
OPTIONS = EngineOptions(ctx_size=2048, threads=2)
COLOURS = [{"role": "user", "content": "Name three colours."}]
CAPITAL = [{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": "What is Paris?"}]


@pytest.fixture(scope="module")
def server(smollm2_gguf: Path) -> Iterator[LiveServer]:
    choice = BackendChoice(backend="llama.cpp", device="cpu", model_path=smollm2_gguf, reasons=("GGUF",))
    app = create_app(make_config(), lambda: llamacpp.load(choice, OPTIONS))
    with LiveServer(app) as live:
        live.wait_ready(120)
        yield live


@pytest.fixture(scope="module")
def reference(smollm2_gguf: Path) -> Iterator[Any]:
    llm = llama_cpp.Llama(model_path=str(smollm2_gguf), n_ctx=OPTIONS.ctx_size, n_threads=2, n_threads_batch=2,
                          n_gpu_layers=-1 if llama_cpp.llama_supports_gpu_offload() else 0, flash_attn=True,
                          verbose=False)  # fmt: skip
    yield llm
    llm.close()


@pytest.fixture
def client(server: LiveServer) -> Iterator[Any]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0) as api:
        yield api


def expected(reference: Any, messages: list[dict[str, str]], **kwargs: Any) -> str:
    reference.reset()  # the whole prompt afresh: the backend's prefix reuse must give the same tokens
    stream = reference.create_chat_completion(messages, temperature=0, max_tokens=MAX_TOKENS, stream=True, **kwargs)
    return "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in stream)


def test_greedy_streaming_and_plain_equal_in_process_llama_cpp(server: LiveServer, client: Any,
                                                               reference: Any) -> None:  # fmt: skip
    before = samples(server)
    plain = client.chat.completions.create(model=MODEL_ID, messages=COLOURS, temperature=0, max_tokens=MAX_TOKENS)
    stream = client.chat.completions.create(model=MODEL_ID, messages=CAPITAL, temperature=0, max_tokens=MAX_TOKENS,
                                            stream=True, stream_options={"include_usage": True})  # fmt: skip
    chunks = list(stream)
    after = samples(server)

    assert plain.choices[0].message.content == expected(reference, COLOURS)
    assert plain.choices[0].message.content.strip()
    assert plain.usage.completion_tokens <= MAX_TOKENS
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == expected(reference, CAPITAL)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")
    assert len({c.id for c in chunks}) == 1

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("kitdev_requests_total", status="200") == 2
    finished = delta("kitdev_request_success_total", finished_reason="stop") + delta(
        "kitdev_request_success_total", finished_reason="length"
    )
    assert finished == 2
    assert delta("kitdev_generation_tokens_total") == plain.usage.completion_tokens + chunks[-1].usage.completion_tokens
    assert delta("kitdev_prompt_tokens_total") == plain.usage.prompt_tokens + chunks[-1].usage.prompt_tokens
    assert delta("kitdev_time_to_first_token_seconds_count") == 2
    assert delta("kitdev_e2e_request_latency_seconds_count") == 2


def test_stop_string_spanning_tokens_in_a_stream(server: LiveServer, client: Any, reference: Any) -> None:
    full = expected(reference, COLOURS)
    stream = client.chat.completions.create(model=MODEL_ID, messages=COLOURS, temperature=0, max_tokens=MAX_TOKENS,
                                            stream=True)  # fmt: skip
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(pieces) == full
    index = next(i for i in range(2, len(pieces) - 1) if len(pieces[i]) >= 2 and len(pieces[i + 1]) >= 2)
    stop = pieces[index][-2:] + pieces[index + 1][:2]
    chunks = list(client.chat.completions.create(model=MODEL_ID, messages=COLOURS, temperature=0,
                                                 max_tokens=MAX_TOKENS, stream=True, stop=[stop]))  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full[: full.index(stop)]
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_models_and_health_describe_the_real_backend(server: LiveServer, client: Any) -> None:
    [card] = client.models.list().data
    assert card.id == MODEL_ID
    details = card.model_extra["kitdev"]
    assert details["backend"] == "llama.cpp"
    assert details["reasons"] == ["GGUF"]
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}


def test_a_repeated_prompt_reuses_its_prefix_and_says_so(server: LiveServer, client: Any, reference: Any) -> None:
    before = samples(server)
    first, again = (
        client.chat.completions.create(model=MODEL_ID, messages=CAPITAL, temperature=0, max_tokens=MAX_TOKENS)
        for _ in range(2)
    )
    after = samples(server)

    assert first.choices[0].message.content == again.choices[0].message.content == expected(reference, CAPITAL)
    prompt_tokens = again.usage.prompt_tokens
    assert again.usage.prompt_tokens_details.cached_tokens == prompt_tokens  # and the logits after it: none evaluated
    cached = first.usage.prompt_tokens_details.cached_tokens + again.usage.prompt_tokens_details.cached_tokens
    hits = value(after, "kitdev_prefix_cache_hits_total") - value(before, "kitdev_prefix_cache_hits_total")
    queries = value(after, "kitdev_prefix_cache_queries_total") - value(before, "kitdev_prefix_cache_queries_total")
    assert (hits, queries) == (cached, 2 * prompt_tokens)


def test_a_whole_cached_prompt_samples_and_scores_as_when_it_was_evaluated(server: LiveServer, client: Any) -> None:
    """The second request evaluates nothing (its first token comes from the logits kept with the
    prompt), so equal seeded samples and log-probabilities show those logits are the evaluated ones."""
    messages = [{"role": "user", "content": "Name three colours of the rainbow."}]
    options = {"temperature": 0.9, "seed": 7, "max_tokens": MAX_TOKENS, "logprobs": True, "top_logprobs": 3}
    first, again = (client.chat.completions.create(model=MODEL_ID, messages=messages, **options) for _ in range(2))
    assert again.usage.prompt_tokens_details.cached_tokens == again.usage.prompt_tokens
    assert first.usage.prompt_tokens_details.cached_tokens < first.usage.prompt_tokens
    assert again.choices[0].message.content == first.choices[0].message.content
    assert again.choices[0].logprobs == first.choices[0].logprobs
    assert len(first.choices[0].logprobs.content) == first.usage.completion_tokens


def test_an_empty_completion_prompt_is_a_400_and_the_server_goes_on(server: LiveServer, client: Any) -> None:
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as refused:  # SmolLM2 adds no BOS: nothing to decode
            client.completions.create(model=MODEL_ID, prompt="", max_tokens=3, stream=stream)
        assert refused.value.body["param"] == "prompt"
    reply = client.completions.create(model=MODEL_ID, prompt="The sky is", max_tokens=3, temperature=0)
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 3
