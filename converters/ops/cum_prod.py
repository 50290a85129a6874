"""CumProd-26: the cumulative product of ``x`` along ``axis`` (input 1, a scalar), ``exclusive``
(each output leaves out its own element, the first is 1) and ``reverse`` (from the end)."""

from __future__ import annotations

import torch
from onnx2torch.utils.common import OnnxToTorchModule
from torch import nn

from audit.converters.ops import converter
from audit.converters.ops._common import result


class CumProd(nn.Module, OnnxToTorchModule):
    def __init__(self, exclusive: bool, reverse: bool) -> None:
        super().__init__()
        self.exclusive, self.reverse = exclusive, reverse

    def forward(self, x: torch.Tensor, axis: torch.Tensor) -> torch.Tensor:
        dim = int(axis.reshape(()).item())
        if self.reverse:
            x = x.flip(dim)
        y = torch.cumprod(x, dim, dtype=x.dtype)
        if self.exclusive:
            n = y.shape[dim]
            y = torch.cat([torch.ones_like(y.narrow(dim, 0, min(n, 1))), y.narrow(dim, 0, max(n - 1, 0))], dim)
        return y.flip(dim) if self.reverse else y


@converter("CumProd", 26)
def convert(node, graph):
    attrs = node.attributes
    return result(node, CumProd(bool(attrs.get("exclusive", 0)), bool(attrs.get("reverse", 0))))
