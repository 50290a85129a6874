"""Python API mirroring the CLI: launder(), detect(), verify()."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from audit import __version__
from audit.data import Dataset, Preprocess, data_for
from audit.graphs.io import had_external_data, save_model, sha256_file
from audit.graphs.model import AuditModel
from audit.launder import LaunderConfig, LaunderResult, launder_model
from audit.paths import (
    DETECT_REPORT,
    LAUNDER_REPORT,
    check_outputs,
    data_inputs,
    model_has_external_data,
    model_inputs,
    output_file,
    output_folder,
)
from audit.progress import Bars
from audit.report import SCHEMA_VERSION, write_json, write_recovery_pngs
from audit.settings import DetectConfig


def _model(model, device: str) -> AuditModel:
    return model if isinstance(model, AuditModel) else AuditModel.load(model, device=device)


def _data(am: AuditModel, data) -> Dataset:
    return data if isinstance(data, Dataset) else data_for(am, data)


def input_digest(path: str | os.PathLike) -> str | None:
    """sha256 of a file, or of a folder's relative paths and bytes (sorted)."""
    p = Path(path)
    if p.is_file():
        return sha256_file(p)
    if p.is_dir():
        h = hashlib.sha256()
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            h.update(str(f.relative_to(p)).encode())
            h.update(sha256_file(f).encode())
        return h.hexdigest()
    return None


def launder(model, data, output: str | os.PathLike | None = None, *,
            preprocess: Preprocess | None = None, config: LaunderConfig | None = None,
            report_dir: str | os.PathLike | None = None, device: str = "auto",
            quiet: bool = True) -> LaunderResult:
    """Launder model (path or AuditModel) with data (path or Dataset); optionally write results."""
    cfg = config or LaunderConfig(device=device)
    pp = preprocess or Preprocess()
    _check_paths(model, data, output, report_dir, LAUNDER_REPORT)  # save_model checks again at the end
    am = _model(model, device)
    subset = _data(am, data)
    bars = Bars(quiet)
    try:
        result = launder_model(am, subset, pp, cfg, progress=bars)
    finally:
        bars.close()
    if output is not None:
        ext = am.path is not None and had_external_data(am.path)
        result.output = save_model(result.model.original, output, external_data=ext,
                                   inputs=(am.path,) if am.path else ())
    if report_dir is not None:
        write_launder_report(report_dir, am, subset, pp, cfg, result, data)
    return result


def _check_paths(model, data, output, report_dir, report_writes: tuple[str, ...]) -> None:
    """Before the long run: no output may touch an input (audit.paths.check_outputs). An existing
    output file is not touched here: it is replaced atomically once the result is written."""
    model_path = model.path if isinstance(model, AuditModel) else model
    outputs = []
    if output is not None:
        outputs.append(output_file(output, "laundered model"))
        if model_has_external_data(model_path):
            outputs.append(output_file(f"{output}.data", "laundered model's external data"))
    if report_dir is not None:
        outputs.append(output_folder(report_dir, report_writes, "report folder"))
    inputs = model_inputs(model_path) + (data_inputs(data) if not isinstance(data, Dataset) else [])
    check_outputs(outputs, inputs)


def write_launder_report(report_dir, am: AuditModel, subset: Dataset, pp: Preprocess,
                         cfg: LaunderConfig, result: LaunderResult, data_arg) -> Path:
    folder = Path(report_dir)
    folder.mkdir(parents=True, exist_ok=True)
    example = subset.x[int(np.argmax(subset.y == subset.y.min()))]
    pictures = {}
    for i, rec in enumerate(result.recoveries, start=1):
        pictures[f"round_{i}"] = [str(Path(p).relative_to(folder)) for p in
                                  write_recovery_pngs(folder / f"round_{i}", rec, example)]
    report = {
        "schema_version": SCHEMA_VERSION, "tool": f"audit {__version__}", "command": "launder",
        "inputs": {
            "model": str(am.path) if am.path else None,
            "model_sha256": sha256_file(am.path) if am.path else None,
            "data": str(data_arg) if not isinstance(data_arg, Dataset) else subset.source,
            "data_sha256": input_digest(data_arg) if not isinstance(data_arg, Dataset) else None,
            "subset_size": len(subset), "subset_classes": subset.classes().tolist(),
        },
        "model": am.info.to_dict(),
        "preprocess": pp.to_dict(),
        "parameters": cfg.to_dict(),
        "output": str(result.output) if result.output else None,
        "output_sha256": sha256_file(result.output) if result.output else None,
        **result.to_dict(),
        "pictures": pictures,
    }
    return write_json(folder / "report.json", report)


