"""Move canonical NCHW [0,1] batches into a model's input layout (numpy and torch)."""

from __future__ import annotations

import numpy as np


def to_layout_numpy(x: np.ndarray, layout: str) -> np.ndarray:
    if layout == "NCHW":
        return x
    if layout == "NHWC":
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    if layout == "NHW":
        return x[:, 0]
    if layout == "NF":
        return x.reshape(len(x), -1)
    raise ValueError(f"unknown layout {layout}")


def to_layout_torch(x, layout: str):
    if layout == "NCHW":
        return x
    if layout == "NHWC":
        return x.permute(0, 2, 3, 1)
    if layout == "NHW":
        return x[:, 0]
    if layout == "NF":
        return x.reshape(x.shape[0], -1)
    raise ValueError(f"unknown layout {layout}")
