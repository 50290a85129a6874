"""``audit zoo build``: build reference watermarked models and their vanilla twins."""

from __future__ import annotations

from pathlib import Path

import click

from .datasets import DATASETS
from .watermarks import SCHEMES

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
def build(dataset: str, scheme: str, seed: int, epochs: int | None, target: int, device: str,
          threads: int | None, data_root: Path | None, out_dir: Path, quiet: bool) -> None:
    """Train a watermarked model and its vanilla twin; write ONNX files, the trigger set
    (image folder), meta.json and, for digits, the clean data as .npz."""
    from audit.paths import check_outputs, output_folder

    from .build import build_entry, build_zoo
    from .datasets import default_data_root
    from .watermarks import default_adi_path

    root = data_root if data_root is not None else default_data_root()
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
