"""The older-dialect Kitfile (``shared/vectors/dialect/Kitfile``) packs and serves, warning once.

Its ``modelParts`` entry names the base model as a ModelKit in a registry: here the real SmolLM2
GGUF, pushed first; the adapter is the SmolLM2 LoRA GGUF that ``scripts/build_fixtures.py`` trains.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import httpx
import pytest

from devserver.oci.store import LocalStore
from devserver.resolve import resolve_directory
from tests.cli.conftest import Cli
from tests.conftest import smollm2_path
from tests.support.kitops_vectors import vectors_dir
from tests.support.ports import free_port
from tests.support.registry import RegistryProcess

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
LORA = ROOT / ".fixtures" / "lora-secret-word.gguf"
WARNING = "older dialect that kit rejects"


def _base_kit(directory: Path) -> Path:
    directory.mkdir()
    os.link(smollm2_path(), directory / "smollm2.gguf")
    (directory / "Kitfile").write_text(
        "manifestVersion: 1.0.0\npackage:\n  name: smollm2\nmodel:\n  name: smollm2\n  path: smollm2.gguf\n"
        "  format: gguf\n  parameters:\n    ctx_size: 1024\n    threads: 2\n"
    )
    return directory


def _dialect_kit(directory: Path, registry_host: str) -> Path:
    if not LORA.is_file():
        pytest.skip("the SmolLM2 LoRA fixture is not built (scripts/build_fixtures.py)")
    text = (vectors_dir() / "dialect" / "Kitfile").read_text().replace("127.0.0.1:5000", registry_host)
    for name in ("models", "data", "src", "docs"):
        (directory / name).mkdir(parents=True)
    shutil.copyfile(LORA, directory / "models" / "adapter.gguf")
    (directory / "data" / "train.jsonl").write_text('{"messages": []}\n')
    (directory / "src" / "inference.py").write_text("print('hi')\n")
    (directory / "docs" / "model_card.md").write_text("# Support assistant\n")
    (directory / "Kitfile").write_text(text)
    return directory


def test_dialect_kitfile_packs_and_serves_warning_once(cli: Cli, tmp_path: Path, registry: RegistryProcess) -> None:
    cli.run("pack", str(_base_kit(tmp_path / "base")), "-t", f"{registry.host}/models/smollm2:1", "--push")
    kit_dir = _dialect_kit(tmp_path / "assistant", registry.host)
    ref = f"{registry.host}/org/assistant:1"
    packed = cli.run("pack", str(kit_dir), "-t", ref, "--push")
    assert packed.stderr.count(WARNING) == 1 and "package.repository" in packed.stderr

    inspected = json.loads(cli.run("inspect", ref).stdout)
    assert inspected["metadata"]["performance"] == {"accuracy": 0.92}
    assert inspected["kitfile"]["model"]["path"] == f"{registry.host}/models/smollm2:1"

    cli.env["KIT_DEV_CACHE_DIR"] = str(tmp_path / "fresh-cache")  # another machine: pulls base and adapter
    port = free_port()
    cli.run("start", "--modelkit", ref, "--port", str(port), timeout=300)
    try:
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).json()
        assert models["data"][0]["id"] == "support-adapter"
        log = cli.run("logs").stdout
        assert log.count(WARNING) == 0  # the pushed Kitfile is plain 1.0.0: the warning was pack's, once
        assert "adapter" in log.lower()
    finally:
        cli.run("stop", check=False)


def test_dialect_directory_resolves_its_base_from_the_registry_warning_once(
    cli: Cli, tmp_path: Path, registry: RegistryProcess, caplog: pytest.LogCaptureFixture
) -> None:
    cli.run("pack", str(_base_kit(tmp_path / "base")), "-t", f"{registry.host}/models/smollm2:1", "--push")
    kit_dir = _dialect_kit(tmp_path / "assistant", registry.host)
    with caplog.at_level(logging.WARNING):
        resolved = resolve_directory(kit_dir, LocalStore(tmp_path / "cache"))
    assert sum(WARNING in r.message for r in caplog.records) == 1
    assert resolved.model_path.read_bytes()[:4] == b"GGUF" and resolved.model_path.stat().st_size > 50 << 20
    part = resolved.kitfile.model.parts[0]  # type: ignore[union-attr]
    assert (resolved.root / part.path).read_bytes() == LORA.read_bytes()
    assert resolved.metadata["training"]["epochs"] == 10
