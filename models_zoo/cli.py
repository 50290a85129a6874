"""``audit zoo build``: build reference watermarked models and their vanilla twins."""

from __future__ import annotations

from pathlib import Path

import click

from .datasets import DATASETS
from .watermarks import SCHEMES

# the wide zoo's sizes and splits (models_zoo/wide.py, which imports torch: kept out of here)
SIZES = ("digits", "mnist", "cifar10")
SPLITS = ("dev", "heldout")

__all__ = ["zoo"]


@click.group("zoo")
def zoo() -> None:
    """Reference watermarked models (and vanilla twins) built by code."""


def _fmt(v: float) -> str:
    return f"{100 * v:6.2f}"


@zoo.command("build")
@click.option("--dataset", type=click.Choice(DATASETS), default="digits", show_default=True,
              help="digits is embedded (scikit-learn); mnist and cifar10 need ../shared/data "
                   "or --data-root.")
@click.option("--scheme", type=click.Choice([*SCHEMES, "all"]), default="content",
              show_default=True, help="Watermark scheme (Zhang content/noise/unrelated, Adi).")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True)
@click.option("--epochs", type=int, default=None, help="Override the data set's epochs.")
@click.option("--target", type=int, default=0, show_default=True,
              help="Watermark target class (Zhang schemes).")
@click.option("--device", default="cpu", show_default=True, help="torch device for training.")
@click.option("--threads", type=int, default=None,
              help="torch CPU threads while training (default: 1 for digits, torch's default "
                   "otherwise; 1 is faster when the cores are busy with other work).")
@click.option("--data-root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder holding mnist/, cifar10/, adi_trigger_set/ "
                   "(default: <repo>/../shared/data).")
@click.option("-o", "--out", "out_dir", required=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Output folder; one sub-folder <dataset>_<scheme> per entry with --scheme "
                   "all, else the entry itself.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--wide", type=click.IntRange(min=1), default=None, metavar="N",
              help="Build the first N randomised draws of the wide zoo (models_zoo/wide.py: "
                   "scheme, mark, architecture, recipe and exporter drawn from the seed) into "
                   "OUT/<split>/<size>-<seed>/, twins into OUT/twins/; built draws are reused.")
@click.option("--split", type=click.Choice(SPLITS), default=None,
              help="With --wide: dev (seeds 0-999, for tuning) or heldout (1000 and up, for "
                   "reporting). Default dev.")
@click.option("--size", type=click.Choice(SIZES), default=None,
              help="With --wide: digits (8x8 or 16x16, embedded), mnist or cifar10 (need "
                   "../shared/data or --data-root). Default digits.")
@click.pass_context
def build(ctx: click.Context, dataset: str, scheme: str, seed: int, epochs: int | None,
          target: int, device: str, threads: int | None, data_root: Path | None, out_dir: Path,
          quiet: bool, wide: int | None, split: str | None, size: str | None) -> None:
    """Train a watermarked model and its vanilla twin; write ONNX files, the trigger set
    (image folder), meta.json and, for digits, the clean data as .npz. With --wide, build
    draws of the wide zoo instead."""
    from audit.paths import check_outputs, output_folder

    from .build import build_entry, build_zoo
    from .datasets import default_data_root
    from .watermarks import default_adi_path

    root = data_root if data_root is not None else default_data_root()
    if wide is None and (split is not None or size is not None):
        raise click.UsageError("--split and --size go with --wide")
    if wide is not None:
        _check_wide_options(ctx)
        _build_wide(wide, split or "dev", size or "digits", out_dir, root, data_root,
                    device=device, threads=1 if threads is None else threads, quiet=quiet)
        return
    inputs = {"mnist": [root / "mnist"], "cifar10": [root / "cifar10"]}.get(dataset, [])
    if scheme in ("adi", "all"):
        inputs.append(default_adi_path())
    check_outputs([output_folder(out_dir)], inputs)
    kwargs = {"seed": seed, "epochs": epochs, "device": device, "quiet": quiet,
              "target": target, "threads": threads, "data_root": data_root}
    if scheme == "all":
        entries = build_zoo([dataset], list(SCHEMES), out_dir, **kwargs)
    else:
        entries = [build_entry(dataset, scheme, out_dir, **kwargs)]
    click.echo(f"{'entry':<20} {'test% wm':>8} {'test% van':>9} {'wm% wm':>7} {'wm% van':>8} "
               f"{'time s':>7}  folder")
    for e in entries:
        click.echo(f"{e.dataset + '/' + e.scheme:<20} {_fmt(e.test_acc['watermarked']):>8} "
                   f"{_fmt(e.test_acc['vanilla']):>9} {_fmt(e.wm_acc['watermarked']):>7} "
                   f"{_fmt(e.wm_acc['vanilla']):>8} {e.timings['total_s']:7.1f}  {e.out_dir}")


def _check_wide_options(ctx: click.Context) -> None:
    """--wide draws what these options would set: refuse them rather than ignore them."""
    from click.core import ParameterSource

    given = [f"--{name.replace('_', '-')}" for name in ("dataset", "scheme", "seed", "epochs",
                                                       "target")
             if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE]
    if given:
        raise click.UsageError(f"{', '.join(given)} cannot go with --wide (each draw sets its "
                               "own; choose the draws with --split and --size)")


def _build_wide(n: int, split: str, size: str, out_dir: Path, root: Path,
                data_root: Path | None, *, device: str, threads: int, quiet: bool) -> None:
    """``audit zoo build --wide N``: one line per draw as it is built (or found)."""
    from audit.paths import check_outputs, output_folder

    from .build import _check_args
    from .watermarks import default_adi_path
    from .wide import _data, build_draw, draws

    _check_args(size, "content", None, device=device, threads=threads)   # device, threads
    chosen = draws(split, n, size)
    inputs = {"mnist": [root / "mnist"], "cifar10": [root / "cifar10"]}.get(size, [])
    check_outputs([output_folder(out_dir)], [*inputs, default_adi_path()])
    _data(chosen[0], data_root)        # the data are there (kept for the builds)
    click.echo(f"{'draw':<16} {'scheme':<9} {'arch':<7} {'input':<7} {'exporter':<11} "
               f"{'test% wm':>8} {'test% van':>9} {'wm% wm':>7} {'wm% van':>8} {'time s':>7}  "
               "folder")
    for d in chosen:
        e = build_draw(d, out_dir, quiet=quiet, data_root=data_root, device=device,
                       threads=threads)
        m = e.meta
        how = f"{m['timings']['total_s']:7.1f}" if e.built else f"{'cached':>7}"
        click.echo(f"{d.split + '/' + d.name:<16} {d.scheme:<9} {d.arch:<7} "
                   f"{f'{d.input_hw}x{d.input_hw}':<7} {d.exporter:<11} "
                   f"{_fmt(m['test_acc']['watermarked']):>8} {_fmt(m['test_acc']['vanilla']):>9} "
                   f"{_fmt(m['wm_acc']['watermarked']):>7} {_fmt(m['wm_acc']['vanilla']):>8} "
                   f"{how}  {e.out_dir}")
