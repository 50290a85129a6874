"""ThresholdedRelu-10: x where x > alpha, else 0."""

from __future__ import annotations

import torch
from torch import nn

from audit.converters.ops import converter
from audit.converters.ops._common import result


class ThresholdedRelu(nn.Module):
    def __init__(self, alpha: float = 1.0):
        super().__init__()
        self.alpha = float(alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > self.alpha, x, torch.zeros_like(x))


@converter("ThresholdedRelu", 10)
def convert(node, graph):
    return result(node, ThresholdedRelu(node.attributes.get("alpha", 1.0)))
