"""audit detect: is there a backdoor? (exit 0 none flagged, 1 suspected, 2 error)"""

from __future__ import annotations

import click

from audit.cli import SEED, data_options, emit_json, preflight, preprocess_from


@click.command("detect")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--data", type=click.Path(), required=True, help="Clean labelled images.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for report.json and mask/pattern PNGs.")
@click.option("--max-images", type=int, default=1000, show_default=True,
              help="Stratified sample of --data used for trigger recovery.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--nc-epochs", type=click.IntRange(1), default=40, show_default=True)
@click.option("--nc-steps", type=click.IntRange(1), default=8, show_default=True)
@click.option("--anomaly-scale", type=click.Choice(["l1", "log"]), default="log", show_default=True,
              help="Anomaly index on the log of the mask norms (ratios), or on the norms "
                   "themselves as Neural Cleanse (l1); see README.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@data_options
def detect(model, data, report_dir, max_images, seed, nc_epochs, nc_steps, anomaly_scale, as_json,
           quiet, device, **kw):
    """Recover a trigger per class (Neural Cleanse) and flag anomalously small ones."""
    from audit.api import detect as run_detect
    from audit.nc import NCConfig
    from audit.paths import DETECT_REPORT, output_folder

    preflight(device, outputs=[output_folder(report_dir, DETECT_REPORT, "report folder") if report_dir else None],
              models=[model], data=[data], files=[kw["input_spec"]])
    pp = preprocess_from(kw)
    d = run_detect(model, data, preprocess=pp, config=NCConfig(epochs=nc_epochs,
                   steps_per_epoch=nc_steps, anomaly_scale=anomaly_scale), seed=seed, max_images=max_images,
                   report_dir=report_dir, device=device, quiet=quiet)
    if as_json:
        emit_json(d)
    else:
        click.echo(f"{'class':>5} {'mask L1':>9} {'anomaly':>8} {'success':>8}")
        for k, (norm, idx, s) in enumerate(zip(d["norms"], d["anomaly_index"], d["attack_success"])):
            mark = "  <- flagged" if k in d["flagged"] else ""
            click.echo(f"{k:>5} {norm:>9.2f} {idx:>8.2f} {s:>8.3f}{mark}")
        verdict = (f"backdoor suspected in class(es) {', '.join(map(str, d['flagged']))}"
                   if d["flagged"] else "no class flagged (anomaly index <= 2)")
        click.echo(verdict)
    return 1 if d["flagged"] else 0
