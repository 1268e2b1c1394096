"""The app factory and the uvicorn runner.

``create_app`` returns at once; the backend loads in a thread started by the lifespan, so ``/health``
answers 503 ``loading`` from the first second and the CLI can report progress. A load failure is
logged as one line and reported by ``/health`` (503 with the error); the server keeps answering.
All state lives on ``app.state.kitdev``; nothing is module-global, so tests build as many apps as
they like.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from backends.base import Backend
from backends.chat_template import ChatTemplate
from devserver import __version__
from devserver.errors import BackendError, KitDevError
from devserver.server import routes
from devserver.server.config import ServerConfig
from devserver.server.errors import install_error_handlers
from devserver.server.metrics import ServerMetrics
from devserver.server.metrics_http import StatusCounter
from devserver.server.state import Loaded, ServerState
from devserver.server.worker import ModelWorker

log = logging.getLogger(__name__)


def create_app(
    config: ServerConfig,
    load_backend: Callable[[], Backend],
    *,
    registry: CollectorRegistry | None = None,
) -> FastAPI:
    """An OpenAI-compatible app serving the model that ``load_backend`` loads (called in a thread)."""
    state = ServerState(config=config, metrics=ServerMetrics(config, registry))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = threading.Thread(target=_load, args=(state, load_backend), name="kitdev-loader", daemon=True)
        loader.start()
        state.metrics.start()
        try:
            yield
        finally:
            _shutdown(state)
            state.metrics.close()

    app = FastAPI(title="kit-dev", version=__version__, lifespan=lifespan)
    app.state.kitdev = state
    install_error_handlers(app)
    app.add_middleware(StatusCounter, count=state.metrics.count_http)
    app.include_router(routes.api)
    app.include_router(routes.probes)
    _document_request_schemas(app)
    return app


def _load(state: ServerState, load_backend: Callable[[], Backend]) -> None:
    backend: Backend | None = None
    try:
        started = time.perf_counter()
        backend = load_backend()
        load_seconds = time.perf_counter() - started
        template = _template(state.config, backend)
        worker = ModelWorker(backend, state.config.queue_size)
    except Exception as exc:
        message = exc.one_line() if isinstance(exc, KitDevError) else f"{type(exc).__name__}: {exc}"
        log.error("the model failed to load: %s", message)
        log.debug("load failure", exc_info=exc)
        if backend is not None:
            backend.close()
        with state.lock:
            state.error = message
            if state.status == "loading":
                state.status = "error"
        return
    with state.lock:
        if state.status == "stopped":  # shut down while we were loading
            backend.close()
            return
        worker.start()
        state.metrics.watch_worker(lambda: worker.running, lambda: worker.waiting)
        state.metrics.model_loaded(backend.info, load_seconds)
        adapters = {a.name: a for a in backend.info.adapters}
        state.loaded = Loaded(backend=backend, worker=worker, template=template, adapters=adapters)
        state.status = "ok"
    log.info("model %r loaded: %s on %s", state.config.model.id, backend.info.name, backend.info.device)


def _template(config: ServerConfig, backend: Backend) -> ChatTemplate:
    """Compile the override or the model's own template; one that does not parse fails the start
    (a silent fallback would serve prompts the model was never trained on), naming the flag."""
    if config.chat_template is not None:
        try:
            return ChatTemplate.for_backend(config.chat_template, backend.special_tokens)
        except BackendError as exc:
            message = exc.message.replace("the chat template", "the --chat-template file", 1)
            raise BackendError(message, hint="fix the file passed with --chat-template") from exc
    if not backend.chat_template:
        raise BackendError("the model ships no chat template", hint="pass --chat-template FILE")
    try:
        return ChatTemplate.for_backend(backend.chat_template, backend.special_tokens)
    except BackendError as exc:
        message = exc.message.replace("the chat template", "the model's own chat template", 1)
        raise BackendError(message, hint="override it with --chat-template FILE") from exc


def _shutdown(state: ServerState) -> None:
    with state.lock:
        state.status = "stopped"
        loaded, state.loaded = state.loaded, None
    if loaded is not None:
        loaded.worker.close()
        loaded.backend.close()


def _document_request_schemas(app: FastAPI) -> None:
    """Put the request schemas into OpenAPI; the routes parse their bodies themselves."""
    original = app.openapi

    def openapi() -> dict[str, Any] | None:
        if app.openapi_schema is None:
            schema = original()
            schema.setdefault("components", {}).setdefault("schemas", {}).update(routes.request_schemas())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, *, log_level: str | int = "info") -> None:
    """Run ``app`` with uvicorn until interrupted (SIGINT/SIGTERM shut it down gracefully)."""
    level = log_level.lower() if isinstance(log_level, str) else logging.getLevelName(log_level).lower()
    uvicorn.run(app, host=host, port=port, log_level=level, timeout_graceful_shutdown=5)
