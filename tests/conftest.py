"""Shared fixtures: where the real data lives (../shared/data), and skipping when it is absent;
the digits zoo's content entry, built once per test run."""

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


@pytest.fixture(scope="session")
def digits_content(tmp_path_factory):
    """The digits zoo's content entry (watermarked model, vanilla twin, data, triggers) with the
    default recipe and seed 0, trained with one torch thread; built once for every module."""
    import torch

    from audit.models_zoo.build import build_entry

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("zoo")
        return build_entry("digits", "content", root / "digits_content", seed=0, quiet=True)
    finally:
        torch.set_num_threads(before)
