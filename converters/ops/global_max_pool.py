"""GlobalMaxPool-1: the maximum over every spatial axis, kept as size-1 axes."""

from __future__ import annotations

import torch
from torch import nn

from audit.converters.ops import converter
from audit.converters.ops._common import result


class GlobalMaxPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.amax(x, dim=tuple(range(2, x.dim())), keepdim=True)


@converter("GlobalMaxPool", 1)
def convert(node, graph):
    return result(node, GlobalMaxPool())
