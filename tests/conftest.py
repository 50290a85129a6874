"""Shared fixtures: where the real data lives (../shared/data), and skipping when it is absent;
the digits zoo (each scheme built at most once per test run; the content entry is the one
`audit demo` builds) and one CLI launder of its content entry, shared by every module that
needs them.

The suite runs in pytest-xdist workers (``-n auto`` in pyproject.toml). The zoo and the launder
are built once per run, not once per worker: the first worker to ask builds under a file lock in
the run's shared temporary folder and records the result; the others read the record. Each
worker runs torch on one thread, so that N workers use N cores.
"""

from __future__ import annotations

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


def once_per_run(tmp_path_factory, name: str, make) -> Path:
    """The folder ``once/<name>`` of the run's temporary folder, filled by ``make(folder)`` once
    per test run and shared by the xdist workers: the first caller runs ``make`` under a file
    lock, later callers (in any worker) find it done. A ``make`` that raises leaves it undone."""
    import shutil

    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "once"
    root.mkdir(exist_ok=True)
    folder, done = root / name, root / f"{name}.done"
    with FileLock(str(done) + ".lock"):
        if not done.is_file():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            make(folder)
            done.touch()
    return folder


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
def demo_run(tmp_path_factory) -> dict:
    """`audit demo --out <once>/out --quiet --device cpu`, run in process once per test run
    (one torch thread). Its first step builds the digits zoo's content entry with the default
    recipe and seed 0, which is ``digits_content``: the suite trains that pair once. Keys:
    ``rc``, ``out``, ``stdout``, ``stderr``, ``summary`` (summary.json, None on failure)."""
    import contextlib
    import io

    from audit.cli import run

    def make(folder: Path) -> None:
        out, err = io.StringIO(), io.StringIO()
        with one_torch_thread(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = run(["demo", "--out", str(folder / "out"), "--quiet", "--device", "cpu"])
        (folder / "run.json").write_text(json.dumps({"rc": rc, "stdout": out.getvalue(),
                                                     "stderr": err.getvalue()}))

    folder = once_per_run(tmp_path_factory, "demo", make)
    rec = json.loads((folder / "run.json").read_text())
    out = folder / "out"
    summary = json.loads((out / "summary.json").read_text()) if rec["rc"] == 0 else None
    return {**rec, "out": out, "summary": summary}


@pytest.fixture(scope="session")
def digits_zoo(tmp_path_factory, request):
    """``digits_zoo(scheme)``: the digits zoo's entry for ``scheme`` (watermarked model, vanilla
    twin, data, triggers) with the default recipe and seed 0, trained with one torch thread;
    each scheme is built the first time a test asks for it, then shared. The content entry is
    the one `audit demo` builds (``demo_run``)."""
    from audit.models_zoo.build import build_entry, built_entry

    built: dict = {}

    def build(scheme: str, folder: Path) -> None:
        with one_torch_thread():
            build_entry("digits", scheme, folder, seed=0, quiet=True)

    def get(scheme: str):
        if scheme not in built:
            if scheme == "content":   # test_demo reports the demo's errors
                folder = request.getfixturevalue("demo_run")["out"] / "zoo"
            else:
                folder = once_per_run(tmp_path_factory, f"digits_{scheme}",
                                      lambda f: build(scheme, f))
            entry = built_entry(folder)
            if entry is None:
                pytest.fail(f"no digits {scheme} entry was built in {folder}")
            built[scheme] = entry
        return built[scheme]

    return get


@pytest.fixture(scope="session")
def digits_content(digits_zoo):
    """The digits zoo's content entry."""
    return digits_zoo("content")


# the shared CLI launder: the default settings, which `audit demo` launders the same subset with
LAUNDER_ARGS = ["--seed", "0", "--device", "cpu", "--quiet"]
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

    def make(work: Path) -> None:
        before_sha = hashlib.sha256(e.watermarked.read_bytes()).hexdigest()
        t = time.perf_counter()
        with one_torch_thread():
            rc = run(["launder", str(e.watermarked), "--data", str(digits_content_subset["path"]),
                      "-o", str(work / "laundered.onnx"), "--report", str(work / "report"),
                      *LAUNDER_ARGS])
        run_record = {"rc": rc, "seconds": time.perf_counter() - t, "input_sha_before": before_sha}
        (work / "run.json").write_text(json.dumps(run_record))

    work = once_per_run(tmp_path_factory, "digits_content_laundered", make)
    rec = json.loads((work / "run.json").read_text())
    rep = work / "report"
    report = json.loads((rep / "report.json").read_text()) if rec["rc"] == 0 else None
    return {**rec, "out": work / "laundered.onnx", "report_dir": rep, "report": report}
