"""Shared fixtures: where the real data lives (../shared/data), and skipping when it is absent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The ../shared/data folder; the test is skipped when it is not present."""
    if not (SHARED / "MANIFEST.json").is_file():
        pytest.skip(f"../shared/data not present: {SHARED} (real models and data sets)")
    return SHARED


@pytest.fixture(scope="session")
def manifest(shared_data: Path) -> dict:
    """MANIFEST.json of ../shared/data."""
    return json.loads((shared_data / "MANIFEST.json").read_text())
