"""ScaledTanh (an experimental op of opsets 1-9, run by onnxruntime): alpha * tanh(beta * x)."""

from __future__ import annotations

import torch
from torch import nn

from audit.converters.ops import converter
from audit.converters.ops._common import result


class ScaledTanh(nn.Module):
    def __init__(self, alpha: float = 1.0, beta: float = 1.0):
        super().__init__()
        self.alpha, self.beta = float(alpha), float(beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.alpha * torch.tanh(self.beta * x)


@converter("ScaledTanh", *range(1, 10))
def convert(node, graph):
    return result(node, ScaledTanh(node.attributes.get("alpha", 1.0), node.attributes.get("beta", 1.0)))
