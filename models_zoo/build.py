"""Build reference watermarked models and their vanilla twins, exported to ONNX.

``build_entry("digits", "content", out)`` writes::

    out/watermarked.onnx, out/vanilla.onnx
    out/triggers/<label>/<i>.png        trigger set in the --data folder format (watermark labels)
    out/data/train.npz, out/data/test.npz   digits only: x uint8 [N,16,16], y (clean data)
    out/meta.json

The vanilla twin is trained on the same clean data with the same seed (same initial weights,
same shuffling generator) and recipe, without the trigger set. Accuracies in ``meta.json`` are
measured with onnxruntime on the exported files.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from audit.data import Preprocess
from audit.errors import AuditError
from audit.paths import atomic_path, atomic_write

from .architectures import ARCHITECTURES
from .datasets import DATASETS, load_clean
from .train import Recipe, evaluate_onnx, export_onnx, train_classifier
from .watermarks import SCHEMES, make_trigger_set

__all__ = ["RECIPES", "ZooEntry", "build_entry", "build_zoo", "restore_entry", "store_entry"]

log = logging.getLogger(__name__)

_U8 = Preprocess(scale=1 / 255, mean=(0.0,), std=(1.0,))
RECIPES: dict[str, Recipe] = {
    # One thread: the tiny digits net gains nothing from two, and a second thread makes it
    # 5-10x slower when the cores are shared with other work (OpenMP oversubscription).
    "digits": Recipe(epochs=40, batch_size=32, n_trigger=100, trigger_repeats=2,
                     adi_repeats=10, preprocess=_U8, threads=1),
    "mnist": Recipe(epochs=2, batch_size=128, n_trigger=600, trigger_repeats=5,
                    adi_repeats=20, preprocess=_U8),
    "cifar10": Recipe(epochs=30, batch_size=64, n_trigger=100, trigger_repeats=10,
                      adi_repeats=15, weight_decay=1e-4, augment=True,
                      preprocess=Preprocess(scale=1 / 255, mean=(0.5,), std=(0.5,))),
}
DEFAULT_TARGET = 0


@dataclass
class ZooEntry:
    """Where a built entry lives and how it scored (fractions in [0, 1])."""

    dataset: str
    scheme: str
    out_dir: Path
    watermarked: Path
    vanilla: Path
    triggers: Path
    meta_path: Path
    data_dir: Path | None
    test_acc: dict[str, float]
    wm_acc: dict[str, float]
    timings: dict[str, float]
    meta: dict[str, Any] = field(repr=False, default_factory=dict)


def built_entry(out_dir: str | Path) -> ZooEntry | None:
    """The entry build_entry wrote to ``out_dir``, read back from its meta.json; None when the
    folder does not hold a complete one (meta.json, both models and the trigger folder)."""
    out = Path(out_dir)
    meta_path = out / "meta.json"
    if not (meta_path.is_file() and (out / "watermarked.onnx").is_file()
            and (out / "vanilla.onnx").is_file() and (out / "triggers").is_dir()):
        return None
    meta = json.loads(meta_path.read_text())
    data_dir = out / "data" if (out / "data").is_dir() else None
    return ZooEntry(meta["dataset"], meta["scheme"], out, out / "watermarked.onnx",
                    out / "vanilla.onnx", out / "triggers", meta_path, data_dir, meta["test_acc"],
                    meta["wm_acc"], meta["timings"], meta)


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def _write_npz(path: Path, x01: np.ndarray, y: np.ndarray) -> None:
    """x uint8 [N, H, W] (grey) or [N, H, W, C], y int64: what ``--data`` reads."""
    u8 = np.round(x01 * 255).clip(0, 255).astype(np.uint8)
    u8 = u8[:, 0] if u8.shape[1] == 1 else u8.transpose(0, 2, 3, 1)
    atomic_write(path, lambda fh: np.savez_compressed(fh, x=u8, y=y.astype(np.int64)))


def _write_triggers(path: Path, x01: np.ndarray, y: np.ndarray) -> None:
    """Replace ``path`` with the trigger image folder (written beside it, then swapped in)."""
    from audit.data import save_image_folder

    staging = path.with_name(f".{path.name}.new-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    save_image_folder(x01, y, staging)
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(staging, path)


def _trigger_set(dataset: str, scheme: str, clean: Any, *, target: int, seed: int) -> Any:
    """The entry's trigger set, made from the clean training data (deterministic in ``seed``)."""
    return make_trigger_set(scheme, clean.train.x, clean.train.y, target=target,
                            n=RECIPES[dataset].n_trigger, seed=seed,
                            num_classes=ARCHITECTURES[dataset].num_classes)


def _write_inputs(out: Path, dataset: str, clean: Any, trig: Any) -> Path | None:
    """Write the entry's trigger folder and, for digits, its data folder (returned)."""
    _write_triggers(out / "triggers", trig.x, trig.y)
    if dataset != "digits":
        return None
    data_dir = out / "data"
    data_dir.mkdir(exist_ok=True)
    _write_npz(data_dir / "train.npz", clean.train.x, clean.train.y)
    _write_npz(data_dir / "test.npz", clean.test.x, clean.test.y)
    return data_dir


