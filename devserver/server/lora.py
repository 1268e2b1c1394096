"""LoRA adapters loaded and unloaded while serving: vLLM's ``/v1/load_lora_adapter`` and
``/v1/unload_lora_adapter``, same paths and bodies.

Off unless the server was started with ``allow_runtime_lora`` (vLLM gates it behind
``VLLM_ALLOW_RUNTIME_LORA_UPDATING``): letting any client make the server read a path is a
decision for whoever starts it. ``lora_path`` is a local path or, when the server has a resolver, a
ModelKit reference. The adapter's kind is checked against the engine before the engine sees it, so
a PEFT adapter for a GGUF base (or the reverse) is a 400 that says what to do instead of an engine
error. Once loaded, an adapter is served as ``<model id>/<lora_name>`` like those of the ModelKit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import StringConstraints
from starlette.concurrency import run_in_threadpool

from backends.base import AdapterInfo
from devserver.errors import InvalidRequest, KitDevError
from devserver.server.protocol import OpenAIBaseModel
from devserver.server.state import Loaded, ServerState

AdapterName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]


class RuntimeLoraDisabled(InvalidRequest):
    status_code = 403
    code = "runtime_lora_disabled"


class LoadLoRAAdapterRequest(OpenAIBaseModel):
    lora_name: AdapterName
    lora_path: Annotated[str, StringConstraints(min_length=1, max_length=4096)]


class UnloadLoRAAdapterRequest(OpenAIBaseModel):
    lora_name: AdapterName


def _enabled(state: ServerState) -> Loaded:
    if not state.config.allow_runtime_lora:
        raise RuntimeLoraDisabled(
            "loading LoRA adapters at runtime is off", hint="start the server with --allow-runtime-lora"
        )
    return state.ready()


async def load_adapter(state: ServerState, body: LoadLoRAAdapterRequest) -> str:
    loaded = _enabled(state)
    if body.lora_name in loaded.adapters:
        raise InvalidRequest(f"an adapter named {body.lora_name!r} is already loaded", param="lora_name")
    load = getattr(loaded.backend, "load_adapter", None)
    if not callable(load):
        raise InvalidRequest(
            f"the {loaded.backend.info.name} backend cannot load adapters while serving", param="lora_path"
        )
    path = await run_in_threadpool(_local_path, state, body.lora_path)
    kind = _kind(path, loaded)
    try:
        await run_in_threadpool(load, body.lora_name, path)
    except KitDevError:
        raise
    except (OSError, ValueError, RuntimeError) as exc:  # the engine's own refusal of these bytes
        raise InvalidRequest(f"the adapter at {body.lora_path} could not be loaded: {exc}", param="lora_path") from exc
    loaded.adapters[body.lora_name] = AdapterInfo(body.lora_name, body.lora_path, kind)
    return f"Success: LoRA adapter '{body.lora_name}' added successfully."


async def unload_adapter(state: ServerState, body: UnloadLoRAAdapterRequest) -> str:
    loaded = _enabled(state)
    if body.lora_name not in loaded.adapters:
        raise InvalidRequest(f"no adapter named {body.lora_name!r} is loaded", param="lora_name")
    unload = getattr(loaded.backend, "unload_adapter", None)
    if not callable(unload):
        raise InvalidRequest(
            f"the {loaded.backend.info.name} backend cannot unload adapters while serving", param="lora_name"
        )
    await run_in_threadpool(unload, body.lora_name)
    del loaded.adapters[body.lora_name]
    return f"Success: LoRA adapter '{body.lora_name}' removed successfully."


def _local_path(state: ServerState, value: str) -> Path:
    """A local file or directory, else a ModelKit reference the resolver pulls (blocking)."""
    path = Path(value).expanduser()
    if path.exists():
        return path
    resolver = state.config.lora_resolver
    if resolver is None or value.startswith(("/", ".", "~")):
        raise InvalidRequest(f"no adapter at {value}", param="lora_path")
    return resolver(value)


def _kind(path: Path, loaded: Loaded) -> Literal["gguf-lora", "peft-lora"]:
    """The adapter's format, refused when the loaded engine cannot apply it."""
    if path.is_file() and path.suffix == ".gguf":
        kind: Literal["gguf-lora", "peft-lora"] = "gguf-lora"
    elif path.is_dir() and (path / "adapter_config.json").is_file():
        kind = "peft-lora"
    else:
        raise InvalidRequest(
            f"{path.name} is neither a GGUF LoRA file nor a PEFT adapter directory (adapter_config.json)",
            param="lora_path",
        )
    engine = loaded.backend.info.name
    if kind == "peft-lora" and engine == "llama.cpp":
        raise InvalidRequest(
            "a PEFT adapter cannot be applied to a GGUF base model",
            param="lora_path",
            hint="convert it with llama.cpp's convert_lora_to_gguf.py and load the .gguf",
        )
    if kind == "gguf-lora" and engine == "transformers":
        raise InvalidRequest(
            "a GGUF LoRA cannot be applied to a transformers (safetensors) base model",
            param="lora_path",
            hint="load the adapter's PEFT directory instead",
        )
    return kind
