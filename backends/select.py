"""Which engine serves a model, on which device, and why.

The choice is made from what the ModelKit says (Kitfile ``model.format``/``framework``, part types),
the files actually unpacked, and the hardware. It is explainable (``BackendChoice.reasons``, logged at
start and shown in ``/v1/models``) and overridable (``--backend``, ``--device``). A combination that
cannot work raises ``BackendError`` with one line saying what to pass instead.

    GGUF                      → llama.cpp, every layer on the GPU (CUDA or Metal) when its build can
    safetensors / .bin / .pt  → transformers on CUDA when torch sees a GPU, else CPU (with a warning)
    LoRA parts                → GGUF LoRA for llama.cpp, PEFT LoRA for transformers; never crossed
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from backends import hardware
from backends.gguf_meta import GGUF_MAGIC, is_gguf
from backends.model_files import (
    LORA_PART_TYPE,
    FoundAdapter,
    ModelFiles,
    PartInfo,
    count_parameters,
    find_adapters,
    gguf_info,
    scan_model,
)
from devserver.errors import BackendError

__all__ = [
    "GGUF_MAGIC",
    "AdapterSpec",
    "BackendChoice",
    "BackendName",
    "EngineOptions",
    "PartInfo",
    "choose_backend",
    "is_gguf",
]

log = logging.getLogger(__name__)

BackendName = Literal["llama.cpp", "transformers"]

_BACKEND_ALIASES: dict[str, BackendName] = {
    "llama.cpp": "llama.cpp",
    "llamacpp": "llama.cpp",
    "llama-cpp": "llama.cpp",
    "gguf": "llama.cpp",
    "transformers": "transformers",
    "hf": "transformers",
    "huggingface": "transformers",
    "torch": "transformers",
    "pytorch": "transformers",
}
# Kitfile model.format / framework words that point at one engine (lower-cased, free text in kit).
_HINTS: dict[str, BackendName] = {
    "gguf": "llama.cpp",
    "llama.cpp": "llama.cpp",
    "llamacpp": "llama.cpp",
    "llama-cpp": "llama.cpp",
    "safetensors": "transformers",
    "transformers": "transformers",
    "huggingface": "transformers",
    "hf": "transformers",
    "pytorch": "transformers",
    "torch": "transformers",
    "pt": "transformers",
    "bin": "transformers",
}
_CUDA_DEVICE = re.compile(r"^cuda(?::(\d+))?$")
# Effective bytes of weights a CPU reads per second in float32 decoding (measured: SmolLM2-135M,
# 540 MB, ~21 tokens/s on 2 cores ≈ 11 GB/s). Only for the order of magnitude in the warning.
_CPU_BYTES_PER_S = 10e9


@dataclass(frozen=True)
class EngineOptions:
    """Engine settings from flags, else the Kitfile's ``model.parameters``, else defaults."""

    ctx_size: int | None = None
    threads: int | None = None
    n_gpu_layers: int | None = None
    parallel: int | None = None
    prompt_cache_mib: int = 512  # host memory for prompts' KV once their slot moved on (llama.cpp)
    flash_attn: Literal["auto", "on", "off"] = "auto"  # llama.cpp; auto is llama.cpp's and llama-server's default
    model_file: str | None = None
    trust_remote_code: bool = False
    allow_pickle: bool = False


@dataclass(frozen=True)
class AdapterSpec:
    name: str
    path: Path  # a GGUF LoRA file (gguf-lora) or a PEFT adapter directory (peft-lora)
    kind: Literal["gguf-lora", "peft-lora"]


@dataclass(frozen=True)
class BackendChoice:
    backend: BackendName
    device: str  # "cpu", "cuda:0", "metal", or "gpu" (a llama.cpp GPU build torch cannot see)
    model_path: Path  # the GGUF file, first shard if split (llama.cpp) or the model directory (transformers)
    adapters: tuple[AdapterSpec, ...] = ()
    reasons: tuple[str, ...] = field(default_factory=tuple)
    n_gpu_layers: int = 0  # llama.cpp: layers to offload, -1 for all; 0 on the CPU
    warnings: tuple[str, ...] = ()  # things the user should know (already logged), e.g. slow CPU inference


