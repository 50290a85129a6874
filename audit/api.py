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
from audit.launder import LaunderConfig, LaunderResult
from audit.methods import remove
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


def inspect(model, data=None, *, limit: int | None = None, preprocess: Preprocess | None = None,
            device: str = "auto") -> dict:
    """What `audit inspect --json` prints: layout, classes, probe layers, convertibility, parity
    and (with data) accuracy. unusable(report) says why laundering could not run on it."""
    from audit.converters.to_torch import to_torch
    from audit.errors import ConversionError
    from audit.graphs.probe import find_probe_layers
    from audit.reset import not_resettable

    pp = preprocess or Preprocess()
    am = _model(model, device)
    info = am.info
    layers = find_probe_layers(am.normalised, am.original)
    report = {
        "model": str(am.path) if isinstance(model, AuditModel) and am.path else str(model),
        "producer": info.producer,
        "ir_version": info.ir_version, "opset": info.opset, "input_name": info.input_name,
        "input_shape": list(info.input_shape), "layout": info.layout, "channels": info.channels,
        "height": info.height, "width": info.width, "num_classes": info.num_classes,
        "output_kind": info.output_kind, "fixed_batch": am.fixed_batch,
        "rewrites": list(am.ctx.applied), "assumptions": list(am.ctx.notes),
        "probe_layers": [layer.to_dict() for layer in layers], "scored_by": None,
        "not_resettable": None, "convertible": False, "conversion_error": None, "parity_max_abs": None,
        "parity_rel": None, "accuracy": None, "n": None,
    }
    if not layers:
        report["scored_by"] = sorted({n.op_type for n in am.scored.graph.node if n.domain == "ai.onnx.ml"})
    x_check = None
    if data is not None:
        ds = data_for(am, data, limit=limit) if not isinstance(data, Dataset) else data
        report["accuracy"] = float((am.predict(ds.x, pp) == ds.y).mean())
        report["n"] = len(ds)
        x_check = am.model_input(ds.x[:256], pp)
    try:
        tm = to_torch(am, x_check)
        report.update(convertible=True, parity_max_abs=tm.parity_max_abs, parity_rel=tm.parity_rel,
                      not_resettable=not_resettable(tm, find_probe_layers(tm.graph, am.original)))
        report["assumptions"] += tm.notes
    except ConversionError as exc:
        report["conversion_error"] = str(exc)
    return report


def unusable(report: dict) -> str | None:
    """Why an inspected model cannot be audited (None: it can)."""
    if not report["probe_layers"]:
        why = (f" (its scores come from {', '.join(report['scored_by'])}, which has no tensor "
               "weights to train)") if report.get("scored_by") else ""
        return f"no Conv, Gemm or MatMul layer to audit{why}"
    if not report["convertible"]:
        return f"cannot be converted to torch: {report['conversion_error']}"
    return None


def launder(model, data, output: str | os.PathLike | None = None, *,
            preprocess: Preprocess | None = None, config: LaunderConfig | None = None,
            report_dir: str | os.PathLike | None = None, device: str = "auto",
            quiet: bool = True, on_round=None) -> LaunderResult:
    """Launder model (path or AuditModel) with data (path or Dataset); optionally write results.
    config.method picks laundering (the default) or a removal baseline (audit.methods).
    on_round(round_result, forward), if given, is called after each laundering round that
    retrained, with the torch forward of the current weights (images in [0, 1] -> logits)."""
    cfg = config or LaunderConfig(device=device)
    pp = preprocess or Preprocess()
    _check_paths(model, data, output, report_dir, LAUNDER_REPORT)  # save_model checks again at the end
    am = _model(model, device)
    subset = _data(am, data)
    bars = Bars(quiet)
    bars.silent_prefixes = ("round ",)   # a log gets one line per round instead
    try:
        def each_round(result, forward) -> None:
            bars.round_line(result, forward)
            if on_round is not None:
                on_round(result, forward)

        result = remove(am, subset, pp, cfg, progress=bars, on_round=each_round)
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
           confirm: bool = True, threshold: float | None = None,
           report_dir=None, pictures: str = "all", device: str = "auto", quiet: bool = True) -> dict:
    """Neural Cleanse over every class; returns the summary dict (flagged, anomaly indices...).

    Without config (an NCConfig) the anomaly index is taken on detection's scale,
    DetectConfig.anomaly_scale (the log of the mask norms, as `audit detect`); NCConfig() is
    Neural Cleanse's index on the norms themselves. The summary carries both (anomaly_index,
    anomaly_index_l1). max_images None or 0: every image. threshold: the anomaly index above
    which a class is a candidate (default settings.detect_threshold: 1.75 with confirm, 2
    without). confirm: a candidate is flagged only once audit.confirm finds its trigger small
    from other starts, working on held-out images and the model's own (the summary's
    "candidates" and "confirmation" say what was checked). report_dir: the
    folder for report.json and the trigger pictures of every class ("all") or of the flagged
    ones ("flagged")."""
    import torch

    from audit.converters.to_torch import to_torch
    from audit.forward import make_forward
    from audit.nc import anomaly_index, recover
    from audit.settings import detect_threshold

    pp = preprocess or Preprocess()
    thr = detect_threshold(threshold, confirm)
    _check_paths(model, data, None, report_dir, DETECT_REPORT)
    am = _model(model, device)
    ds = _data(am, data)
    if len(ds.classes()) < 2:
        from audit.errors import DataError

        raise DataError(f"{ds.source}: detection needs clean images of at least 2 classes")
    ds, held = _detection_split(ds, max_images, seed, confirm)
    from audit.graphs import runtime

    tdev = runtime.torch_device(device)   # Neural Cleanse runs where --device says
    tm = to_torch(am, am.model_input(ds.x[:128], pp), device=tdev)
    for p in tm.module.parameters():
        p.requires_grad_(False)
    forward = make_forward(tm, pp)
    nc = config or DetectConfig().nc()
    bars = Bars(quiet)
    torch.manual_seed(seed)
    try:
        rec = recover(forward, ds.x, am.info.num_classes, nc,
                      seed=seed, progress=lambda e, n: bars("recover", e, n), device=tdev)
    finally:
        bars.close()
    rec.flagged = anomaly_index(rec.norms, nc.anomaly_scale, thr)[1]
    out = {"model": str(am.path) if am.path else None, "n_images": len(ds), **rec.summary(),
           "nc": rec.config, "anomaly_threshold": thr}
    if confirm:
        from audit.confirm import confirm as run_confirm

        checks = run_confirm(forward, ds.x, (held.x, held.y), rec, rec.flagged, nc, seed=seed,
                             threshold=thr, fit_y=ds.y, device=tdev)
        out.update(candidates=list(rec.flagged), n_held_out=len(held),
                   confirmation=[c.to_dict() for c in checks],
                   flagged=[c.cls for c in checks if c.confirmed])
    out["suspected"] = bool(out["flagged"])
    if report_dir is not None:
        write_recovery_pngs(report_dir, rec, ds.x[0], None if pictures == "all" else out["flagged"])
        _write_detect_report(Path(report_dir) / "report.json", am, data, ds, pp, out)
    return out


