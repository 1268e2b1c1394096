"""What an unpacked ModelKit holds on disk: GGUF models (and split shards), transformers weights,
and LoRA adapters among its parts.

Selection trusts the files over the Kitfile: a Kitfile's ``format`` is free text that people get
wrong, while a file's magic bytes and a GGUF's ``general.type`` are what the engines will see.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from backends.gguf_meta import GGUFHeaderError, is_gguf, read_metadata
from devserver.errors import BackendError

LORA_PART_TYPE = "lora-adapter"
SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
_SHARD = re.compile(r"^(?P<stem>.+)-(?P<index>\d{5})-of-(?P<total>\d{5})\.gguf$")


@dataclass(frozen=True)
class PartInfo:
    """One Kitfile ``model.parts`` entry, with its path resolved inside the unpacked kit."""

    path: Path
    type: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class FoundAdapter:
    name: str
    path: Path  # the GGUF file, or the PEFT adapter directory
    kind: Literal["gguf-lora", "peft-lora"]
    architecture: str | None = None  # general.architecture, GGUF only


@dataclass
class ModelFiles:
    """The model's weights as found: GGUF candidates (first shard stands for a split model) and the
    transformers directory with its weight files."""

    ggufs: list[Path] = field(default_factory=list)
    hf_dir: Path | None = None
    safetensors: list[Path] = field(default_factory=list)
    pickles: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def has_hf(self) -> bool:
        return self.hf_dir is not None and bool(self.safetensors or self.pickles)


def gguf_info(path: Path) -> dict[str, object]:
    """``general.type`` and ``general.architecture`` of a GGUF, or a BackendError naming the file."""
    try:
        return read_metadata(path, ("general.type", "general.architecture"))
    except (OSError, GGUFHeaderError) as exc:
        raise BackendError(f"cannot read the GGUF header of {path.name}: {exc}") from exc


def is_gguf_adapter(path: Path) -> bool:
    return gguf_info(path).get("general.type") == "adapter"


def scan_model(model_path: Path, exclude: Sequence[Path] = ()) -> ModelFiles:
    """Find the model's weights at ``model_path`` (a file or a directory), skipping ``exclude``
    (the parts' paths, which may sit inside the model directory when ``model.path`` is ``.``)."""
    if not model_path.exists():
        raise BackendError(f"the model path {model_path} does not exist", hint="check the Kitfile's model.path")
    files = ModelFiles()
    if model_path.is_file():
        if is_gguf(model_path):
            files.ggufs = [_first_shard(model_path)]
            return files
        directory, candidates = model_path.parent, [model_path]
    else:
        directory = model_path
        candidates = sorted(p for p in model_path.rglob("*") if p.is_file() and not _inside(p, exclude))
    ggufs = [p for p in candidates if p.suffix == ".gguf" and is_gguf(p)]
    adapters = [p for p in ggufs if is_gguf_adapter(p)]
    files.notes += [f"ignored {p.name}: a LoRA adapter GGUF that no model part lists" for p in adapters]
    files.ggufs = _group_shards([p for p in ggufs if p not in adapters])
    if (directory / "config.json").is_file():
        files.hf_dir = directory
        files.safetensors = [p for p in candidates if p.suffix in SAFETENSORS_SUFFIXES and p.parent == directory]
        files.pickles = [p for p in candidates if p.suffix in PICKLE_SUFFIXES and p.parent == directory]
    if (directory / "adapter_config.json").is_file() and not files.ggufs and not files.has_hf:
        raise BackendError(
            f"the model at {model_path} is a PEFT adapter, not a model",
            hint="put the base model in model.path and the adapter in a model part with type: lora-adapter",
        )
    return files


def _inside(path: Path, roots: Iterable[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def _first_shard(path: Path) -> Path:
    """A split GGUF loads from its first shard; llama.cpp finds the others by name."""
    match = _SHARD.match(path.name)
    if not match:
        return path
    return path.with_name(f"{match['stem']}-{1:05d}-of-{match['total']}.gguf")


def _group_shards(ggufs: list[Path]) -> list[Path]:
    """Whole models only: each split model once (as its first shard), after checking none is missing."""
    models: list[Path] = []
    for path in ggufs:
        match = _SHARD.match(path.name)
        if not match:
            models.append(path)
            continue
        first = _first_shard(path)
        if first in models:
            continue
        total = int(match["total"])
        missing = [
            name
            for i in range(1, total + 1)
            if not (path.parent / (name := f"{match['stem']}-{i:05d}-of-{match['total']}.gguf")).is_file()
        ]
        if missing:
            raise BackendError(
                f"split GGUF {match['stem']} is missing {len(missing)} of {total} shards: {', '.join(missing)}",
                hint="the ModelKit must ship every shard",
            )
        models.append(first)
    return models


def find_adapters(parts: Sequence[PartInfo]) -> list[FoundAdapter]:
    """The LoRA adapters among the parts: declared (``type: lora-adapter``) or recognised by content
    (a PEFT ``adapter_config.json`` with weights, or a GGUF whose ``general.type`` is ``adapter``)."""
    adapters = [a for part in parts if (a := _adapter_in_part(part)) is not None]
    names = [a.name for a in adapters]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise BackendError(
            f"several adapter parts are named {', '.join(duplicates)}",
            hint="give each lora-adapter part its own name in the Kitfile",
        )
    return adapters


def _adapter_in_part(part: PartInfo) -> FoundAdapter | None:
    path = part.path
    declared = part.type == LORA_PART_TYPE
    name = part.name or (path.stem if path.suffix == ".gguf" else path.name)
    label = f"part {name!r} ({path.name})"
    if not path.exists():
        if declared:
            raise BackendError(f"{label}: {path} does not exist", hint="check the part's path in the Kitfile")
        return None
    if path.is_file():
        if is_gguf(path):
            info = gguf_info(path)
            if info.get("general.type") == "adapter":
                return FoundAdapter(name, path, "gguf-lora", _str(info.get("general.architecture")))
            if declared:
                raise BackendError(
                    f"{label} has type {LORA_PART_TYPE} but is a GGUF {info.get('general.type', 'model')}, "
                    "not an adapter",
                    hint="convert the PEFT adapter with llama.cpp's convert_lora_to_gguf.py",
                )
        elif declared:
            raise BackendError(
                f"{label} has type {LORA_PART_TYPE} but is neither a GGUF LoRA nor a PEFT adapter directory"
            )
        return None
    if (path / "adapter_config.json").is_file():
        return _peft_adapter(name, path, label)
    ggufs = sorted(p for p in path.rglob("*.gguf") if is_gguf(p) and is_gguf_adapter(p))
    if len(ggufs) == 1:
        info = gguf_info(ggufs[0])
        return FoundAdapter(name, ggufs[0], "gguf-lora", _str(info.get("general.architecture")))
    if declared:
        found = f"{len(ggufs)} GGUF adapters" if ggufs else "no adapter_config.json and no GGUF adapter"
        raise BackendError(
            f"{label} has type {LORA_PART_TYPE} but holds {found}",
            hint="ship one adapter per part: a GGUF LoRA file, or a PEFT directory with adapter_config.json",
        )
    return None


def _peft_adapter(name: str, path: Path, label: str) -> FoundAdapter:
    try:
        config = json.loads((path / "adapter_config.json").read_text())
    except (OSError, ValueError) as exc:
        raise BackendError(f"{label}: adapter_config.json is not readable JSON: {exc}") from exc
    peft_type = config.get("peft_type", "LORA") if isinstance(config, dict) else None
    if peft_type != "LORA":
        raise BackendError(f"{label} is a PEFT {peft_type} adapter; kit-dev applies LoRA adapters only")
    if not any((path / f"adapter_model{s}").is_file() for s in (*SAFETENSORS_SUFFIXES, ".bin")):
        raise BackendError(
            f"{label} has adapter_config.json but no adapter_model.safetensors",
            hint="ship the adapter weights that PeftModel.save_pretrained writes",
        )
    return FoundAdapter(name, path, "peft-lora")


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def safetensors_header(path: Path) -> dict[str, dict]:
    """A safetensors file's tensor table (name → dtype, shape, offsets), without reading tensor data."""
    with path.open("rb") as fh:
        length = int.from_bytes(fh.read(8), "little")
        if length > 100_000_000:
            raise ValueError(f"{path.name} has an implausible header length {length}")
        header = json.loads(fh.read(length))
    if not isinstance(header, dict):
        raise ValueError(f"{path.name} has no tensor table")
    return {k: v for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}


def count_parameters(files: ModelFiles) -> int | None:
    """Parameters in the safetensors weights, read from their headers."""
    total = 0
    for path in files.safetensors:
        try:
            header = safetensors_header(path)
        except (OSError, ValueError):
            return None
        for entry in header.values():
            count = 1
            for dim in entry.get("shape", []):
                count *= dim
            total += count
    return total or None
