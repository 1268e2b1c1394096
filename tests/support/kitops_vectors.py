"""Where the shared KitOps test vectors live (``shared/vectors``), found beside the checkout."""

from __future__ import annotations

from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[2]
_CANDIDATES = (_ROOT / "shared" / "vectors", _ROOT.parent / "shared" / "vectors")


def vectors_dir() -> Path:
    """``shared/vectors``; the test is skipped when this checkout has no shared folder."""
    for candidate in _CANDIDATES:
        if (candidate / "kitops").is_dir():
            return candidate
    pytest.skip("shared/vectors is not available next to this checkout")


def kitops_vector(relative: str) -> Path:
    return vectors_dir() / "kitops" / relative
