"""Shared fixtures: where the real data lives (../shared/data), and skipping when it is absent;
the digits zoo (each scheme built at most once per test run) and one CLI launder of its content
entry, shared by every module that needs them."""

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


def one_torch_thread():
    """torch on one thread inside the block (oversubscribed OpenMP threads slow the small
    models 5-10x on a shared machine), its own count after."""
    from audit.models_zoo.train import torch_threads

    return torch_threads(1)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for the whole test module."""
    with one_torch_thread():
        yield


@pytest.fixture(scope="session")
def digits_zoo(tmp_path_factory):
    """``digits_zoo(scheme)``: the digits zoo's entry for ``scheme`` (watermarked model, vanilla
    twin, data, triggers) with the default recipe and seed 0, trained with one torch thread;
    each scheme is built the first time a test asks for it, then shared."""
    from audit.models_zoo.build import build_entry

    root = tmp_path_factory.mktemp("zoo")
    built: dict = {}

    def get(scheme: str):
        if scheme not in built:
            with one_torch_thread():
                built[scheme] = build_entry("digits", scheme, root / f"digits_{scheme}", seed=0,
                                            quiet=True)
        return built[scheme]

    return get


@pytest.fixture(scope="session")
def digits_content(digits_zoo):
    """The digits zoo's content entry."""
    return digits_zoo("content")


# the shared CLI launder: defaults except fewer rounds / NC epochs (the test budget)
LAUNDER_ARGS = ["--rounds", "2", "--nc-epochs", "20", "--seed", "0", "--device", "cpu", "--quiet"]
LAUNDER_SUBSET = 150


@pytest.fixture(scope="session")
def digits_content_subset(tmp_path_factory, digits_content) -> dict:
    """A 150-image stratified subset (seed 0) of the content entry's train.npz: ``ds`` (a
    Dataset) and ``path`` (the same images as a u8 .npz, what --data is given)."""
    import numpy as np

    from audit.data import load_dataset, stratified_subset

    train = load_dataset(digits_content.data_dir / "train.npz", channels=1, height=16, width=16)
    sub = stratified_subset(train, LAUNDER_SUBSET, seed=0)
    path = tmp_path_factory.mktemp("subset") / "subset150.npz"
    np.savez(path, x=np.round(sub.x[:, 0] * 255).astype(np.uint8), y=np.asarray(sub.y, np.int64))
    return {"ds": sub, "path": path}


@pytest.fixture(scope="session")
def digits_content_laundered(tmp_path_factory, digits_content, digits_content_subset) -> dict:
    """`audit launder` of the digits content entry from ``digits_content_subset`` (LAUNDER_ARGS,
    one torch thread), done once per test run. Keys: ``rc``, ``out``, ``report_dir``, ``report``
    (report.json, None on failure), ``seconds``, ``input_sha_before``."""
    import hashlib
    import time

    from audit.cli import run

    e = digits_content
    work = tmp_path_factory.mktemp("laundered")
    out, rep = work / "laundered.onnx", work / "report"
    before_sha = hashlib.sha256(e.watermarked.read_bytes()).hexdigest()
    t = time.perf_counter()
    with one_torch_thread():
        rc = run(["launder", str(e.watermarked), "--data", str(digits_content_subset["path"]),
                  "-o", str(out), "--report", str(rep), *LAUNDER_ARGS])
    seconds = time.perf_counter() - t
    report = json.loads((rep / "report.json").read_text()) if rc == 0 else None
    return {"rc": rc, "out": out, "report_dir": rep, "report": report, "seconds": seconds,
            "input_sha_before": before_sha}
