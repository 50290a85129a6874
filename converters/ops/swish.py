"""Swish-24: x * sigmoid(alpha * x)."""

from __future__ import annotations

import torch
from torch import nn

from audit.converters.ops import converter
from audit.converters.ops._common import result


class Swish(nn.Module):
    def __init__(self, alpha: float = 1.0):
        super().__init__()
        self.alpha = float(alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.alpha * x)


@converter("Swish", 24)
def convert(node, graph):
    return result(node, Swish(node.attributes.get("alpha", 1.0)))
