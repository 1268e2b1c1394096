"""The main path, end to end with real parts: pack → push → start → ask through the openai client.

A real docker-registry on loopback, the kit-dev CLI in subprocesses, real llama.cpp on the real
SmolLM2 GGUF, and the official ``openai`` client. Expected texts come from in-process
llama-cpp-python on the same GGUF with the same messages.
"""

from __future__ import annotations

import json
import socket
import time
from functools import cache
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from tests.conftest import smollm2_path
from tests.e2e.conftest import KitDev
from tests.support.registry import RegistryProcess

pytestmark = pytest.mark.slow

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
MAX_TOKENS = 32


@cache
def in_process_text(messages_json: str, max_tokens: int) -> str:
    """What llama-cpp-python itself answers, greedy, for the same messages."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(smollm2_path()), n_ctx=2048, n_threads=2, flash_attn=True, verbose=False)
    reply = llm.create_chat_completion(json.loads(messages_json), temperature=0, max_tokens=max_tokens)
    return reply["choices"][0]["message"]["content"]


def metric_value(text: str, name: str, **labels: str) -> float:
    """One sample from a Prometheus text exposition, 0 if absent."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def test_pack_push_start_and_chat(kitdev: KitDev, registry: RegistryProcess, smollm2_kit_dir: Path, port: int):
    reference = f"{registry.host}/tests/smollm2:1"
    kitdev.run("pack", str(smollm2_kit_dir), "-t", reference, "--push")

    # A user who pulls on another machine: an empty cache.
    kitdev.cache_dir = kitdev.cache_dir.with_name("cache-fresh")
    manifest = httpx.get(
        f"{registry.url}/v2/tests/smollm2/manifests/1",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    ).json()
    layer_types = [layer["mediaType"] for layer in manifest["layers"]]
    assert layer_types == [
        "application/vnd.kitops.modelkit.model.v1.tar",
        "application/vnd.kitops.modelkit.code.v1.tar",
        "application/vnd.kitops.modelkit.docs.v1.tar",
    ]
    gets_before = len(registry.blob_gets())

    started = kitdev.run("start", "--modelkit", reference, "--port", str(port))
    assert f"http://127.0.0.1:{port}/v1" in started.stdout

    # Serving fetched the config and the model layer, never code or docs.
    fetched = registry.blob_gets()[gets_before:]
    assert sorted(fetched) == sorted([manifest["config"]["digest"], manifest["layers"][0]["digest"]])

    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
    expected = in_process_text(json.dumps(MESSAGES), MAX_TOKENS)
    assert expected.strip(), "llama-cpp-python produced no text to compare with"

    reply = client.chat.completions.create(model="smollm2", messages=MESSAGES, temperature=0, max_tokens=MAX_TOKENS)
    assert reply.choices[0].message.content == expected
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage is not None and reply.usage.completion_tokens > 0

    streamed = client.chat.completions.create(
        model=reference, messages=MESSAGES, temperature=0, max_tokens=MAX_TOKENS, stream=True
    )
    chunks = list(streamed)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected

    models = client.models.list()
    assert [m.id for m in models.data] == ["smollm2"]

    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    assert metric_value(metrics, "kitdev_requests_total", model="smollm2", status="200") == 2
    assert metric_value(metrics, "kitdev_time_to_first_token_seconds_count", model="smollm2") == 2
    assert metric_value(metrics, "kitdev_generation_tokens_total", model="smollm2") == 2 * (
        reply.usage.completion_tokens
    )

    status = kitdev.run("status")
    assert "ready" in status.stdout
    kitdev.run("stop")
    assert kitdev.run("status", check=False).returncode == 3

    # A second start of the same reference is served from the cache: no blob requests at all.
    gets_before = len(registry.blob_gets())
    kitdev.run("start", "--modelkit", reference, "--port", str(port))
    again = client.chat.completions.create(model="smollm2", messages=MESSAGES, temperature=0, max_tokens=MAX_TOKENS)
    assert again.choices[0].message.content == expected
    assert registry.blob_gets()[gets_before:] == []


def test_start_failure_prints_the_servers_error_line(kitdev: KitDev, tmp_path: Path, port: int):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "Kitfile").write_text("manifestVersion: 1.0.0\nmodel:\n  name: m\n  path: missing.gguf\n")
    result = kitdev.run("start", str(broken), "--port", str(port), check=False)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kit-dev: error:")
    assert "missing.gguf" in lines[0] or "GGUF" in lines[0]
    assert kitdev.run("status", check=False).returncode == 3


def test_start_needs_a_target(kitdev: KitDev):
    result = kitdev.run("start", check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "kit-dev: error: start needs exactly one of DIRECTORY or --modelkit REF "
        "(e.g. `kit-dev start --modelkit 127.0.0.1:5000/org/model:1`)"
    )


def test_a_model_that_fails_to_load_ends_start_at_once(kitdev: KitDev, smollm2_kit_dir: Path, port: int):
    began = time.monotonic()
    result = kitdev.run(
        "start", str(smollm2_kit_dir), "--port", str(port), "--ctx-size", "10000000", "--wait-timeout", "120",
        check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert time.monotonic() - began < 60  # the server said so on /health: no waiting out --wait-timeout
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("kit-dev: error: the model failed to load: ") and "--ctx-size" in line
    assert kitdev.run("status", check=False).returncode == 3  # the failed server was stopped


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["./no-such-model"], "no directory ./no-such-model (give one that holds a Kitfile, or --modelkit REF)"),
        (["x:1", "--port", "0"], "--port (env KIT_DEV_PORT): input should be greater than or equal to 1, got 0"),
    ],
)
def test_start_refuses_bad_arguments_in_one_line(kitdev: KitDev, args: list[str], message: str):
    result = kitdev.run("start", *args, check=False)
    assert (result.returncode, result.stderr.strip()) == (1, f"kit-dev: error: {message}")


def test_a_port_in_use_is_named(kitdev: KitDev, smollm2_kit_dir: Path, port: int):
    with socket.create_server(("127.0.0.1", port)):
        result = kitdev.run("start", str(smollm2_kit_dir), "--port", str(port), check=False)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    bind = f"error while attempting to bind on address ('127.0.0.1', {port})"
    assert line.startswith(f"kit-dev: error: the server exited while starting: [Errno 98] {bind}")


def test_the_stop_hint_names_the_cache_dir_it_was_given(kitdev: KitDev, smollm2_kit_dir: Path, port: int):
    cache = str(kitdev.cache_dir)
    started = kitdev.run("start", str(smollm2_kit_dir), "--port", str(port), "--cache-dir", cache)
    assert started.stdout.strip().endswith(f"stop it with `kit-dev stop --cache-dir {cache}`")
    assert kitdev.run("stop", "--cache-dir", cache).returncode == 0
