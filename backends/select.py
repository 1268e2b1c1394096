"""Which engine serves a model, on which device, and why.

The choice is made from what the ModelKit says (Kitfile ``model.format``/``framework``, part types),
the files actually unpacked, and the hardware. It is explainable (``BackendChoice.reasons``, logged at
start and shown in ``/v1/models``) and overridable (``--backend``, ``--device``). A combination that
cannot work raises ``BackendError`` with one line saying what to pass instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from devserver.errors import BackendError

BackendName = Literal["llama.cpp", "transformers"]
GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class EngineOptions:
    """Engine settings from flags, else the Kitfile's ``model.parameters``, else defaults."""

    ctx_size: int | None = None
    threads: int | None = None
    n_gpu_layers: int | None = None
    parallel: int | None = None
    model_file: str | None = None
    trust_remote_code: bool = False
    allow_pickle: bool = False


@dataclass(frozen=True)
class AdapterSpec:
    name: str
    path: Path
    kind: Literal["gguf-lora", "peft-lora"]


@dataclass(frozen=True)
class BackendChoice:
    backend: BackendName
    device: str
    model_path: Path  # the GGUF file (llama.cpp) or the model directory (transformers)
    adapters: tuple[AdapterSpec, ...] = ()
    reasons: tuple[str, ...] = field(default_factory=tuple)


def is_gguf(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(4) == GGUF_MAGIC
    except OSError:
        return False


def choose_backend(
    model_path: Path,
    *,
    model_format: str | None = None,
    backend: str | None = None,
    device: str | None = None,
    options: EngineOptions = EngineOptions(),
) -> BackendChoice:
    """Pick the engine for the unpacked model at ``model_path`` (a file or a directory)."""
    ggufs = [model_path] if model_path.is_file() else sorted(model_path.rglob("*.gguf"))
    ggufs = [p for p in ggufs if is_gguf(p)]
    if backend not in (None, "llama.cpp"):
        raise BackendError(f"backend {backend!r} is not available yet", hint="pass --backend llama.cpp")
    if not ggufs:
        raise BackendError(
            f"no GGUF model file found in {model_path}",
            hint="kit-dev serves GGUF through llama.cpp; check the Kitfile's model.path",
        )
    chosen = ggufs[0]
    if options.model_file:
        named = [p for p in ggufs if p.name == options.model_file]
        if not named:
            raise BackendError(f"--model-file {options.model_file} is not among {[p.name for p in ggufs]}")
        chosen = named[0]
    elif len(ggufs) > 1:
        raise BackendError(
            f"several GGUF files in the model: {', '.join(p.name for p in ggufs)}",
            hint="pick one with --model-file NAME",
        )
    return BackendChoice(
        backend="llama.cpp",
        device=device or "cpu",
        model_path=chosen,
        reasons=(f"{chosen.name} is a GGUF file (magic 'GGUF'), so llama.cpp serves it",),
    )
