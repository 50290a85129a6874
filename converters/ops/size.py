"""Size-1 to -25: the number of elements of the input as an int64 scalar."""

from __future__ import annotations

import torch
from onnx2torch.utils.common import OnnxToTorchModule
from torch import nn

from audit.converters.ops import converter
from audit.converters.ops._common import result


class Size(nn.Module, OnnxToTorchModule):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor(x.numel(), dtype=torch.int64, device=x.device)


@converter("Size", 1, 13, 19, 21, 23, 24, 25)
def convert(node, graph):
    return result(node, Size())
