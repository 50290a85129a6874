"""MeanVarianceNormalization-9: (x - mean) / (sqrt(mean(x^2) - mean^2) + 1e-9) over ``axes``."""

from __future__ import annotations

import torch
from torch import nn

from audit.converters.ops import converter
from audit.converters.ops._common import result


class MeanVarianceNormalization(nn.Module):
    def __init__(self, axes: list[int]):
        super().__init__()
        self.axes = list(axes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=self.axes, keepdim=True)
        var = (x * x).mean(dim=self.axes, keepdim=True) - mean * mean
        return (x - mean) / (torch.sqrt(var) + 1e-9)


@converter("MeanVarianceNormalization", 9)
def convert(node, graph):
    return result(node, MeanVarianceNormalization(node.attributes.get("axes", [0, 2, 3])))
