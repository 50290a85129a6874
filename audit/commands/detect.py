"""audit detect: is there a backdoor? (exit 0 none flagged, 1 suspected, 2 error)"""

from __future__ import annotations

import click

from audit.cli import FiniteFloat, data_options, emit_json, preflight, preprocess_from
from audit.config import config_option
from audit.settings import ANOMALY_THRESHOLD, DETECT_THRESHOLD, DetectConfig, NCConfig


@click.command("detect")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--data", type=click.Path(), required=True, help="Clean labelled images.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for report.json and mask/pattern PNGs.")
@config_option(DetectConfig, "max_images", "--max-images")
@config_option(DetectConfig, "seed", "--seed")
@config_option(NCConfig, "epochs", "--nc-epochs")
@config_option(NCConfig, "steps_per_epoch", "--nc-steps")
@config_option(DetectConfig, "anomaly_scale", "--anomaly-scale")
@click.option("--anomaly-threshold", type=FiniteFloat(0, min_open=True), default=None,
              help=f"Anomaly index above which a class is a candidate [default: {DETECT_THRESHOLD:g}; "
                   f"with --no-confirm {ANOMALY_THRESHOLD:g}, Neural Cleanse's].")
@click.option("--confirm/--no-confirm", default=True, show_default=True,
              help="Flag a candidate only when its trigger stays small from other starts, "
                   "works on held-out images and not on clean reference classifiers "
                   "(docs/method.md); --no-confirm flags every candidate.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@data_options
def detect(model, data, report_dir, max_images, seed, nc_epochs, nc_steps, anomaly_scale,
           anomaly_threshold, confirm, as_json, quiet, device, **kw):
    """Recover a trigger per class (Neural Cleanse) and flag anomalously small ones."""
    from audit.api import detect as run_detect
    from audit.paths import DETECT_REPORT, output_folder

    preflight(device, outputs=[output_folder(report_dir, DETECT_REPORT, "report folder") if report_dir else None],
              models=[model], data=[data], files=[kw["input_spec"]])
    pp = preprocess_from(kw)
    nc = DetectConfig(anomaly_scale=anomaly_scale).nc(epochs=nc_epochs, steps_per_epoch=nc_steps)
    d = run_detect(model, data, preprocess=pp, config=nc, seed=seed, max_images=max_images,
                   confirm=confirm, threshold=anomaly_threshold, report_dir=report_dir,
                   device=device, quiet=quiet)
    if as_json:
        emit_json(d)
    else:
        click.echo(f"{'class':>5} {'mask L1':>9} {'anomaly':>8} {'success':>8}")
        rejected = {c["cls"]: c["reasons"] for c in d.get("confirmation", []) if not c["confirmed"]}
        for k, (norm, idx, s) in enumerate(zip(d["norms"], d["anomaly_index"], d["attack_success"])):
            mark = "  <- flagged" if k in d["flagged"] else \
                f"  (not confirmed: {'; '.join(rejected[k])})" if k in rejected else ""
            click.echo(f"{k:>5} {norm:>9.2f} {idx:>8.2f} {s:>8.3f}{mark}")
        verdict = (f"backdoor suspected in class(es) {', '.join(map(str, d['flagged']))}"
                   if d["flagged"] else f"no class flagged (anomaly index <= {d['anomaly_threshold']:g}"
                   + (" or not confirmed)" if rejected else ")"))
        click.echo(verdict)
    return 1 if d["flagged"] else 0