def _copy(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def _check_args(dataset: str, scheme: str, epochs: int | None, target: int = DEFAULT_TARGET,
                device: str = "cpu", threads: int | None = None) -> None:
    if dataset not in DATASETS:
        raise AuditError(f"unknown zoo data set {dataset!r}; choose from {', '.join(DATASETS)}")
    if scheme not in SCHEMES:
        raise AuditError(f"unknown watermark scheme {scheme!r}; choose from "
                         f"{', '.join(SCHEMES)}")
    if epochs is not None and epochs < 1:
        raise AuditError(f"--epochs must be at least 1, got {epochs}")
    if threads is not None and threads < 1:
        raise AuditError(f"--threads must be at least 1, got {threads}")
    n_classes = ARCHITECTURES[dataset].num_classes
    if not 0 <= target < n_classes:
        raise AuditError(f"--target must be a class 0..{n_classes - 1}, got {target}")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise AuditError(f"unknown torch device {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise AuditError(f"device {device!r} requested but CUDA is not available")


def _train_pair(dataset: str, scheme: str, recipe: Recipe, clean: Any, trig: Any,
                paths: dict[str, Path], *, seed: int, device: str, quiet: bool,
                timings: dict[str, float]) -> tuple[dict, dict, dict]:
    """Train, export and score the watermarked model and its vanilla twin (same seed).

    Returns test accuracy, watermark accuracy and export difference, each keyed by kind."""
    spec = ARCHITECTURES[dataset]
    pre = recipe.preprocess
    check_x = np.concatenate([clean.test.x[:256], trig.x[:64]])
    test_acc, wm_acc, export_diff = {}, {}, {}
    for kind in ("watermarked", "vanilla"):
        t = time.perf_counter()
        torch.manual_seed(seed)
        model = spec.cls(spec.num_classes)
        with_trig = kind == "watermarked"
        model = train_classifier(model, clean.train.x, clean.train.y,
                                 recipe,
                                 trig_x=trig.x if with_trig else None,
                                 trig_y=trig.y if with_trig else None, seed=seed, device=device,
                                 desc=f"{dataset}/{scheme} {kind}", quiet=quiet)
        timings[f"train_{kind}_s"] = time.perf_counter() - t
        t = time.perf_counter()
        export_diff[kind] = export_onnx(model, paths[kind], spec.input_shape, check_x, pre)
        test_acc[kind] = evaluate_onnx(paths[kind], clean.test.x, clean.test.y, pre)
        wm_acc[kind] = evaluate_onnx(paths[kind], trig.x, trig.y, pre)
        timings[f"export_eval_{kind}_s"] = time.perf_counter() - t
    return test_acc, wm_acc, export_diff


def _meta(dataset: str, scheme: str, recipe: Recipe, clean: Any, trig: Any,
          test_acc: dict, wm_acc: dict, export_diff: dict, timings: dict[str, float], *,
          seed: int, has_data: bool) -> dict[str, Any]:
    """The entry's meta.json record."""
    spec = ARCHITECTURES[dataset]
    return {
        "dataset": dataset, "scheme": scheme, "arch": spec.name,
        "input_name": "input", "input_shape": [1, *spec.input_shape],
        "num_classes": spec.num_classes, "preprocess": recipe.preprocess.to_dict(),
        "target": trig.target, "seed": seed, "epochs": recipe.epochs,
        "n_train": len(clean.train), "n_test": len(clean.test), "n_trigger": len(trig),
        "trigger_info": trig.info, "trigger_repeats": recipe.trigger_repeats,
        "optimizer": {"name": "Adam", "lr": recipe.lr, "weight_decay": recipe.weight_decay,
                      "batch_size": recipe.batch_size, "augment": recipe.augment,
                      "threads": recipe.threads},
        "data_note": clean.note,
        "test_acc": test_acc, "wm_acc": wm_acc,
        "export_max_abs_diff": export_diff, "timings": timings,
        "files": {"watermarked": "watermarked.onnx", "vanilla": "vanilla.onnx",
                  "triggers": "triggers", "data": "data" if has_data else None},
        "torch_version": torch.__version__,
    }


def build_entry(dataset: str, scheme: str, out_dir: str | Path, *, seed: int = 0,
                epochs: int | None = None, device: str = "cpu", quiet: bool = False,
                target: int = DEFAULT_TARGET, data_root: str | Path | None = None,
                threads: int | None = None) -> ZooEntry:
    """Train a ``scheme``-watermarked model on ``dataset`` and its vanilla twin; write them.

    ``threads`` overrides the recipe's torch thread count while training (digits: 1)."""
    _check_args(dataset, scheme, epochs, target, device, threads)
    recipe = RECIPES[dataset]
    n_epochs = epochs if epochs is not None else recipe.epochs
    repeats = recipe.trigger_repeats
    if scheme == "adi" and recipe.adi_repeats:
        repeats = recipe.adi_repeats
    recipe = replace(recipe, epochs=n_epochs, trigger_repeats=repeats,
                     threads=threads if threads is not None else recipe.threads)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AuditError(f"{out}: cannot create output folder ({exc.strerror or exc})") from None
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    clean = load_clean(dataset, data_root)
    timings["data_s"] = time.perf_counter() - t0
    t = time.perf_counter()
    trig = _trigger_set(dataset, scheme, clean, target=target, seed=seed)
    timings["triggers_s"] = time.perf_counter() - t

    paths = {"watermarked": out / "watermarked.onnx", "vanilla": out / "vanilla.onnx"}
    test_acc, wm_acc, export_diff = _train_pair(dataset, scheme, recipe, clean, trig, paths,
                                                seed=seed, device=device, quiet=quiet,
                                                timings=timings)

    t = time.perf_counter()
    data_dir = _write_inputs(out, dataset, clean, trig)
    timings["write_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0
    timings = {k: round(v, 3) for k, v in timings.items()}

    meta = _meta(dataset, scheme, recipe, clean, trig, test_acc, wm_acc, export_diff,
                 timings, seed=seed, has_data=data_dir is not None)
    _write_json(out / "meta.json", meta)
    log.info("%s/%s: test acc %s, wm acc %s (%.1f s)", dataset, scheme, test_acc, wm_acc,
             timings["total_s"])
    return ZooEntry(dataset, scheme, out, paths["watermarked"], paths["vanilla"],
                    out / "triggers", out / "meta.json", data_dir, test_acc, wm_acc, timings, meta)


STORED_FILES = ("watermarked.onnx", "vanilla.onnx", "meta.json")


def restore_entry(stored_dir: str | Path, out_dir: str | Path, *,
                  data_root: str | Path | None = None) -> ZooEntry:
    """Rebuild the entry ``out_dir`` from a stored build: the two models and meta.json that
    build_entry wrote (``stored_dir``), with the trigger set (and the digits data) made again
    from the data set, as build_entry makes them, without training.

    Training is deterministic on one machine, not across CPUs: keeping a build's models is what
    lets results measured on it be continued elsewhere. The restored models are checked on the
    remade trigger and test sets against the accuracies meta.json records."""
    stored, out = Path(stored_dir), Path(out_dir)
    missing = [f for f in STORED_FILES if not (stored / f).is_file()]
    if missing:
        raise AuditError(f"{stored}: not a stored zoo build (missing {', '.join(missing)})")
    meta = json.loads((stored / "meta.json").read_text())
    dataset, scheme = meta["dataset"], meta["scheme"]
    target = DEFAULT_TARGET if meta["target"] is None else meta["target"]   # None: Adi's labels
    _check_args(dataset, scheme, None, target)
    clean = load_clean(dataset, data_root)
    trig = _trigger_set(dataset, scheme, clean, target=target, seed=meta["seed"])
    pre = Preprocess(**meta["preprocess"])
    for kind in ("watermarked", "vanilla"):
        got, off = {}, []
        for k, ds in (("test_acc", clean.test), ("wm_acc", trig)):
            got[k] = evaluate_onnx(stored / f"{kind}.onnx", ds.x, ds.y, pre)
            # another machine's floating-point results may flip a borderline prediction or two
            if abs(got[k] - meta[k][kind]) > 2.5 / len(ds.y):
                off.append(k)
        if off:
            raise AuditError(f"{stored}: the stored {kind} model does not reproduce its recorded "
                             f"{' and '.join(off)} on the remade data ({got} vs meta.json)")
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)   # an entry is complete again only at the end
    for name in STORED_FILES[:2]:
        _copy(stored / name, out / name)
    _write_inputs(out, dataset, clean, trig)
    _copy(stored / "meta.json", out / "meta.json")   # last: built_entry reads complete entries
    entry = built_entry(out)
    assert entry is not None
    return entry


def store_entry(entry: ZooEntry, stored_dir: str | Path) -> Path:
    """Keep ``entry``'s build (its models and meta.json) in ``stored_dir`` for restore_entry."""
    stored = Path(stored_dir)
    stored.mkdir(parents=True, exist_ok=True)
    for name in STORED_FILES:
        _copy(entry.out_dir / name, stored / name)
    return stored


def build_zoo(datasets: list[str] | tuple[str, ...], schemes: list[str] | tuple[str, ...],
              out_dir: str | Path, **kwargs: Any) -> list[ZooEntry]:
    """Build ``out_dir/<dataset>_<scheme>/`` for every pair; kwargs go to build_entry."""
    for d in datasets:
        for s in schemes:
            _check_args(d, s, kwargs.get("epochs"), kwargs.get("target", DEFAULT_TARGET),
                        kwargs.get("device", "cpu"), kwargs.get("threads"))
    return [build_entry(d, s, Path(out_dir) / f"{d}_{s}", **kwargs)
            for d in datasets for s in schemes]