def choose_backend(
    model_path: Path,
    *,
    model_format: str | None = None,
    backend: str | None = None,
    device: str | None = None,
    options: EngineOptions = EngineOptions(),
    framework: str | None = None,
    parts: Sequence[PartInfo] = (),
    hw: hardware.Hardware | None = None,
) -> BackendChoice:
    """Pick the engine for the unpacked model at ``model_path`` (a file or a directory).

    ``parts`` are the Kitfile's ``model.parts`` with paths resolved on disk; ``hw`` defaults to what
    ``backends.hardware.detect()`` finds (tests pass their own).
    """
    hw = hw or hardware.detect()
    wanted = _parse_backend(backend)
    found = find_adapters(parts)
    files = scan_model(model_path, exclude=[p.path for p in parts])
    reasons = list(files.notes)
    engine = _pick_engine(files, model_path, wanted, model_format, framework, hw, reasons)
    if engine == "llama.cpp":
        gguf = _pick_gguf(files, model_path, options, reasons)
        dev, layers = _llama_device(device, options, hw, reasons)
        adapters = _gguf_adapters(found, gguf, reasons)
        choice = BackendChoice("llama.cpp", dev, gguf, adapters, (), layers)
    else:
        assert files.hf_dir is not None  # _pick_engine chose transformers only with weights present
        _check_weights(files, options, reasons)
        dev = _torch_device(device, hw, reasons)
        adapters = _peft_adapters(found, reasons)
        choice = BackendChoice("transformers", dev, files.hf_dir, adapters, ())
    warnings = _cpu_warning(files, choice, hw)
    for warning in warnings:
        log.warning("%s", warning)
    return dataclasses.replace(choice, reasons=(*reasons, *warnings), warnings=warnings)


def _parse_backend(backend: str | None) -> BackendName | None:
    if backend is None:
        return None
    name = _BACKEND_ALIASES.get(backend.strip().lower())
    if name is None:
        raise BackendError(f"unknown backend {backend!r}", hint="pass --backend llama.cpp or --backend transformers")
    return name


def _hint(model_format: str | None, framework: str | None) -> BackendName | None:
    for word in (model_format, framework):
        if word and (hint := _HINTS.get(word.strip().lower())):
            return hint
    return None


def _pick_engine(
    files: ModelFiles,
    model_path: Path,
    wanted: BackendName | None,
    model_format: str | None,
    framework: str | None,
    hw: hardware.Hardware,
    reasons: list[str],
) -> BackendName:
    has_gguf, has_hf = bool(files.ggufs), files.has_hf
    if wanted == "llama.cpp" and not has_gguf:
        raise BackendError(
            f"--backend llama.cpp needs a GGUF file, and {model_path} has none",
            hint="convert with llama.cpp's convert_hf_to_gguf.py, or drop --backend to use transformers",
        )
    if wanted == "transformers" and not has_hf:
        raise BackendError(
            f"--backend transformers needs config.json with *.safetensors or *.bin weights, and {model_path} has none",
            hint="drop --backend to serve the GGUF with llama.cpp",
        )
    if wanted:
        reasons.append(f"--backend {wanted} was asked for")
        return wanted
    if not has_gguf and not has_hf:
        said = f" (the Kitfile says format {model_format!r})" if model_format else ""
        raise BackendError(
            f"no servable weights in {model_path}{said}: kit-dev serves GGUF files with llama.cpp and "
            "config.json + *.safetensors/*.bin directories with transformers",
            hint="check the Kitfile's model.path",
        )
    hint = _hint(model_format, framework)
    if has_gguf and has_hf:
        if hint:
            reasons.append(f"both GGUF and transformers weights are present; the Kitfile points at {hint}")
            return hint
        if hw.cuda and not hw.llama_gpu_offload:
            reasons.append("both GGUF and transformers weights are present; transformers can use the CUDA GPU")
            return "transformers"
        reasons.append("both GGUF and transformers weights are present; llama.cpp is the faster engine here")
        return "llama.cpp"
    engine: BackendName = "llama.cpp" if has_gguf else "transformers"
    if hint and hint != engine:
        reasons.append(f"the Kitfile says {model_format or framework!r}, but the files are for {engine}")
    return engine


