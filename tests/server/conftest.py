"""A real uvicorn on a free loopback port for every server test, and helpers to read SSE back."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from backends.base import Backend
from backends.fake import FakeBackend
from devserver.server.app import create_app
from devserver.server.config import ServedModel, ServerConfig
from tests.support.ports import free_port

MODEL_ID = "tiny-chat"
ALIAS = "127.0.0.1:5000/acme/tiny-chat:v1"


def make_config(**overrides: Any) -> ServerConfig:
    model = ServedModel(
        id=MODEL_ID,
        aliases=(ALIAS,),
        reference=ALIAS,
        digest="sha256:" + "ab" * 32,
        version="v1",
        metadata={"backend": "fake", "license": "Apache-2.0"},
    )
    return ServerConfig(**{"model": model, "queue_size": 4, "sse_ping_seconds": 15.0, **overrides})


@dataclass
class LiveServer:
    """uvicorn serving ``app`` in a thread, started and stopped as a context manager."""

    app: FastAPI
    port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="uvicorn-test", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(15)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if httpx.get(f"{self.url}/health").status_code == 200:
                return
            time.sleep(0.02)
        raise TimeoutError("the model did not load")


ServerFactory = Callable[..., LiveServer]


@pytest.fixture
def serve() -> Iterator[ServerFactory]:
    """``serve(backend_or_loader, **config)`` → a started (and loaded) server, stopped after the test."""
    servers: list[LiveServer] = []

    def start(backend: FakeBackend | Callable[[], Backend], *, ready: bool = True, **config: Any) -> LiveServer:
        loader = (lambda: backend) if isinstance(backend, FakeBackend) else backend
        app = create_app(make_config(**config), loader)
        server = LiveServer(app).__enter__()
        servers.append(server)
        if ready:
            server.wait_ready()
        return server

    yield start
    for server in reversed(servers):
        server.__exit__(None, None, None)


def chat_body(**overrides: Any) -> dict[str, Any]:
    return {"model": MODEL_ID, "messages": [{"role": "user", "content": "Say hello"}], **overrides}


def sse_data(lines: Iterator[str]) -> list[str]:
    """The ``data:`` payloads of an SSE stream, in order (comments and blank lines skipped)."""
    return [line[len("data:") :].strip() for line in lines if line.startswith("data:")]


def stream_chat(base_url: str, body: dict[str, Any], **kwargs: Any) -> tuple[int, list[str]]:
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json={**body, "stream": True},
                      timeout=30, **kwargs) as response:  # fmt: skip
        if response.status_code != 200:
            response.read()
            return response.status_code, [response.text]
        return 200, sse_data(response.iter_lines())


def chunks(payloads: list[str]) -> list[dict[str, Any]]:
    assert payloads[-1] == "[DONE]"
    return [json.loads(p) for p in payloads[:-1]]
