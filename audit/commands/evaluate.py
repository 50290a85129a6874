"""audit evaluate: accuracy of a model on labelled data, under onnxruntime."""

from __future__ import annotations

import click
import numpy as np

from audit.cli import data_options, emit_json, preflight, preprocess_from


@click.command("evaluate")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--data", type=click.Path(), required=True, help="Labelled data to score on.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Use at most this many images.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@data_options
def evaluate(model, data, limit, as_json, device, **kw):
    """Print MODEL's accuracy on --data."""
    from audit.data import data_for
    from audit.graphs.model import AuditModel

    preflight(device, models=[model], data=[data], files=[kw["input_spec"]])
    pp = preprocess_from(kw)
    am = AuditModel.load(model, device=device)
    ds = data_for(am, data, limit=limit)
    pred = am.predict(ds.x, pp)
    correct = int((pred == ds.y).sum())
    per_class = {int(c): float((pred[ds.y == c] == c).mean()) for c in np.unique(ds.y)}
    r = {"model": str(model), "data": str(data), "n": len(ds), "correct": correct,
         "accuracy": correct / len(ds), "per_class_accuracy": per_class}
    if as_json:
        emit_json(r)
    else:
        click.echo(f"accuracy {r['accuracy']:.4f} ({correct}/{len(ds)})")
    return 0
