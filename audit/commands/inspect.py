"""audit inspect: what the model is, whether we can audit it, and how faithful conversion is."""

from __future__ import annotations

import click

from audit.cli import data_options, emit_json, preflight, preprocess_from
from audit.errors import AuditError


@click.command("inspect")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--data", type=click.Path(), default=None, help="Labelled data: accuracy and parity.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Use at most this many images of --data.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@data_options
def inspect(model, data, limit, as_json, device, **kw):
    """Describe MODEL: layout, classes, output kind, probe layers, convertibility."""
    from audit.api import inspect as run_inspect
    from audit.api import unusable

    preflight(device, models=[model], data=[data] if data else [], files=[kw["input_spec"]])
    report = run_inspect(model, data, limit=limit, preprocess=preprocess_from(kw), device=device)
    if as_json:
        emit_json(report)
    else:
        _print(report)
    problem = unusable(report)
    if problem:
        raise AuditError(f"{model}: {problem}")
    return 0


def _print(r: dict) -> None:
    e = click.echo
    e(f"model        {r['model']}")
    e(f"producer     {r['producer'] or '(unknown)'}   IR {r['ir_version']}  opset {r['opset']}")
    e(f"input        {r['input_name']} {r['input_shape']}  layout {r['layout']} "
      f"({r['channels']}x{r['height']}x{r['width']})"
      + (f"  fixed batch {r['fixed_batch']}" if r["fixed_batch"] else ""))
    e(f"classes      {r['num_classes']}   output: {r['output_kind']}")
    if r["rewrites"]:
        e(f"rewrites     {', '.join(r['rewrites'])}")
    for note in r["assumptions"]:
        e(f"assumed      {note}")
    e("probe layers")
    skipped = r["not_resettable"] or {}
    for layer in r["probe_layers"]:
        tag = "  (output)" if layer["is_output"] else ""
        if layer["name"] in skipped:
            tag = f"  (not resettable: {skipped[layer['name']]})"
        act = f" + {layer['activation']}" if layer["activation"] else ""
        e(f"  {layer['op']:<7} {layer['units']:>5} units  {layer['name']}{act}{tag}")
    if r["convertible"]:
        e(f"torch        convertible, parity max |ORT - torch| = {r['parity_max_abs']:.3g}"
          f" (relative {r['parity_rel']:.3g})")
    else:
        e(f"torch        NOT convertible: {r['conversion_error']}")
    if r["accuracy"] is not None:
        e(f"accuracy     {r['accuracy']:.4f} on {r['n']} images (onnxruntime)")
