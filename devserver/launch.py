"""From settings and a resolved ModelKit to a running server: choose the engine, build the app, serve.

This is the one place that knows every package: it hands the backend that ``backends.select`` chose
to the server, which knows only the ``backends.base`` protocol.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backends.base import Backend
from backends.select import BackendChoice, EngineOptions, PartInfo, choose_backend
from devserver.errors import BackendError
from devserver.oci.options import RegistryOptions
from devserver.oci.store import LocalStore
from devserver.resolve import ResolvedModelKit, resolve_reference
from devserver.server.config import PullStats, ServedModel, ServerConfig
from devserver.settings import Settings

log = logging.getLogger(__name__)

# Kitfile model.parameters keys that set engine defaults (flags still win), by the names people use.
_PARAMETER_KEYS: dict[str, tuple[str, ...]] = {
    "ctx_size": ("ctx_size", "context_size", "n_ctx", "context_length"),
    "threads": ("threads", "n_threads"),
    "n_gpu_layers": ("n_gpu_layers", "ngl", "gpu_layers"),
}


def engine_options(settings: Settings, parameters: Any) -> EngineOptions:
    """Flags first; then what the Kitfile's ``model.parameters`` names; else the engine's defaults."""
    params = parameters if isinstance(parameters, dict) else {}

    def pick(field: str) -> int | None:
        flag = getattr(settings, field)
        if flag is not None:
            return int(flag)
        for key in _PARAMETER_KEYS[field]:
            value = params.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        return None

    return EngineOptions(
        ctx_size=pick("ctx_size"),
        threads=pick("threads"),
        n_gpu_layers=pick("n_gpu_layers"),
        parallel=settings.parallel,
        prompt_cache_mib=settings.prompt_cache_mib,
        flash_attn=settings.flash_attn,
        model_file=settings.model_file,
        trust_remote_code=settings.trust_remote_code,
        allow_pickle=settings.allow_pickle,
    )


def choose(resolved: ResolvedModelKit, settings: Settings, options: EngineOptions) -> BackendChoice:
    model = resolved.kitfile.model
    parts = [PartInfo(resolved.root / p.path, p.type or None, p.name or None) for p in model.parts] if model else []
    choice = choose_backend(
        resolved.model_path,
        model_format=(model.format or None) if model else None,
        framework=(model.framework or None) if model else None,
        parts=parts,
        backend=settings.backend,
        device=settings.device,
        options=options,
    )
    for reason in choice.reasons:
        log.info("backend: %s", reason)
    return choice


def backend_loader(choice: BackendChoice, options: EngineOptions) -> Callable[[], Backend]:
    """A thunk the app calls in a thread at start-up, so ``/health`` answers 503 while it loads."""

    def load() -> Backend:
        if choice.backend == "llama.cpp":
            from backends import llamacpp

            return llamacpp.load(choice, options)
        if choice.backend == "transformers":
            from backends import hf

            return hf.load(choice, options)
        raise BackendError(f"unknown backend {choice.backend!r}")

    return load


def pull_stats(resolved: ResolvedModelKit, seconds: float) -> PullStats | None:
    """What resolving cost, for ``/metrics``; None for a directory served in place."""
    if resolved.source == "directory":
        return None
    return PullStats(
        seconds=seconds,
        bytes=resolved.fetched_bytes,
        cache_hits=resolved.cache_hits,
        cache_misses=resolved.cache_misses,
    )


def adapter_resolver(store: LocalStore, options: RegistryOptions) -> Callable[[str], Path]:
    """For ``POST /v1/load_lora_adapter`` with a ModelKit reference: pull it, return its model path."""

    def resolve_adapter(reference: str) -> Path:
        return resolve_reference(reference, store, options=options).model_path

    return resolve_adapter


def server_config(
    resolved: ResolvedModelKit,
    settings: Settings,
    *,
    store: LocalStore,
    registry_options: RegistryOptions,
    resolve_seconds: float,
) -> ServerConfig:
    aliases = tuple(a for a in (resolved.reference,) if a and a != resolved.model_id)
    package = resolved.kitfile.package
    served = ServedModel(
        id=resolved.model_id,
        aliases=aliases,
        reference=resolved.reference or str(resolved.root),
        digest=resolved.digest,
        version=(package.version if package and package.version else None) or resolved.tag,
        metadata=resolved.metadata,
    )
    template = settings.chat_template.read_text() if settings.chat_template else None
    return ServerConfig(
        model=served,
        api_key=settings.api_key,
        queue_size=settings.queue_size,
        max_tokens_limit=settings.max_tokens_limit,
        chat_template=template,
        metrics_compat=tuple(settings.metrics_compat),
        allow_runtime_lora=settings.allow_runtime_lora,
        lora_resolver=adapter_resolver(store, registry_options) if settings.allow_runtime_lora else None,
        pull=pull_stats(resolved, resolve_seconds),
        cache_dir=settings.cache_dir,
    )
