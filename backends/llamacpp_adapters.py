"""GGUF LoRA adapters on one llama.cpp model: loaded once, applied per decode step.

llama.cpp applies adapters to a whole context (``llama_set_adapters_lora``), not per sequence, so the
scheduler decodes the sequences of each adapter choice in their own ``llama_decode`` and switches the
context's adapters between them. Switching is cheap (a pointer set plus a graph re-reserve) compared
with reloading, and the same weights serve base and adapter requests side by side.

Only the scheduler thread calls into this class; the backend reaches it through ``Scheduler.call``.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backends.base import AdapterInfo
from backends.llamacpp_model import GgufModel
from devserver.errors import BackendError


@dataclass
class _Loaded:
    info: AdapterInfo
    handle: Any  # llama_adapter_lora_p
    array: Any  # (llama_adapter_lora_p * 1) for llama_set_adapters_lora
    unloading: bool = False


class AdapterSet:
    """Adapters by name; frees one when it is unloaded and no running sequence still uses it."""

    def __init__(self, model: GgufModel) -> None:
        self._model = model
        self._lib = model.lib
        self._loaded: dict[str, _Loaded] = {}
        self._scale = (ctypes.c_float * 1)(1.0)

    def load(self, name: str, path: Path, source: str | None = None) -> AdapterInfo:
        """Load ``path`` as ``name``; a file for another base model or of the wrong shape is refused."""
        if name in self._loaded:
            raise BackendError(f"an adapter named {name!r} is already loaded", hint="unload it first")
        if not path.is_file():
            raise BackendError(f"adapter {name!r}: {path} is not a file")
        handle = self._lib.llama_adapter_lora_init(self._model.model, str(path).encode())
        if not handle:
            raise BackendError(
                f"adapter {name!r} ({path.name}) does not fit {self._model.path.name}: llama.cpp refused it",
                hint="a GGUF LoRA must be converted for this exact base model (same architecture and shapes)",
            )
        array = (self._lib.llama_adapter_lora_p_ctypes * 1)(handle)
        info = AdapterInfo(name=name, source=source or str(path), kind="gguf-lora")
        self._loaded[name] = _Loaded(info, handle, array)
        return info

    def infos(self) -> tuple[AdapterInfo, ...]:
        return tuple(a.info for a in self._loaded.values() if not a.unloading)

    def available(self, name: str) -> bool:
        entry = self._loaded.get(name)
        return entry is not None and not entry.unloading

    def apply(self, ctx: Any, name: str | None) -> None:
        """Make ``name`` (None: the base model) the context's adapter set for the next decodes."""
        if name is None:
            self._lib.llama_set_adapters_lora(ctx, None, 0, None)
        else:
            self._lib.llama_set_adapters_lora(ctx, self._loaded[name].array, 1, self._scale)

    def unload(self, name: str) -> None:
        """Refuse ``name`` to new requests; ``release`` frees it once no running sequence uses it."""
        entry = self._loaded.get(name)
        if entry is None or entry.unloading:
            raise BackendError(f"no adapter named {name!r} is loaded")
        entry.unloading = True

    def release(self, name: str) -> None:
        """Free an adapter that is being unloaded, once nothing uses it and the context no longer does."""
        entry = self._loaded.get(name)
        if entry is not None and entry.unloading:
            del self._loaded[name]
            self._lib.llama_adapter_lora_free(entry.handle)

    def pending_release(self, name: str) -> bool:
        entry = self._loaded.get(name)
        return entry is not None and entry.unloading

    def close(self) -> None:
        """Free them all (before the model, which would otherwise free them itself)."""
        for entry in self._loaded.values():
            self._lib.llama_adapter_lora_free(entry.handle)
        self._loaded.clear()
