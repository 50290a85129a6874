"""audit launder: remove black-box backdoor watermarks with a small clean subset."""

from __future__ import annotations

import math

import click

from audit.cli import SEED, FiniteFloat, data_options, preflight, preprocess_from


@click.command("launder")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--data", type=click.Path(), required=True,
              help="Small correctly-labelled clean subset (folder, .npz or IDX).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True,
              help="Where to write the laundered .onnx (never the input).")
@click.option("--report", "report_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for report.json and trigger PNGs.")
@click.option("--rounds", type=click.IntRange(1, 20), default=3, show_default=True)
@click.option("--early-stop/--no-early-stop", default=True, show_default=True,
              help="Stop before --rounds when the most likely infected class turns into the "
                   "original least likely one, or when nothing is flagged and nothing reset.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--dense-threshold", default="z:2.0", show_default=True,
              help="DT: a number / abs:V (absolute A_diff), z:K (mean+K*std of the layer), top:F.")
@click.option("--conv-threshold", default="z:2.0", show_default=True, help="CT, same forms as DT.")
@click.option("--layers", default="all", show_default=True,
              help="all | second-half | comma-separated layer names (see `audit inspect`).")
@click.option("--epochs", type=click.IntRange(0), default=20, show_default=True, help="Retraining epochs per round.")
@click.option("--lr", default="auto", show_default=True,
              help="Retraining learning rate, or auto: chosen among 1e-3, 3e-4, 1e-4 on a "
                   "20% hold-out of the subset in round 1.")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--distill", type=FiniteFloat(0), default=1.0, show_default=True,
              help="Weight of distillation from the original model on clean images (0 = off).")
@click.option("--flagged-distill-scale", type=FiniteFloat(0), default=3.0, show_default=True,
              help="--distill is multiplied by this once Neural Cleanse has flagged a class "
                   "(its stamped images then guard the unlearning; see README).")
@click.option("--shrink", type=FiniteFloat(0, 1, min_open=True), default=0.5, show_default=True,
              help="When Neural Cleanse flags nothing in round 1, that round retrains from the "
                   "layers' weights multiplied by this, so that memorised images it cannot see "
                   "fade (abstract-image watermarks; see README). 1 = off.")
@click.option("--augment/--no-augment", default=True, show_default=True,
              help="Random shifts of clean and stamped images during retraining.")
@click.option("--ood-share", type=FiniteFloat(0, 4), default=0.5, show_default=True,
              help="Fresh synthetic out-of-distribution images (printed characters, scribbles, "
                   "smooth fields, noise) learnt as the sink class each retraining epoch, as a share of the "
                   "retraining set; against unrelated and abstract-image watermarks. 0 = off.")
@click.option("--trigger-dilate", type=click.IntRange(0, 8), default=0, show_default=True,
              help="Half of the stamped retraining images carry the recovered trigger grown by "
                   "this many pixels (its colours extended): Neural Cleanse recovers the core of a "
                   "trigger, and a backdoor unlearnt on the core alone may still fire.")
@click.option("--nc-epochs", type=click.IntRange(1), default=40, show_default=True,
              help="Neural Cleanse epochs (early stopping may end sooner).")
@click.option("--nc-epochs-later", type=click.IntRange(1), default=20, show_default=True,
              help="Neural Cleanse epochs in rounds 2 and later (at most --nc-epochs).")
@click.option("--nc-steps", type=click.IntRange(1), default=8, show_default=True,
              help="Neural Cleanse optimisation steps per epoch.")
@click.option("--quiet", is_flag=True, help="No progress bars or summary.")
@data_options
def launder(model, data, output, report_dir, rounds, early_stop, seed, dense_threshold, conv_threshold,
            layers, epochs, lr, batch_size, distill, flagged_distill_scale, shrink, augment, ood_share,
            trigger_dilate, nc_epochs, nc_epochs_later, nc_steps, quiet, device, **kw):
    """Launder MODEL: recover triggers, reset the units they drive, retrain; write -o."""
    from audit.api import launder as run_launder
    from audit.errors import AuditError
    from audit.launder import LaunderConfig
    from audit.nc import NCConfig
    from audit.paths import LAUNDER_REPORT, model_has_external_data, output_file, output_folder
    from audit.reset import Threshold
    from audit.retrain import RetrainConfig

    try:
        lr_value = None if str(lr).lower() == "auto" else float(lr)
    except ValueError:
        raise AuditError(f"--lr: expected a number or auto, got {lr!r}") from None
    if lr_value is not None and not (math.isfinite(lr_value) and lr_value > 0):
        raise AuditError(f"--lr: expected a positive number or auto, got {lr!r}")
    Threshold.parse(dense_threshold)
    Threshold.parse(conv_threshold)
    outputs = [output_file(output, "laundered model")]
    if model_has_external_data(model):
        outputs.append(output_file(f"{output}.data", "laundered model's external data"))
    if report_dir:
        outputs.append(output_folder(report_dir, LAUNDER_REPORT, "report folder"))
    preflight(device, outputs=outputs, models=[model], data=[data], files=[kw["input_spec"]])
    pp = preprocess_from(kw)
    cfg = LaunderConfig(rounds=rounds, early_stop=early_stop, seed=seed, dense_threshold=dense_threshold,
                        conv_threshold=conv_threshold, layers=layers, device=device, ood_share=ood_share,
                        trigger_dilate=trigger_dilate, flagged_distill_scale=flagged_distill_scale,
                        nc_epochs_later=nc_epochs_later, shrink=shrink,
                        nc=NCConfig(epochs=nc_epochs, steps_per_epoch=nc_steps),
                        retrain=RetrainConfig(epochs=epochs, lr=lr_value, batch_size=batch_size,
                                              distill=distill, augment=augment))
    res = run_launder(model, data, output, preprocess=pp, config=cfg, report_dir=report_dir,
                      device=device, quiet=quiet)
    if not quiet:
        _summary(res, output, report_dir)
    return 0


def _summary(res, output, report_dir) -> None:
    e = click.echo
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
    if report_dir:
        e(f"report: {report_dir}/report.json")