def _pick_gguf(files: ModelFiles, model_path: Path, options: EngineOptions, reasons: list[str]) -> Path:
    ggufs = files.ggufs
    if model_path.is_file():
        chosen = ggufs[0]
        reasons.append(f"{chosen.name} is the GGUF file the Kitfile's model.path names")
    elif options.model_file:
        named = [p for p in ggufs if options.model_file in (p.name, str(p.relative_to(model_path)))]
        if not named:
            raise BackendError(
                f"--model-file {options.model_file} is not among the GGUF models: {_names(ggufs, model_path)}"
            )
        chosen = named[0]
        reasons.append(f"{chosen.name} was picked with --model-file")
    elif len(ggufs) > 1:
        raise BackendError(
            f"several GGUF models in {model_path.name}: {_names(ggufs, model_path)}",
            hint="pick one with --model-file NAME",
        )
    else:
        chosen = ggufs[0]
        reasons.append(f"{chosen.name} is the only GGUF model (magic 'GGUF')")
    if "-00001-of-" in chosen.name:
        reasons.append(f"{chosen.name} is the first shard of a split GGUF; llama.cpp loads the rest with it")
    reasons.append("GGUF weights are served by llama.cpp")
    return chosen


def _names(paths: Sequence[Path], root: Path) -> str:
    return ", ".join(str(p.relative_to(root)) for p in paths)


def _llama_device(
    device: str | None, options: EngineOptions, hw: hardware.Hardware, reasons: list[str]
) -> tuple[str, int]:
    """Device and GPU layers for llama.cpp: every layer on the GPU unless told otherwise."""
    gpu_name = "metal" if hw.metal else ("cuda:0" if hw.cuda else "gpu")
    if device is None:
        if not hw.llama_gpu_offload:
            why = "the installed llama-cpp-python has no GPU support" if hw.cuda else hw.describe()
            reasons.append(f"llama.cpp runs on the CPU: {why}")
            return "cpu", 0
        device = gpu_name
    device = device.strip().lower()
    if device == "cpu":
        reasons.append("llama.cpp runs on the CPU")
        return "cpu", 0
    if device == "metal" and not hw.metal:
        raise BackendError(
            "--device metal needs Apple silicon and a llama-cpp-python built with Metal", hint="pass --device cpu"
        )
    if device not in ("metal", "gpu") and not _CUDA_DEVICE.match(device):
        raise BackendError(f"unknown device {device!r} for llama.cpp", hint="pass --device cpu, cuda or metal")
    if not hw.llama_gpu_offload:
        raise BackendError(
            f"--device {device}: the installed llama-cpp-python was built without GPU support",
            hint="rebuild it with CMAKE_ARGS=-DGGML_CUDA=on (or -DGGML_METAL=on), or pass --device cpu",
        )
    layers = options.n_gpu_layers if options.n_gpu_layers is not None else -1
    where = "every layer" if layers < 0 else f"{layers} layers"
    reasons.append(f"llama.cpp offloads {where} to the GPU ({hw.describe()})")
    return (gpu_name if device == "gpu" else device), layers


