"""Python API mirroring the CLI: launder(), detect(), verify()."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from audit import __version__
from audit.data import Dataset, Preprocess
from audit.graphs.io import had_external_data, save_model, sha256_file
from audit.graphs.model import AuditModel
from audit.launder import LaunderConfig, LaunderResult, launder_model
from audit.progress import Bars
from audit.report import SCHEMA_VERSION, write_json, write_recovery_pngs
from audit.session import data_for


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
    am = _model(model, device)
    subset = _data(am, data)
    if output is not None and am.path is not None:
        save_model(am.original, output, inputs=(am.path,))  # fail early on overwrite, then replaced
        Path(output).unlink()
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
