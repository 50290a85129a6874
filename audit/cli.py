"""The `audit` command line. Errors are one line on stderr and exit code 2."""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import sys

import click

from audit.errors import AuditError, one_line

log = logging.getLogger("audit")


class FiniteFloat(click.FloatRange):
    """A float option within optional bounds that also refuses nan and inf."""

    name = "finite float"

    def convert(self, value, param, ctx):
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return rv


#: Seeds are what numpy and torch both accept.
SEED = click.IntRange(0, 2**32 - 1)


class DeviceType(click.ParamType):
    """auto, cpu, cuda or cuda:N; whether the device is present is preflight's check."""

    name = "auto|cpu|cuda|cuda:N"

    def get_metavar(self, param, ctx=None) -> str:
        return self.name

    def convert(self, value, param, ctx):
        from audit.graphs.runtime import parse_device

        try:
            return parse_device(value)
        except AuditError as exc:
            self.fail(str(exc), param, ctx)


DEVICE = DeviceType()
#: what --device says (data_options, demo)
DEVICE_HELP = ("Where onnxruntime and torch run: Neural Cleanse, retraining and every torch "
               "forward on the torch device, onnxruntime sessions on the matching provider. "
               "auto: CUDA device 0 where usable, else the CPU.")


def data_options(f):
    """--scale/--mean/--std/--input-spec/--device, shared by every command that reads data."""
    opts = [
        click.option("--scale", type=float, default=None,
                     help="Pixel scale: model input = (u8*scale - mean)/std. Default 1/255."),
        click.option("--mean", default=None, help="Mean, one value or comma-separated per channel."),
        click.option("--std", default=None, help="Std, one value or comma-separated per channel."),
        click.option("--input-spec", type=click.Path(dir_okay=False), default=None,
                     help='JSON file {"scale":..,"mean":..,"std":..}; options override it.'),
        click.option("--device", type=DEVICE, default="auto", show_default=True, help=DEVICE_HELP),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def preprocess_from(kw: dict):
    from audit.data import Preprocess

    return Preprocess.from_options(kw.pop("scale"), kw.pop("mean"), kw.pop("std"),
                                   kw.pop("input_spec"))


def preflight(device: str | None, *, outputs=(), models=(), data=(), files=()) -> None:
    """Checks made before any work: the device is usable, and no output (audit.paths.Output)
    touches an input model (with its external data), data set or other input file, collides
    with another output or cannot be created. Raises AuditError with one line."""
    from audit.paths import check_outputs, data_inputs, model_inputs

    inputs = [p for m in models for p in model_inputs(m)]
    inputs += [p for d in data for p in data_inputs(d)]
    inputs += [f for f in files if f is not None]
    check_outputs(outputs, inputs)
    if device is not None:
        from audit.graphs.runtime import check_device

        check_device(device)


def emit_json(obj) -> None:
    from audit.report import json_default

    click.echo(json.dumps(obj, indent=2, default=json_default))


#: command name -> module holding it; loaded when the command is asked for
COMMANDS = {
    "inspect": "audit.commands.inspect",
    "evaluate": "audit.commands.evaluate",
    "launder": "audit.commands.launder",
    "detect": "audit.commands.detect",
    "verify": "audit.commands.verify",
    "demo": "audit.commands.demo",
    "scan": "audit.commands.scan",
    "zoo": "audit.models_zoo.cli",
}


class LazyGroup(click.Group):
    """A group that knows its commands from the start and imports each one when it is used
    (listed in --help, invoked), so that `audit --help` stays cheap and no module cycle forms."""

    def __init__(self, *args, lazy: dict[str, str], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy)

    def list_commands(self, ctx) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx, name: str):
        if name not in self.commands and name in self.lazy:
            mod = importlib.import_module(self.lazy[name])
            cmd = getattr(mod, name.replace("-", "_"), None) or getattr(mod, "command", None)
            if cmd is None:
                return None
            self.add_command(cmd, name)
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="audit-laundering", prog_name="audit")
@click.option("-v", "--verbose", count=True, help="More log output on stderr.")
def cli(verbose: int) -> None:
    """Launder, detect and verify black-box backdoor watermarks in ONNX image classifiers."""
    logging.basicConfig(level=logging.WARNING - 10 * min(verbose, 2), stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")


def main() -> None:
    """Console entry point."""
    sys.exit(run())


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code: one error line and 2 instead of a traceback."""
    try:
        rv = cli.main(args=argv, prog_name="audit", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        return 1
    except click.ClickException as exc:   # AuditError included
        click.echo(f"error: {one_line(exc.format_message()) or type(exc).__name__}", err=True)
        return exc.exit_code if isinstance(exc, AuditError) else 2
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        return 130
    except Exception as exc:  # never a traceback for users; AUDIT_DEBUG=1 shows it
        if os.environ.get("AUDIT_DEBUG"):
            raise
        click.echo(f"error: internal error: {type(exc).__name__}: {one_line(exc) or type(exc).__name__} "
                   "(set AUDIT_DEBUG=1 for a traceback)", err=True)
        return 2
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    main()