def _torch_device(device: str | None, hw: hardware.Hardware, reasons: list[str]) -> str:
    if device is None:
        if hw.cuda:
            reasons.append(f"transformers runs on cuda:0, {hw.describe()}, in bfloat16")
            return "cuda:0"
        reasons.append("transformers runs on the CPU in float32: torch sees no CUDA GPU")
        return "cpu"
    device = device.strip().lower()
    if device == "cpu":
        reasons.append("transformers runs on the CPU in float32 (--device cpu)")
        return "cpu"
    match = _CUDA_DEVICE.match(device)
    if match is None:
        raise BackendError(
            f"transformers cannot run on {device!r} here",
            hint="pass --device cpu or cuda; Apple GPUs are served through llama.cpp, so ship a GGUF",
        )
    index = int(match[1] or 0)
    if index >= len(hw.cuda_devices):
        raise BackendError(
            f"--device {device}: torch sees {len(hw.cuda_devices)} CUDA GPU(s)",
            hint="pass --device cpu, or install a CUDA build of torch on a machine with an NVIDIA GPU",
        )
    reasons.append(f"transformers runs on cuda:{index} ({hw.cuda_devices[index]}) in bfloat16")
    return f"cuda:{index}"


def _check_weights(files: ModelFiles, options: EngineOptions, reasons: list[str]) -> None:
    if files.safetensors:
        reasons.append("safetensors weights with config.json are served by transformers")
        if files.pickles:
            reasons.append("safetensors preferred over the pickle (.bin/.pt) weights also present")
        return
    if not options.allow_pickle:
        raise BackendError(
            f"the weights ({', '.join(p.name for p in files.pickles)}) are Python pickles, which can run code "
            "when loaded",
            hint="pass --allow-pickle if you trust this ModelKit, or ship safetensors",
        )
    reasons.append("pickle weights (.bin/.pt) are served by transformers, allowed by --allow-pickle")


def _gguf_adapters(found: Sequence[FoundAdapter], gguf: Path, reasons: list[str]) -> tuple[AdapterSpec, ...]:
    base_arch = gguf_info(gguf).get("general.architecture") if found else None
    specs = []
    for adapter in found:
        if adapter.kind == "peft-lora":
            raise BackendError(
                f"part {adapter.name!r} is a PEFT LoRA, which llama.cpp cannot apply to a GGUF model",
                hint="convert it with llama.cpp's convert_lora_to_gguf.py --base <base model's HF directory> "
                f"{adapter.path.name} and ship the .gguf as a {LORA_PART_TYPE} part",
            )
        if adapter.architecture and base_arch and adapter.architecture != base_arch:
            raise BackendError(
                f"part {adapter.name!r} is a LoRA for {adapter.architecture}, but the model is {base_arch}",
                hint="ship an adapter trained for this base model",
            )
        specs.append(AdapterSpec(adapter.name, adapter.path, "gguf-lora"))
        reasons.append(f"GGUF LoRA {adapter.name!r} ({adapter.path.name}) is applied by llama.cpp per request")
    return tuple(specs)


def _peft_adapters(found: Sequence[FoundAdapter], reasons: list[str]) -> tuple[AdapterSpec, ...]:
    specs = []
    for adapter in found:
        if adapter.kind == "gguf-lora":
            raise BackendError(
                f"part {adapter.name!r} is a GGUF LoRA, which transformers cannot apply",
                hint="ship the adapter as PEFT (adapter_config.json + adapter_model.safetensors), "
                "or serve a GGUF of the base model so llama.cpp applies it",
            )
        specs.append(AdapterSpec(adapter.name, adapter.path, "peft-lora"))
        reasons.append(f"PEFT LoRA {adapter.name!r} ({adapter.path.name}) is applied by transformers per request")
    return tuple(specs)


def _cpu_warning(files: ModelFiles, choice: BackendChoice, hw: hardware.Hardware) -> tuple[str, ...]:
    """transformers on the CPU works but is slow; say how slow, so nobody mistakes it for a hang."""
    if choice.backend != "transformers" or choice.device != "cpu":
        return ()
    params = count_parameters(files)
    if params is None:
        return (
            "transformers on the CPU decodes in float32 and is several times slower than llama.cpp on a GGUF "
            "of the same model",
        )
    rate = _CPU_BYTES_PER_S / (params * 4)
    return (
        f"transformers on the CPU ({hw.cpu_count} cores) decodes in float32: expect roughly {rate:.2g} tokens/s "
        f"for {params / 1e6:,.0f}M parameters, several times slower than llama.cpp on a GGUF of the same model",
    )
