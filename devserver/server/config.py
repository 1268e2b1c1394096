"""What the server needs to know that is not the engine: the served model's names and server knobs.

Built by the CLI from the resolved ModelKit and the settings, then handed to ``create_app``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ServedModel:
    """The ids a request's ``model`` may name, and what ``/v1/models`` and metrics show about them."""

    id: str  # the Kitfile's model.name, else package.name
    aliases: tuple[str, ...] = ()  # e.g. the full ModelKit reference
    reference: str | None = None  # the ModelKit reference or local directory served
    digest: str | None = None  # manifest digest, when served from a ModelKit
    version: str | None = None  # package.version, else the reference's tag
    metadata: dict[str, Any] = field(default_factory=dict)  # shown under /v1/models "kitdev"


@dataclass(frozen=True)
class PullStats:
    """What getting the ModelKit onto disk cost at start-up; shown by ``/metrics`` (launch measures it)."""

    seconds: float  # resolving the reference: manifest, blobs and unpacking
    bytes: int  # downloaded from the registry; 0 when the cache held everything
    cache_hits: int  # blobs the cache already held
    cache_misses: int  # blobs downloaded


@dataclass(frozen=True)
class ServerConfig:
    model: ServedModel
    api_key: str | None = None  # when set, /v1/* needs "Authorization: Bearer <key>"
    queue_size: int = 64  # requests waiting per model before 429
    max_tokens_limit: int | None = None  # a cap on generated tokens per request (fuzzing, shared boxes)
    chat_template: str | None = None  # overrides the model's own template (--chat-template FILE)
    metrics_compat: tuple[str, ...] = ()  # extra metric name sets to expose, e.g. ("vllm",)
    sse_ping_seconds: float = 15.0
    allow_runtime_lora: bool = False  # POST /v1/load_lora_adapter and /v1/unload_lora_adapter (vLLM's)
    lora_resolver: Callable[[str], Path] | None = None  # ModelKit reference → local adapter path
    pull: PullStats | None = None  # None when a local directory is served in place
    cache_dir: Path | None = None  # the ModelKit cache whose size /metrics reports; None: not reported
    gpu_sample_seconds: float = 1.0  # how often the background thread reads NVML