def detect(model, data, *, preprocess: Preprocess | None = None, config=None,
           seed: int = DetectConfig.seed, max_images: int | None = DetectConfig.max_images,
           report_dir=None, device: str = "auto", quiet: bool = True) -> dict:
    """Neural Cleanse over every class; returns the summary dict (flagged, anomaly indices...).

    Without config (an NCConfig) the anomaly index is taken on detection's scale,
    DetectConfig.anomaly_scale (the log of the mask norms, as `audit detect`); NCConfig() is
    Neural Cleanse's index on the norms themselves. The summary carries both (anomaly_index,
    anomaly_index_l1). max_images None or 0: every image."""
    import torch

    from audit.converters.to_torch import to_torch
    from audit.data import stratified_subset
    from audit.forward import make_forward
    from audit.nc import recover

    pp = preprocess or Preprocess()
    _check_paths(model, data, None, report_dir, DETECT_REPORT)
    am = _model(model, device)
    ds = _data(am, data)
    if len(ds.classes()) < 2:
        from audit.errors import DataError

        raise DataError(f"{ds.source}: detection needs clean images of at least 2 classes")
    if max_images and len(ds) > max_images:
        ds = stratified_subset(ds, max_images, seed=seed)
    from audit.graphs import runtime

    tdev = runtime.torch_device(device)   # Neural Cleanse runs where --device says
    tm = to_torch(am, am.model_input(ds.x[:128], pp), device=tdev)
    for p in tm.module.parameters():
        p.requires_grad_(False)
    bars = Bars(quiet)
    torch.manual_seed(seed)
    try:
        rec = recover(make_forward(tm, pp), ds.x, am.info.num_classes,
                      config or DetectConfig().nc(),
                      seed=seed, progress=lambda e, n: bars("recover", e, n), device=tdev)
    finally:
        bars.close()
    out = {"model": str(am.path) if am.path else None, "n_images": len(ds), **rec.summary(),
           "nc": rec.config, "suspected": bool(rec.flagged)}
    if report_dir is not None:
        folder = Path(report_dir)
        write_recovery_pngs(folder, rec, ds.x[0])
        write_json(folder / "report.json", {
            "schema_version": SCHEMA_VERSION, "tool": f"audit {__version__}", "command": "detect",
            "inputs": {"model_sha256": sha256_file(am.path) if am.path else None,
                       "data": str(data) if not isinstance(data, Dataset) else ds.source,
                       "data_sha256": input_digest(data) if not isinstance(data, Dataset) else None},
            "preprocess": pp.to_dict(), **out})
    return out


def verify(model, triggers, *, vanilla=None, null_rate: float | None = None, alpha: float = 0.01,
           preprocess: Preprocess | None = None, device: str = "auto"):
    """Watermark accuracy of model on triggers vs the vanilla rate (one-sided binomial test)."""
    from audit.errors import ModelError
    from audit.verify import verify_predictions

    pp = preprocess or Preprocess()
    am = _model(model, device)
    trig = _data(am, triggers)
    pred = am.predict(trig.x, pp)
    vanilla_hits = None
    if vanilla is not None:
        va = _model(vanilla, device)
        a, b = am.info, va.info
        if (a.channels, a.height, a.width) != (b.channels, b.height, b.width):
            raise ModelError(f"vanilla model input {b.channels}x{b.height}x{b.width} differs from "
                             f"the model's {a.channels}x{a.height}x{a.width}")
        if a.num_classes != b.num_classes:
            raise ModelError(f"vanilla model has {b.num_classes} classes, the model {a.num_classes}")
        vanilla_hits = int((va.predict(trig.x, pp) == trig.y).sum())
        rate, source = vanilla_hits / len(trig), f"model:{vanilla}"
    elif null_rate is not None:
        rate, source = float(null_rate), "given"
    else:
        rate, source = 1.0 / am.info.num_classes, "chance"
    return verify_predictions(pred, trig.y, rate, alpha=alpha, vanilla_source=source,
                              vanilla_hits=vanilla_hits)
