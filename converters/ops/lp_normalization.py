"""LpNormalization-1: x divided by its L1 or L2 norm along ``axis``."""

from __future__ import annotations

import torch
from torch import nn

from audit.converters.ops import converter
from audit.converters.ops._common import result


class LpNormalization(nn.Module):
    def __init__(self, axis: int = -1, p: int = 2):
        super().__init__()
        self.axis, self.p = int(axis), int(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / torch.linalg.vector_norm(x, ord=self.p, dim=self.axis, keepdim=True)


@converter("LpNormalization", 1)
def convert(node, graph):
    p = node.attributes.get("p", 2)
    if p not in (1, 2):
        raise NotImplementedError(f"LpNormalization with p={p} is not supported (1 or 2)")
    return result(node, LpNormalization(node.attributes.get("axis", -1), p))