def _write_detect_report(path: Path, am: AuditModel, data, ds: Dataset, pp: Preprocess,
                         out: dict) -> None:
    given = not isinstance(data, Dataset)
    write_json(path, {
        "schema_version": SCHEMA_VERSION, "tool": f"audit {__version__}", "command": "detect",
        "inputs": {"model_sha256": sha256_file(am.path) if am.path else None,
                   "data": str(data) if given else ds.source,
                   "data_sha256": input_digest(data) if given else None},
        "preprocess": pp.to_dict(), **out})


def _detection_split(ds: Dataset, max_images: int | None, seed: int, confirm: bool
                     ) -> tuple[Dataset, Dataset | None]:
    """The images Neural Cleanse fits (a stratified sample of at most max_images) and, when
    confirming, held-out images it never sees: the rest of the data where there is enough of
    it, otherwise a stratified fifth of the images taken out first."""
    from audit.confirm import HELD_OUT_MAX, HELD_OUT_MIN
    from audit.data import stratified_indices

    def pick(idx: np.ndarray, n: int | None, s: int) -> np.ndarray:
        if not n or len(idx) <= n:
            return idx
        return idx[stratified_indices(ds.subset(idx), n, s)]

    everything = np.arange(len(ds))
    fit = pick(everything, max_images, seed)
    if not confirm:
        return ds.subset(fit), None
    rest = np.setdiff1d(everything, fit)
    if len(rest) < HELD_OUT_MIN:
        rest = pick(everything, max(HELD_OUT_MIN, len(ds) // 5), seed + 1)
        fit = pick(np.setdiff1d(everything, rest), max_images, seed)
    return ds.subset(fit), ds.subset(pick(rest, HELD_OUT_MAX, seed + 1))


def verify(model, triggers, *, vanilla=None, null_rate: float | None = None, alpha: float = 0.01,
           preprocess: Preprocess | None = None, device: str = "auto"):
    """Watermark accuracy of model on triggers vs the vanilla rate (one-sided binomial test).

    vanilla: a clean model of the same task (path or AuditModel), or a list of them; with
    several, the highest of their rates on the triggers is the null rate: two clean models
    disagree on out-of-distribution triggers, and one of them alone may sit far below another
    (docs/method.md, "What the rule grants a clean model")."""
    from audit.errors import ModelError
    from audit.verify import verify_predictions

    pp = preprocess or Preprocess()
    am = _model(model, device)
    trig = _data(am, triggers)
    pred = am.predict(trig.x, pp)
    vanilla_hits, measured = None, None
    if vanilla is not None:
        many = vanilla if isinstance(vanilla, (list, tuple)) else [vanilla]
        if not many:
            raise ModelError("no vanilla model given")
        measured = []
        for v in many:
            va = _model(v, device)
            a, b = am.info, va.info
            if (a.channels, a.height, a.width) != (b.channels, b.height, b.width):
                raise ModelError(f"vanilla model input {b.channels}x{b.height}x{b.width} differs "
                                 f"from the model's {a.channels}x{a.height}x{a.width}")
            if a.num_classes != b.num_classes:
                raise ModelError(f"vanilla model has {b.num_classes} classes, the model "
                                 f"{a.num_classes}")
            hits = int((va.predict(trig.x, pp) == trig.y).sum())
            measured.append({"model": str(v), "hits": hits, "rate": hits / len(trig)})
        top = max(measured, key=lambda m: m["hits"])     # the first of equal rates
        vanilla_hits, rate, source = top["hits"], top["rate"], f"model:{top['model']}"
    elif null_rate is not None:
        rate, source = float(null_rate), "given"
    else:
        rate, source = 1.0 / am.info.num_classes, "chance"
    return verify_predictions(pred, trig.y, rate, alpha=alpha, vanilla_source=source,
                              vanilla_hits=vanilla_hits, vanilla_models=measured)
