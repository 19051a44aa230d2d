"""Shared fixtures and gates for the test suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
BUSI_DIR = SHARED_DATA / "busi"
BUSI_MANIFEST = BUSI_DIR / "manifest.csv"
DEFAULT_BUNDLE = REPO_ROOT / "models" / "default"

needs_busi = pytest.mark.skipif(
    not BUSI_MANIFEST.is_file(),
    reason=f"BUSI data not found at {BUSI_DIR} (a clone without ../shared/data): skipped",
)


@pytest.fixture(autouse=True)
def _clean_fame_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never pick up the developer's own FAME_NODE_* settings."""
    for key in list(os.environ):
        if key.startswith("FAME_NODE_"):
            monkeypatch.delenv(key, raising=False)
