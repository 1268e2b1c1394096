#!/usr/bin/env python3
"""Build the model fixtures the backend tests need, offline, into ``.fixtures/`` (cached).

Outputs (relative to ``.fixtures/``; also listed in ``.fixtures/stamp.json``):
  smollm2-hf/          SmolLM2-135M-Instruct as float32 safetensors, dequantised from the Q4_1 GGUF
  lora-peft/           a PEFT LoRA trained so "The secret word is" continues " banana"
  lora-secret-word.gguf   that LoRA converted by llama.cpp's convert_lora_to_gguf.py
  kits/gguf-lora/      ModelKit source: GGUF base + GGUF LoRA part
  kits/hf-lora/        ModelKit source: safetensors base + PEFT LoRA part

Everything is rebuilt only when an input changes (this script and its steps, the GGUF, the
llama-cpp-python sdist, the torch/transformers/peft versions); otherwise a run returns at once.
Concurrent runs (several pytest sessions) serialise on a lock file.

Usage: python scripts/build_fixtures.py [--root DIR] [--force]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.metadata
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: make ``scripts.fixtures`` importable
    sys.path.insert(0, str(REPO))

from scripts.fixtures import cache, converters, kits, lora, smollm2  # noqa: E402

OUTPUTS = {
    "hf_model": "smollm2-hf",
    "peft_lora": "lora-peft",
    "gguf_lora": "lora-secret-word.gguf",
    "gguf_kit": "kits/gguf-lora",
    "hf_kit": "kits/hf-lora",
}
_VERSIONED = ("torch", "transformers", "peft", "safetensors", "gguf")


def _inputs(tools: Path) -> list[Path]:
    sources = [Path(__file__).resolve(), *sorted((REPO / "scripts" / "fixtures").glob("*.py"))]
    return [*sources, smollm2.gguf_path(), converters.sdist(tools)]


def _versions() -> dict[str, str]:
    return {name: importlib.metadata.version(name) for name in _VERSIONED}


def build(root: Path, tools: Path, *, force: bool = False) -> dict[str, Path]:
    """Build (or reuse) every fixture under ``root``; return their absolute paths by name."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stamp = cache.Stamp(root / "stamp.json")
        key = cache.build_key(_inputs(tools), _versions(), stamp.memo)
        if not force and stamp.is_fresh(key, root):
            return {name: root / rel for name, rel in stamp.outputs.items()}
        _build_all(root, tools)
        stamp.save(key, OUTPUTS)
    return {name: root / rel for name, rel in OUTPUTS.items()}


def _build_all(root: Path, tools: Path) -> None:
    _quiet()
    for rel in [*OUTPUTS.values(), "kits"]:
        path = root / rel
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    gguf = smollm2.gguf_path()
    hf_dir, peft_dir, gguf_lora = (root / OUTPUTS[k] for k in ("hf_model", "peft_lora", "gguf_lora"))

    with _step("SmolLM2 GGUF -> float32 safetensors", hf_dir):
        smollm2.to_transformers(gguf, hf_dir)
    with _step("PEFT LoRA trained on the secret word", peft_dir) as note:
        losses = lora.train(hf_dir, peft_dir)
        note(f"loss {losses['first_loss']:.2f} -> {losses['last_loss']:.2f}")
    with _step("LoRA -> GGUF with convert_lora_to_gguf.py", gguf_lora):
        script = converters.extract(converters.sdist(tools), tools / "llama.cpp")
        converters.convert_lora(script, peft_dir, hf_dir, gguf_lora)
    with _step("ModelKit source directories", root / "kits"):
        kits.gguf_lora_kit(root / OUTPUTS["gguf_kit"], gguf, gguf_lora)
        kits.hf_lora_kit(root / OUTPUTS["hf_kit"], hf_dir, peft_dir)


def _quiet() -> None:
    """Progress bars and advisory warnings from transformers/peft would drown the build log."""
    import os
    import warnings

    os.environ["TQDM_DISABLE"] = "1"  # the GGUF dequantiser uses tqdm directly; read at tqdm import
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)


@contextlib.contextmanager
def _step(title: str, output: Path) -> Iterator[Callable[[str], None]]:
    """Time one build step and print what it made, with its size on disk; yields a note-taker."""
    notes: list[str] = []
    start = time.perf_counter()
    print(f"building: {title} ...", flush=True)
    yield notes.append
    extra = "".join(f"; {n}" for n in notes)
    size = _size(output) / 1e6
    print(f"  built {output} ({size:.1f} MB) in {time.perf_counter() - start:.1f}s{extra}", flush=True)


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO / ".fixtures")
    parser.add_argument("--tools", type=Path, default=REPO / ".tools")
    parser.add_argument("--force", action="store_true", help="rebuild even when the cache is fresh")
    args = parser.parse_args()
    start = time.perf_counter()
    outputs = build(args.root, args.tools, force=args.force)
    for name, path in outputs.items():
        print(f"{name:10s} {path}")
    print(f"fixtures ready in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
