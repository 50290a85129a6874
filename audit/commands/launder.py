"""audit launder: remove black-box backdoor watermarks with a small clean subset.

Every setting is a field of audit.settings.LaunderConfig (its default and help written there
once). The options a user needs are shown; the rest keep their flags, hidden, and come from
`--config FILE.toml` (docs/formats.md). Precedence: defaults < the file < flags given.
"""

from __future__ import annotations

import click
from click.core import ParameterSource

from audit.cli import data_options, preflight, preprocess_from
from audit.config import config_option, explicit_settings, load_config, with_settings
from audit.settings import LaunderConfig


def setting(path: str, *decls: str, **kw):
    return config_option(LaunderConfig, path, *decls, **kw)


@click.command("launder")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--data", type=click.Path(), required=True,
              help="Small correctly-labelled clean subset (folder, .npz or IDX).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True,
              help="Where to write the laundered .onnx (never the input).")
@click.option("--report", "report_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for report.json and trigger PNGs.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="TOML file of any other setting: LaunderConfig fields, [nc] and [retrain] "
                   "tables (docs/formats.md). Options given here override it.")
@setting("rounds", "--rounds")
@setting("seed", "--seed")
@setting("dense_threshold", "--dense-threshold")
@setting("conv_threshold", "--conv-threshold")
@setting("layers", "--layers")
@setting("retrain.epochs", "--epochs")
@setting("retrain.lr", "--lr")
@setting("method", "--method")
@setting("baseline.prune_share", "--prune-share", hidden=True)
# hidden: set them in --config; the flags keep working and override the file
@setting("early_stop", "--early-stop/--no-early-stop", hidden=True)
@setting("retrain.batch_size", "--batch-size", hidden=True)
@setting("retrain.distill", "--distill", hidden=True)
@setting("flagged_distill_scale", "--flagged-distill-scale", hidden=True)
@setting("shrink", "--shrink", hidden=True)
@setting("retrain.augment", "--augment/--no-augment", hidden=True)
@setting("ood_share", "--ood-share", hidden=True)
@setting("trigger_dilate", "--trigger-dilate", hidden=True)
@setting("nc.epochs", "--nc-epochs", hidden=True)
@setting("nc_epochs_later", "--nc-epochs-later", hidden=True)
@setting("nc.steps_per_epoch", "--nc-steps", hidden=True)
@click.option("--quiet", is_flag=True, help="No progress bars or summary.")
@data_options
@click.pass_context
def launder(ctx, model, data, output, report_dir, config_file, quiet, device, **kw):
    """Launder MODEL: recover triggers, reset the units they drive, retrain; write -o.

    --method runs a removal baseline instead, on the same subset and budget (docs/method.md)."""
    from audit.api import launder as run_launder
    from audit.paths import LAUNDER_REPORT, model_has_external_data, output_file, output_folder
    from audit.reset import Threshold

    cfg = load_config(LaunderConfig, config_file) if config_file else LaunderConfig()
    given = explicit_settings(ctx)
    if ctx.get_parameter_source("device") not in (None, ParameterSource.DEFAULT):
        given["device"] = device
    cfg = with_settings(cfg, given)
    Threshold.parse(cfg.dense_threshold)
    Threshold.parse(cfg.conv_threshold)
    outputs = [output_file(output, "laundered model")]
    if model_has_external_data(model):
        outputs.append(output_file(f"{output}.data", "laundered model's external data"))
    if report_dir:
        outputs.append(output_folder(report_dir, LAUNDER_REPORT, "report folder"))
    preflight(cfg.device, outputs=outputs, models=[model], data=[data],
              files=[kw["input_spec"], config_file])
    pp = preprocess_from(kw)
    res = run_launder(model, data, output, preprocess=pp, config=cfg, report_dir=report_dir,
                      device=cfg.device, quiet=quiet)
    if not quiet:
        _summary(res, output, report_dir)
    return 0


def _summary(res, output, report_dir) -> None:
    e = click.echo
    if res.method != "laundering":
        e(f"{res.method} -> {output}   ({res.seconds:.1f} s)")
        note = res.baseline.get("note")
        if note:
            e(f"note: {note}")
        e(f"subset accuracy {res.subset_accuracy_before:.4f} -> {res.subset_accuracy_after:.4f}")
        if report_dir:
            e(f"report: {report_dir}/report.json")
        return
    e(f"laundered -> {output}   ({res.seconds:.1f} s, {len(res.rounds)} round(s); {res.stop_reason})")
    e(f"{'round':>5}  {'flagged':<10} {'likely':>6} {'least':>5} {'max idx':>7} "
      f"{'units reset':>11} {'subset acc':>10}")
    for r in res.rounds:
        rec = r.recovery
        flagged = ",".join(map(str, rec["flagged"])) or "-"
        reset = sum(r.units_reset.values())
        acc = "-" if r.stopped else f"{r.subset_accuracy:.4f}"
        e(f"{r.round:>5}  {flagged:<10} {rec['most_likely_infected']:>6} {rec['least_likely']:>5} "
          f"{max(rec['anomaly_index']):>7.2f} {reset:>11} {acc:>10}"
          + ("  " + r.stopped if r.stopped else ""))
    e(f"kept round {res.best_round}; subset accuracy {res.subset_accuracy_before:.4f} -> "
      f"{res.subset_accuracy_after:.4f}")
    for name, why in res.not_resettable.items():
        e(f"not reset: {name}: {why}")
    if report_dir:
        e(f"report: {report_dir}/report.json")
