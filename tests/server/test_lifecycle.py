"""Loading in the background, load failures, the API key, and shutdown."""

from __future__ import annotations

import logging
import threading

import httpx
import pytest

from backends.base import Backend
from backends.fake import FakeBackend
from devserver.errors import BackendError
from tests.server.conftest import ServerFactory, chat_body


def test_health_is_503_loading_until_the_backend_is_loaded(serve: ServerFactory) -> None:
    release = threading.Event()
    backend = FakeBackend()

    def slow_load() -> Backend:
        release.wait(10)
        return backend

    server = serve(slow_load, ready=False)
    response = httpx.get(f"{server.url}/health")
    assert (response.status_code, response.json()) == (503, {"status": "loading"})
    chat = httpx.post(f"{server.url}/v1/chat/completions", json=chat_body())
    assert chat.status_code == 503
    assert chat.json()["error"]["code"] == "model_loading"
    assert httpx.get(f"{server.url}/metrics").status_code == 200
    release.set()
    server.wait_ready()
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}


def test_load_failure_is_reported_by_health_and_logged_once(serve: ServerFactory,
                                                           caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    def broken() -> Backend:
        raise BackendError("no GGUF model file found in /models", hint="check the Kitfile")

    with caplog.at_level(logging.ERROR, logger="devserver.server.app"):
        server = serve(broken, ready=False)
        for _ in range(200):
            response = httpx.get(f"{server.url}/health")
            if response.json()["status"] != "loading":
                break
    assert response.status_code == 503
    assert response.json() == {"status": "error",
                               "error": "no GGUF model file found in /models (check the Kitfile)"}  # fmt: skip
    records = [r for r in caplog.records if r.name == "devserver.server.app"]
    assert len(records) == 1 and "\n" not in records[0].getMessage()
    chat = httpx.post(f"{server.url}/v1/chat/completions", json=chat_body())
    assert chat.status_code == 500 and "failed to load" in chat.json()["error"]["message"]


def test_a_chat_template_that_does_not_parse_fails_the_load(serve: ServerFactory) -> None:
    server = serve(FakeBackend(chat_template="{% for m in messages %}{{ m.content }"), ready=False)
    for _ in range(200):
        body = httpx.get(f"{server.url}/health").json()
        if body["status"] != "loading":
            break
    assert body["status"] == "error"
    assert "chat template does not parse" in body["error"]


def test_a_template_override_replaces_the_models_own(serve: ServerFactory) -> None:
    backend = FakeBackend()
    server = serve(backend, chat_template="{% for m in messages %}[{{ m.role }}] {{ m.content }}{% endfor %}")
    assert httpx.post(f"{server.url}/v1/chat/completions", json=chat_body()).status_code == 200
    assert backend.requests[0].prompt == "[user] Say hello"


def test_a_template_that_raises_is_a_400(serve: ServerFactory) -> None:
    template = "{{ raise_exception('roles must alternate') }}"
    server = serve(FakeBackend(chat_template=template))
    response = httpx.post(f"{server.url}/v1/chat/completions", json=chat_body())
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "roles must alternate"


def test_api_key_guards_v1_but_not_health_or_metrics(serve: ServerFactory) -> None:
    server = serve(FakeBackend(), api_key="s3cret")
    assert httpx.get(f"{server.url}/v1/models").status_code == 401
    wrong = httpx.get(f"{server.url}/v1/models", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "invalid_api_key"
    unauthorised_chat = httpx.post(f"{server.url}/v1/chat/completions", json=chat_body())
    assert unauthorised_chat.status_code == 401
    ok = httpx.get(f"{server.url}/v1/models", headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert httpx.get(f"{server.url}/metrics").status_code == 200


def test_shutdown_closes_the_backend(serve: ServerFactory) -> None:
    backend = FakeBackend()
    server = serve(backend)
    server.__exit__(None, None, None)
    assert backend.closed


def test_openapi_documents_the_chat_request(serve: ServerFactory) -> None:
    server = serve(FakeBackend())
    schema = httpx.get(f"{server.url}/openapi.json").json()
    body = schema["paths"]["/v1/chat/completions"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ChatCompletionRequest"}
    assert "messages" in schema["components"]["schemas"]["ChatCompletionRequest"]["properties"]
