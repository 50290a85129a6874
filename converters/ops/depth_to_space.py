"""DepthToSpace in DCR mode (the default, and DepthToSpace-1's only mode); onnx2torch converts CRD only.

DCR reads the channel axis as (block row, block column, channel); CRD nodes stay with onnx2torch.
"""

from __future__ import annotations

import torch
from torch import nn

from audit.converters.ops import extend
from audit.converters.ops._common import result


class DepthToSpaceDCR(nn.Module):
    def __init__(self, blocksize: int):
        super().__init__()
        self.blocksize = int(blocksize)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        bs = self.blocksize
        t = x.reshape(b, bs, bs, c // (bs * bs), h, w).permute(0, 3, 4, 1, 5, 2)
        return t.reshape(b, c // (bs * bs), h * bs, w * bs)


@extend("DepthToSpace", 11, 13)
def convert(node, graph, base):
    if node.attributes.get("mode", "DCR") != "DCR":
        return base(node, graph)
    return result(node, DepthToSpaceDCR(node.attributes["blocksize"]))
