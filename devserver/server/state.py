"""What one app holds while it runs: kept on ``app.state.kitdev``, never in module globals."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Literal

from backends.base import AdapterInfo, Backend
from backends.chat_template import ChatTemplate
from devserver.errors import BackendError, ModelNotFound, ServerNotReady
from devserver.server.config import ServerConfig
from devserver.server.metrics import ServerMetrics
from devserver.server.worker import ModelWorker

LoadStatus = Literal["loading", "ok", "error", "stopped"]


@dataclass
class Loaded:
    """The parts that exist only once the backend has loaded."""

    backend: Backend
    worker: ModelWorker
    template: ChatTemplate
    adapters: dict[str, AdapterInfo] = field(default_factory=dict)  # served as "<model id>/<name>"


@dataclass
class ServerState:
    config: ServerConfig
    metrics: ServerMetrics
    status: LoadStatus = "loading"
    error: str | None = None  # the one-line load failure, when status == "error"
    loaded: Loaded | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    lock: threading.Lock = field(default_factory=threading.Lock)  # load thread vs shutdown

    def ready(self) -> Loaded:
        """The loaded model, or the error a request gets while there is none."""
        if self.loaded is not None and self.status == "ok":
            return self.loaded
        if self.status == "error":
            raise BackendError(f"the model failed to load: {self.error}")
        if self.status == "stopped":
            raise ServerNotReady("the server is shutting down")
        raise ServerNotReady("the model is still loading", hint="poll /health until it says ok")

    def served_ids(self) -> list[tuple[str, AdapterInfo | None]]:
        """Every model id a request may name: the base, then ``<base>/<adapter>`` per adapter."""
        base = self.config.model.id
        adapters = list(self.loaded.adapters.values()) if self.loaded is not None else []
        return [(base, None), *((f"{base}/{a.name}", a) for a in adapters)]

    def resolve_model(self, name: str) -> str | None:
        """The adapter a request's ``model`` selects (None for the base); ``ModelNotFound`` if not served."""
        served = self.config.model
        if name == served.id or name in served.aliases:
            return None
        for prefix in (served.id, *served.aliases):
            adapter = name.removeprefix(f"{prefix}/") if name.startswith(f"{prefix}/") else None
            if adapter is not None and self.loaded is not None and adapter in self.loaded.adapters:
                return adapter
        ids = ", ".join(repr(i) for i, _ in self.served_ids())
        raise ModelNotFound(f"the model {name!r} does not exist; this server serves {ids}", param="model")
