"""GlobalLpPool-2: (sum |x|^p)^(1/p) over every spatial axis, kept as size-1 axes."""

from __future__ import annotations

import torch
from torch import nn

from audit.converters.ops import converter
from audit.converters.ops._common import result


class GlobalLpPool(nn.Module):
    def __init__(self, p: int = 2):
        super().__init__()
        self.p = int(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(2, x.dim()))
        return torch.linalg.vector_norm(x, ord=self.p, dim=dims, keepdim=True)


@converter("GlobalLpPool", 2)
def convert(node, graph):
    return result(node, GlobalLpPool(node.attributes.get("p", 2)))
