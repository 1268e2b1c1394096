"""Servers for the conformance suite: a real uvicorn over real engines, driven like a user's client.

``llama_server`` serves SmolLM2 (GGUF) through llama.cpp, picked by ``choose_backend`` as the CLI
picks it; ``hf_server`` serves the same model as safetensors through transformers (the fixture that
``scripts/build_fixtures.py`` builds). Both are packed, pushed to a real registry and pulled into an
empty cache first, as ``kit-dev start --modelkit`` does. ``template_kits`` are ModelKit sources made from SmolLM2 with
the chat template in the GGUF replaced (no system slot, one that does not parse, Hermes tool
syntax). ``max_tokens_limit`` keeps every generation short so the whole suite stays quick.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from backends.base import Backend
from backends.select import EngineOptions, choose_backend
from devserver.server.app import create_app
from tests.server.conftest import MODEL_ID, LiveServer, make_config
from tests.support.pulled_kits import kit_source, pulled
from tests.support.registry import RegistryProcess

OPTIONS = EngineOptions(ctx_size=2048, threads=2, parallel=4)
TOKENS_LIMIT = 24

NO_SYSTEM_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
UNPARSABLE_TEMPLATE = "{% for message in messages %}{{ message['content'] }"
HERMES_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}\n\n"
    "{% endif %}You may call functions. <tools>\n{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}</tools>\n"
    'Return each call as <tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call><|im_end|>\n{% endif %}"
    "{% for message in messages %}{% if not (tools and loop.first and message['role'] == 'system') %}"
    "<|im_start|>{{ message['role'] }}\n{% if message.tool_calls %}{% for call in message.tool_calls %}"
    '<tool_call>\n{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}'
    "\n</tool_call>{% endfor %}{% else %}{{ message['content'] }}{% endif %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TEMPLATES = {"no-system": NO_SYSTEM_TEMPLATE, "unparsable": UNPARSABLE_TEMPLATE, "hermes": HERMES_TEMPLATE}


def llama_loader(gguf: Path) -> Callable[[], Backend]:
    from backends import llamacpp

    choice = choose_backend(gguf, options=OPTIONS)
    return lambda: llamacpp.load(choice, OPTIONS)


def hf_loader(model_dir: Path) -> Callable[[], Backend]:
    from backends import hf

    options = EngineOptions(ctx_size=2048, threads=2)
    choice = choose_backend(model_dir, backend="transformers", options=options)
    return lambda: hf.load(choice, options)


def start(loader: Callable[[], Backend], *, ready: bool = True, **config: Any) -> LiveServer:
    settings: dict[str, Any] = {"max_tokens_limit": TOKENS_LIMIT, "queue_size": 32, **config}
    server = LiveServer(create_app(make_config(**settings), loader)).__enter__()
    if ready:
        server.wait_ready(180)
    return server


@pytest.fixture(scope="session")
def llama_server(
    smollm2_gguf: Path, session_registry: RegistryProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """SmolLM2 GGUF served from a ModelKit pulled from the test registry."""
    pytest.importorskip("llama_cpp")
    work = tmp_path_factory.mktemp("llama-kit")
    resolved = pulled(kit_source(work, smollm2_gguf, name=MODEL_ID), session_registry, work, "conformance/gguf")
    server = start(llama_loader(resolved.model_path), allow_runtime_lora=True)
    yield server
    server.__exit__(None, None, None)


@pytest.fixture(scope="session")
def hf_server(
    built_fixtures: dict[str, Path], session_registry: RegistryProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """SmolLM2 safetensors served from a ModelKit pulled from the test registry."""
    work = tmp_path_factory.mktemp("hf-kit")
    source = kit_source(work, built_fixtures["hf_model"], name=MODEL_ID)
    resolved = pulled(source, session_registry, work, "conformance/safetensors")
    server = start(hf_loader(resolved.model_path), allow_runtime_lora=True)
    yield server
    server.__exit__(None, None, None)


@pytest.fixture(scope="session", params=["llama.cpp", "transformers"])
def served(request: pytest.FixtureRequest) -> tuple[str, LiveServer]:
    """Each backend in turn: (its name, its server)."""
    name = "llama_server" if request.param == "llama.cpp" else "hf_server"
    return request.param, request.getfixturevalue(name)


@pytest.fixture(scope="session")
def template_kits(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> dict[str, Path]:
    """ModelKit source directories (a Kitfile and a GGUF) whose GGUF carries each template of ``TEMPLATES``."""
    kits: dict[str, Path] = {}
    for name, template in TEMPLATES.items():
        directory = tmp_path_factory.mktemp(f"kit-{name}")
        (directory / "template.jinja").write_text(template)
        gguf = directory / "model.gguf"
        subprocess.run(
            [sys.executable, "-m", "gguf.scripts.gguf_new_metadata", str(smollm2_gguf), str(gguf),
             "--chat-template-file", str(directory / "template.jinja"), "--force"],
            check=True, capture_output=True, timeout=300,
        )  # fmt: skip
        (directory / "Kitfile").write_text(
            "manifestVersion: 1.0.0\npackage:\n  name: smollm2-" + name + "\n"
            f"model:\n  name: {MODEL_ID}\n  path: model.gguf\n  format: gguf\n"
        )
        kits[name] = gguf
    return kits
