"""audit inspect: what the model is, whether we can audit it, and how faithful conversion is."""

from __future__ import annotations

import click

from audit.cli import data_options, emit_json, preflight, preprocess_from
from audit.errors import AuditError, ConversionError


@click.command("inspect")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--data", type=click.Path(), default=None, help="Labelled data: accuracy and parity.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Use at most this many images of --data.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@data_options
def inspect(model, data, limit, as_json, device, **kw):
    """Describe MODEL: layout, classes, output kind, probe layers, convertibility."""
    from audit.converters.to_torch import to_torch
    from audit.data import data_for
    from audit.graphs.model import AuditModel
    from audit.graphs.probe import find_probe_layers
    from audit.reset import not_resettable

    preflight(device, models=[model], data=[data] if data else [], files=[kw["input_spec"]])
    pp = preprocess_from(kw)
    am = AuditModel.load(model, device=device)
    info = am.info
    layers = find_probe_layers(am.normalised, am.original)
    report = {
        "model": str(model), "producer": info.producer, "ir_version": info.ir_version,
        "opset": info.opset, "input_name": info.input_name, "input_shape": list(info.input_shape),
        "layout": info.layout, "channels": info.channels, "height": info.height,
        "width": info.width, "num_classes": info.num_classes, "output_kind": info.output_kind,
        "fixed_batch": am.fixed_batch, "rewrites": list(am.ctx.applied),
        "assumptions": list(am.ctx.notes),
        "probe_layers": [layer.to_dict() for layer in layers],
        "not_resettable": None, "convertible": False, "conversion_error": None, "parity_max_abs": None,
        "parity_rel": None, "accuracy": None, "n": None,
    }
    x_check = None
    if data:
        ds = data_for(am, data, limit=limit)
        pred = am.predict(ds.x, pp)
        report["accuracy"] = float((pred == ds.y).mean())
        report["n"] = len(ds)
        x_check = am.model_input(ds.x[:256], pp)
    try:
        tm = to_torch(am, x_check)
        report["convertible"] = True
        report["parity_max_abs"] = tm.parity_max_abs
        report["parity_rel"] = tm.parity_rel
        report["assumptions"] += tm.notes
        report["not_resettable"] = not_resettable(tm, find_probe_layers(tm.graph, am.original))
    except ConversionError as exc:
        report["conversion_error"] = str(exc)
    if as_json:
        emit_json(report)
    else:
        _print(report)
    if not layers:
        ml = sorted({n.op_type for n in am.scored.graph.node if n.domain == "ai.onnx.ml"})
        why = f" (its scores come from {', '.join(ml)}, which has no tensor weights to train)" if ml else ""
        raise AuditError(f"{model}: no Conv, Gemm or MatMul layer to audit{why}")
    if not report["convertible"]:
        raise AuditError(f"{model}: cannot be converted to torch: {report['conversion_error']}")
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
