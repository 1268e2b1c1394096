"""The kit-dev CLI in subprocesses with an isolated home: its own cache, credential files and PATH."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Cli:
    """``kit-dev`` as a user runs it; nothing of the developer's home (credentials, kit storage) leaks in."""

    home: Path
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("KIT_DEV_", "KITOPS_", "DOCKER_"))},
            "HOME": str(self.home),
            "KIT_DEV_CACHE_DIR": str(self.home / "cache"),
            "KIT_DEV_CONFIG_DIR": str(self.home / "kit-dev-config"),
            "KITOPS_HOME": str(self.home / "kitops"),
            "DOCKER_CONFIG": str(self.home / "docker"),
        }

    def run(self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 120):  # type: ignore[no-untyped-def]
        done = subprocess.run(
            [sys.executable, "-m", "devserver.cli", *args],
            cwd=ROOT, env=self.env, input=stdin, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        if check and done.returncode != 0:
            raise AssertionError(f"kit-dev {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    home = tmp_path / "home"
    home.mkdir()
    return Cli(home)


def small_kit(directory: Path, weights: bytes = b"GGUF" + b"\x00" * 4096) -> Path:
    (directory / "data").mkdir(parents=True, exist_ok=True)
    (directory / "model.gguf").write_bytes(weights)
    (directory / "data" / "train.jsonl").write_text('{"q": 1}\n')
    (directory / "README.md").write_text("# small\n")
    (directory / "Kitfile").write_text(
        "manifestVersion: 1.0.0\npackage:\n  name: small\n  authors: [Ada Lovelace]\n"
        "model:\n  name: small-model\n  path: model.gguf\n"
        "datasets:\n  - name: train\n    path: data\ndocs:\n  - path: README.md\n"
    )
    return directory
