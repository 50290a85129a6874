"""Shrink-9: x + bias where x < -lambd, x - bias where x > lambd, else 0."""

from __future__ import annotations

import torch
from torch import nn

from audit.converters.ops import converter
from audit.converters.ops._common import result


class Shrink(nn.Module):
    def __init__(self, lambd: float = 0.5, bias: float = 0.0):
        super().__init__()
        self.lambd, self.bias = float(lambd), float(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        zero = torch.zeros_like(x)
        return torch.where(x < -self.lambd, x + self.bias, torch.where(x > self.lambd, x - self.bias, zero))


@converter("Shrink", 9)
def convert(node, graph):
    return result(node, Shrink(node.attributes.get("lambd", 0.5), node.attributes.get("bias", 0.0)))
