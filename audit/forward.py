"""Differentiable model forward from canonical NCHW [0,1] images."""

from __future__ import annotations

from collections.abc import Callable

import torch

from audit.graphs.layout import to_layout_torch


def make_forward(tm, preprocess) -> Callable[[torch.Tensor], torch.Tensor]:
    layout = tm.source.info.layout

    def forward(x01: torch.Tensor) -> torch.Tensor:
        return tm.logits(to_layout_torch(preprocess.apply_torch(x01), layout))

    return forward
