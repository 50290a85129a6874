"""audit scan: the release gate over many models (exit 0 nothing suspected, 1 suspected or
ownership lost, 2 error, 3 nothing to scan)."""

from __future__ import annotations

import os
import sys

import click

from audit.cli import DEVICE, preflight


@click.command("scan")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--policy", "policy_file", type=click.Path(dir_okay=False), default=None,
              help="TOML policy: per path glob, data, preprocessing, thresholds, watermarks, "
                   "what fails the gate (docs/formats.md).")
@click.option("--data", type=click.Path(), default=None,
              help="Clean labelled images for models whose policy names none.")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "markdown", "sarif", "junit"]),
              default=None, help="Report format: on stdout (default text), or of a single -o "
                                 "file (default: from its extension).")
@click.option("-o", "--output", "outputs", type=click.Path(dir_okay=False), multiple=True,
              help="Write the report here (repeatable; .json .sarif .md .xml .txt pick the format).")
@click.option("--fail-on", type=click.Choice(["suspected", "error", "never"]), default=None,
              help="What fails the gate: suspected models (default), errors as well, or nothing. "
                   "Overrides the policy.")
@click.option("--workers", type=click.IntRange(1), default=None,
              help="Worker processes (default: the number of cores).")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None,
              metavar="[ADDRESS]", help="Run one Ray task per model: on a new local runtime, or "
                                        "on the cluster at ADDRESS (or RAY_ADDRESS); needs the "
                                        "ray extra. Write --ray=ADDRESS after the paths.")
@click.option("--resume", is_flag=True,
              help="Keep the results of models already scanned with the same policy (read from "
                   "the JSON report or the journal of an interrupted run).")
@click.option("--device", type=DEVICE, default="cpu", show_default=True,
              help="Where each job runs torch and onnxruntime (Ray tasks use their GPU share).")
@click.option("--quiet", is_flag=True, help="No progress output.")
def scan(paths, policy_file, data, fmt, outputs, fail_on, workers, ray_address, resume, device, quiet):
    """Inspect, detect and verify every model under PATHS; one verdict per model."""
    from audit.scan import Scan

    job = Scan.prepare(list(paths), policy_file, data=data, fail_on=fail_on, fmt=fmt,
                       outputs=list(outputs), resume=resume)
    preflight(device, outputs=job.output_checks(), models=job.models,
              data=job.data_inputs(), files=job.files())
    progress = None if quiet else Progress(len(job.todo), sys.stderr)
    job.run(workers=workers or os.cpu_count() or 1, ray_address=ray_address, device=device,
            on_result=progress)
    if progress is not None:
        progress.close()
    if not quiet or not job.outputs:
        job.print(click.echo)
    job.write()
    return job.exit_code


class Progress:
    """audit.progress.Bars over models: a bar on a terminal; in a log, one line per model."""

    def __init__(self, total: int, stream) -> None:
        from audit.progress import Bars

        self.total, self.done = total, 0
        self.bars = Bars(stream=stream)
        self.bars.silent_prefixes = ("scan",)   # the per-model lines say it all

    def __call__(self, rec: dict) -> None:
        self.done += 1
        self.bars("scan", self.done, self.total)
        self.bars.line(f"[{self.done}/{self.total}] {rec['path']}: {rec['verdict']} "
                       f"({rec['seconds'].get('total', 0):.1f} s)")

    def close(self) -> None:
        self.bars.close()
