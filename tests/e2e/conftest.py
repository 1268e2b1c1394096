"""End-to-end fixtures: the kit-dev CLI as a user runs it, against a real registry and real llama.cpp."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from scripts.link_smollm2 import link_or_copy
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class KitDev:
    """Runs ``kit-dev`` in a subprocess with its own cache directory, as a user would."""

    cache_dir: Path

    def run(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "KIT_DEV_CACHE_DIR": str(self.cache_dir)}
        result = subprocess.run(
            [sys.executable, "-m", "devserver.cli", *args],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(f"kit-dev {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
        return result


@pytest.fixture
def kitdev(tmp_path: Path) -> Iterator[KitDev]:
    tool = KitDev(cache_dir=tmp_path / "cache")
    yield tool
    tool.run("stop", check=False, timeout=60)


@pytest.fixture(scope="session")
def smollm2_kit_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> Path:
    """A ModelKit source directory: the real SmolLM2 GGUF, a Kitfile, and docs/code that serving skips."""
    directory = tmp_path_factory.mktemp("smollm2-kit")
    link_or_copy(smollm2_gguf, directory / smollm2_gguf.name)
    (directory / "docs").mkdir()
    (directory / "docs" / "README.md").write_text("# SmolLM2 test kit\n")
    (directory / "src").mkdir()
    (directory / "src" / "client.py").write_text("print('hello')\n")
    (directory / "Kitfile").write_text(
        "manifestVersion: 1.0.0\n"
        "package:\n  name: smollm2-test\n  version: 1.0.0\n  authors: [kit-dev tests]\n"
        f"model:\n  name: smollm2\n  path: {smollm2_gguf.name}\n  format: gguf\n"
        "  parameters:\n    ctx_size: 2048\n    threads: 2\n"
        "code:\n  - path: src\n"
        "docs:\n  - path: docs\n"
    )
    return directory


@pytest.fixture
def port() -> int:
    return free_port()
