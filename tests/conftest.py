"""Shared fixtures: where the real data lives (../shared/data), and skipping when it is absent;
the digits zoo (each scheme built at most once per test run) and one CLI launder of its content
entry, shared by every module that needs them.

The suite runs in pytest-xdist workers (``-n auto`` in pyproject.toml). The zoo and the launder
are built once per run, not once per worker: the first worker to ask builds under a file lock in
the run's shared temporary folder and records the result; the others read the record. Each
worker runs torch on one thread, so that N workers use N cores.
"""

from __future__ import annotations

import dataclasses
import json
import os
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


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """The slow tests first: the workers then finish together, not one of them on a long
    test at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def once_per_run(tmp_path_factory, name: str, make, dump, load):
    """``make(folder)`` once per test run, shared by the xdist workers: the first caller builds
    in ``folder`` under a file lock and writes ``dump(value)`` as JSON; later callers (this
    worker or another) get ``load(record)``. A failed build writes no record."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "once"
    root.mkdir(exist_ok=True)
    record = root / f"{name}.json"
    with FileLock(str(record) + ".lock"):
        if record.is_file():
            return load(json.loads(record.read_text()))
        value = make(root / name)
        record.write_text(json.dumps(dump(value)))
        return value


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
    from audit.models_zoo.build import ZooEntry, build_entry

    built: dict = {}

    def make(scheme: str):
        def build(folder: Path) -> ZooEntry:
            with one_torch_thread():
                return build_entry("digits", scheme, folder, seed=0, quiet=True)
        return build

    def dump(entry: ZooEntry) -> dict:
        return {k: str(v) if isinstance(v, Path) else v
                for k, v in dataclasses.asdict(entry).items()}

    def load(record: dict) -> ZooEntry:
        paths = {"out_dir", "watermarked", "vanilla", "triggers", "meta_path", "data_dir"}
        return ZooEntry(**{k: Path(v) if k in paths and v is not None else v
                           for k, v in record.items()})

    def get(scheme: str):
        if scheme not in built:
            built[scheme] = once_per_run(tmp_path_factory, f"digits_{scheme}", make(scheme),
                                         dump, load)
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

    def make(work: Path) -> dict:
        work.mkdir()
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

    def dump(value: dict) -> dict:
        return {**value, "out": str(value["out"]), "report_dir": str(value["report_dir"])}

    def load(record: dict) -> dict:
        return {**record, "out": Path(record["out"]), "report_dir": Path(record["report_dir"])}

    return once_per_run(tmp_path_factory, "digits_content_laundered", make, dump, load)
