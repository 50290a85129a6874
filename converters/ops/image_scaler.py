"""ImageScaler (an experimental op of opsets 1-9, run by onnxruntime): scale * x + bias[channel]."""

from __future__ import annotations

import torch
from torch import nn

from audit.converters.ops import converter
from audit.converters.ops._common import result


class ImageScaler(nn.Module):
    def __init__(self, scale: float, bias: list[float]):
        super().__init__()
        self.scale = float(scale)
        self.register_buffer("bias", torch.tensor(bias, dtype=torch.float32).reshape(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.bias.to(x.dtype)


@converter("ImageScaler", *range(1, 10))
def convert(node, graph):
    return result(node, ImageScaler(node.attributes.get("scale", 1.0), node.attributes.get("bias", [0.0])))
