"""SpaceToDepth-1 (blocks before channels, DCR order) and SpaceToDepth-28 (``mode`` DCR or CRD)."""

from __future__ import annotations

import torch
from torch import nn

from audit.converters.ops import converter
from audit.converters.ops._common import result


class SpaceToDepth(nn.Module):
    def __init__(self, blocksize: int, mode: str = "DCR"):
        super().__init__()
        self.blocksize, self.mode = int(blocksize), mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        bs = self.blocksize
        t = x.reshape(b, c, h // bs, bs, w // bs, bs)
        perm = (0, 3, 5, 1, 2, 4) if self.mode == "DCR" else (0, 1, 3, 5, 2, 4)
        return t.permute(*perm).reshape(b, c * bs * bs, h // bs, w // bs)


@converter("SpaceToDepth", 1, 28)
def convert(node, graph):
    mode = node.attributes.get("mode", "DCR")
    if mode not in ("DCR", "CRD"):
        raise NotImplementedError(f"SpaceToDepth with mode={mode!r} is not supported")
    return result(node, SpaceToDepth(node.attributes["blocksize"], mode))
