"""audit verify: does the watermark still prove ownership? (exit 0 yes, 1 no, 2 error)"""

from __future__ import annotations

import click

from audit.cli import FiniteFloat, data_options, emit_json, preflight, preprocess_from
from audit.errors import AuditError


@click.command("verify")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--triggers", type=click.Path(), required=True,
              help="Trigger set; its labels are the watermark labels.")
@click.option("--vanilla", type=click.Path(dir_okay=False), multiple=True,
              help="A clean model of the same task: its rate on the triggers is the null rate. "
                   "Repeat it for several: the highest of their rates is.")
@click.option("--null-rate", type=FiniteFloat(0, 1), default=None,
              help="The vanilla rate, if known (default without --vanilla: 1/classes).")
@click.option("--alpha", type=FiniteFloat(0, 1, min_open=True), default=0.01,
              show_default=True, help="Significance level of the one-sided binomial test.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--report", type=click.Path(dir_okay=False), default=None,
              help="Also write the JSON report to this file.")
@data_options
def verify(model, triggers, vanilla, null_rate, alpha, as_json, report, device, **kw):
    """Test MODEL's watermark accuracy on --triggers against the vanilla rate."""
    from audit.api import verify as run_verify
    from audit.paths import output_file

    if vanilla and null_rate is not None:
        raise AuditError("give either --vanilla or --null-rate, not both")
    preflight(device, outputs=[output_file(report, "report file") if report else None],
              models=[model, *vanilla], data=[triggers], files=[kw["input_spec"]])
    pp = preprocess_from(kw)
    v = run_verify(model, triggers, vanilla=list(vanilla) or None, null_rate=null_rate, alpha=alpha,
                   preprocess=pp, device=device)
    out = {"model": str(model), "triggers": str(triggers), **v.to_dict()}
    if report:
        from audit.report import write_json

        write_json(report, out)
    if as_json:
        emit_json(out)
    else:
        verdict = "DEMONSTRATED" if v.demonstrated else "NOT demonstrated"
        click.echo(f"watermark accuracy {v.watermark_accuracy:.4f} ({v.hits}/{v.n})")
        of = (f", the highest of {len(v.vanilla_models)} clean models"
              if v.vanilla_models and len(v.vanilla_models) > 1 else "")
        click.echo(f"vanilla rate       {v.vanilla_rate:.4f} ({v.vanilla_source}{of}); "
                   f"tested against {v.null_rate:.4f}")
        click.echo(f"p-value            {v.p_value:.3g} (one-sided exact binomial, alpha {alpha:g})")
        click.echo(f"ownership          {verdict}")
    return 0 if v.demonstrated else 1
