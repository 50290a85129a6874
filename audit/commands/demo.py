"""audit demo: the whole story on the embedded digits data, end to end, in a few minutes."""

from __future__ import annotations

import time
from pathlib import Path

import click
import numpy as np

from audit.cli import DEVICE, DEVICE_HELP, SEED, preflight


@click.command("demo")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="audit-demo",
              show_default=True, help="Folder for every model, report and picture.")
@click.option("--scheme", type=click.Choice(["content", "noise", "unrelated", "adi"]),
              default="content", show_default=True, help="Watermark scheme to embed.")
@click.option("--subset", "subset_size", type=click.IntRange(1), default=150, show_default=True,
              help="Clean images the launderer gets (of 1,347 training images).")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--device", type=DEVICE, default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--quiet", is_flag=True, help="Only the final summary.")
def demo(out_dir, scheme, subset_size, seed, device, quiet):
    """Watermark a digits model, verify, detect, launder, verify again, and summarise."""
    from audit import api
    from audit.data import Preprocess, load_dataset, stratified_subset
    from audit.graphs.model import AuditModel
    from audit.launder import LaunderConfig
    from audit.models_zoo.build import build_entry
    from audit.paths import output_folder
    from audit.report import write_json

    preflight(device, outputs=[output_folder(out_dir)])
    t0 = time.perf_counter()
    out = Path(out_dir)
    say = (lambda *a: None) if quiet else (lambda msg: click.echo(msg, err=True))
    say(f"[1/6] building a {scheme}-watermarked digits model and its vanilla twin")
    entry = build_entry("digits", scheme, out / "zoo", seed=seed, quiet=quiet)
    pp = Preprocess(**entry.meta["preprocess"])
    wm = AuditModel.load(entry.watermarked, device=device)
    geo = dict(channels=wm.info.channels, height=wm.info.height, width=wm.info.width,
               num_classes=wm.info.num_classes)
    train = load_dataset(entry.data_dir / "train.npz", **geo)
    test = load_dataset(entry.data_dir / "test.npz", **geo)
    subset = stratified_subset(train, subset_size, seed=seed)
    np.savez(out / "subset.npz", x=np.round(subset.x[:, 0] * 255).astype(np.uint8), y=subset.y)

    say("[2/6] verifying ownership of the watermarked model")
    v_before = api.verify(wm, entry.triggers, vanilla=entry.vanilla, preprocess=pp, device=device)
    say("[3/6] detecting backdoors (Neural Cleanse)")
    det = api.detect(wm, subset, preprocess=pp, seed=seed, report_dir=out / "detect",
                     device=device, quiet=quiet)
    say(f"[4/6] laundering with {len(subset)} clean images")
    res = api.launder(wm, subset, out / "laundered.onnx", preprocess=pp,
                      config=LaunderConfig(seed=seed, device=device),
                      report_dir=out / "launder", device=device, quiet=quiet)
    say("[5/6] verifying ownership of the laundered model")
    lm = res.model
    v_after = api.verify(lm, entry.triggers, vanilla=entry.vanilla, preprocess=pp, device=device)
    say("[6/6] evaluating")
    summary = {
        "scheme": scheme, "subset_size": len(subset), "train_size": len(train),
        "subset_share": len(subset) / len(train),
        "test_accuracy": {"original": wm.accuracy(test.x, test.y, pp),
                          "laundered": lm.accuracy(test.x, test.y, pp)},
        "watermark_accuracy": {"original": v_before.watermark_accuracy,
                               "laundered": v_after.watermark_accuracy},
        "vanilla_rate": v_before.vanilla_rate,
        "ownership": {"original": v_before.demonstrated, "laundered": v_after.demonstrated,
                      "p_value_original": v_before.p_value, "p_value_laundered": v_after.p_value},
        "detect": {"flagged": det["flagged"], "anomaly_index": det["anomaly_index"],
                   "target": entry.meta.get("target")},
        "launder_rounds": len(res.rounds), "launder_seconds": res.seconds,
        "seconds": time.perf_counter() - t0,
    }
    write_json(out / "summary.json", summary)
    _table(summary, out)
    return 0


def _table(s: dict, out: Path) -> None:
    e = click.echo
    ta, wa = s["test_accuracy"], s["watermark_accuracy"]
    pct = lambda v: f"{100 * v:6.2f}"  # noqa: E731
    e("")
    e(f"audit demo — digits, {s['scheme']} watermark (Table-2 style)")
    e(f"{'':24}{'original':>10}{'laundered':>11}")
    e(f"{'test accuracy %':24}{pct(ta['original']):>10}{pct(ta['laundered']):>11}")
    e(f"{'watermark accuracy %':24}{pct(wa['original']):>10}{pct(wa['laundered']):>11}")
    e(f"{'vanilla rate %':24}{pct(s['vanilla_rate']):>10}")
    own = s["ownership"]
    e(f"{'ownership (p<0.01)':24}{'yes' if own['original'] else 'no':>10}"
      f"{'yes' if own['laundered'] else 'no':>11}")
    flagged = ",".join(map(str, s["detect"]["flagged"])) or "none"
    e(f"detect: flagged class(es) {flagged} (watermark target {s['detect']['target']})")
    e(f"laundering data: {s['subset_size']} images = {100 * s['subset_share']:.1f}% of "
      f"{s['train_size']}; {s['launder_rounds']} round(s), {s['launder_seconds']:.0f} s")
    e(f"total {s['seconds']:.0f} s; everything is in {out}/")
