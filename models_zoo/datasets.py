"""Clean training / test data for the zoo's data sets.

* ``digits``: scikit-learn's 1,797 8x8 digits (values 0..16 -> u8 by ``round(v * 255 / 16)``),
  bilinear-upsampled (Pillow) to 16x16 grey; a stratified 1,347 / 450 train / test split with a
  fixed seed (0), independent of the build seed, so every zoo entry shares the same data.
* ``mnist``: the IDX files in ``<data_root>/mnist`` (60,000 train / 10,000 test).
* ``cifar10``: no lossless CIFAR-10 training set is available offline, only the 10,000 test
  images decoded from JPEG copies; the zoo trains on a stratified 8,000 of them and evaluates on
  the other 2,000 (fixed seed 0). Accuracies are therefore not comparable with published ones.

``data_root`` defaults to ``<repo>/../shared/data``, the shared data sets beside the repository, when present.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from audit.data import Dataset, load_dataset
from audit.errors import AuditError, DataError

__all__ = ["DATASETS", "CleanData", "default_data_root", "load_clean"]

DATASETS = ("digits", "mnist", "cifar10")
SPLIT_SEED = 0


@dataclass
class CleanData:
    """Clean train / test sets (canonical float32 NCHW [0, 1]) and how they were obtained."""

    train: Dataset
    test: Dataset
    note: str


def default_data_root() -> Path:
    """``<repo>/../shared/data``."""
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def _stratified_split(y: np.ndarray, n_test: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=n_test, stratify=y, random_state=SPLIT_SEED)
    return np.sort(tr), np.sort(te)


def digits_u8() -> tuple[np.ndarray, np.ndarray]:
    """All scikit-learn digits as uint8 [1797, 16, 16] and int64 labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    small = np.round(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    big = np.stack([np.asarray(Image.fromarray(im, mode="L").resize((16, 16), Image.BILINEAR))
                    for im in small])
    return big, d.target.astype(np.int64)


def _load_digits() -> CleanData:
    x, y = digits_u8()
    tr, te = _stratified_split(y, 450)
    x01 = (x[:, None].astype(np.float32) / np.float32(255)).astype(np.float32)
    return CleanData(Dataset(x01[tr], y[tr], "sklearn:digits[train]"),
                     Dataset(x01[te], y[te], "sklearn:digits[test]"),
                     "scikit-learn digits 8x8 upsampled to 16x16; stratified 1347/450 split "
                     f"(seed {SPLIT_SEED})")


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise DataError(f"{path}: {what} not found (the zoo's data come from ../shared/data, "
                        "present on development machines only; use --dataset digits or "
                        "--data-root)")
    return path


def _load_mnist(root: Path) -> CleanData:
    d = root / "mnist"
    train = load_dataset(_require(d / "train-images-idx3-ubyte.gz", "MNIST"),
                         channels=1, height=28, width=28, num_classes=10)
    test = load_dataset(_require(d / "t10k-images-idx3-ubyte.gz", "MNIST"),
                        channels=1, height=28, width=28, num_classes=10)
    return CleanData(train, test, "MNIST 60000 train / 10000 test (IDX)")


def _load_cifar10(root: Path) -> CleanData:
    path = _require(root / "cifar10" / "cifar10_test_from_jpeg.npz", "CIFAR-10")
    ds = load_dataset(path, channels=3, height=32, width=32, num_classes=10)
    tr, te = _stratified_split(ds.y, 2000)
    return CleanData(ds.subset(tr), ds.subset(te),
                     "CIFAR-10: only the 10000 JPEG-decoded test images exist offline; trained "
                     f"on a stratified 8000 of them, evaluated on the other 2000 (seed "
                     f"{SPLIT_SEED})")


def load_clean(dataset: str, data_root: str | Path | None = None) -> CleanData:
    """Clean data of a zoo data set (``digits``, ``mnist`` or ``cifar10``)."""
    root = Path(data_root) if data_root is not None else default_data_root()
    if dataset == "digits":
        return _load_digits()
    if dataset == "mnist":
        return _load_mnist(root)
    if dataset == "cifar10":
        return _load_cifar10(root)
    raise AuditError(f"unknown zoo data set {dataset!r}; choose from {', '.join(DATASETS)}")
