"""Affine (an experimental op of opsets 1-9, run by onnxruntime): alpha * x + beta."""

from __future__ import annotations

import torch
from torch import nn

from audit.converters.ops import converter
from audit.converters.ops._common import result


class Affine(nn.Module):
    def __init__(self, alpha: float = 1.0, beta: float = 0.0):
        super().__init__()
        self.alpha, self.beta = float(alpha), float(beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.alpha + self.beta


@converter("Affine", *range(1, 10))
def convert(node, graph):
    return result(node, Affine(node.attributes.get("alpha", 1.0), node.attributes.get("beta", 0.0)))
