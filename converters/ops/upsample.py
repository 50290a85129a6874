"""Upsample-7 (``scales`` attribute) and Upsample-9 (``scales`` input, a constant).

``nearest`` takes source index floor(i / scale); ``linear`` interpolates at i / scale (the
asymmetric mapping, not torch's half-pixel one), clamped to the last source element.
"""

from __future__ import annotations

import torch
from torch import nn

from audit.converters.ops import converter
from audit.converters.ops._common import const_input, result


class Upsample(nn.Module):
    def __init__(self, scales: list[float], mode: str = "nearest"):
        super().__init__()
        self.scales = [float(s) for s in scales]
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for axis, scale in enumerate(self.scales):
            if scale == 1.0:
                continue
            n_in = x.shape[axis]
            n_out = int(n_in * scale)
            src = torch.arange(n_out, device=x.device, dtype=torch.float32) / scale
            if self.mode == "nearest":
                idx = torch.clamp(torch.floor(src).long(), max=n_in - 1)
                x = x.index_select(axis, idx)
            else:
                lo = torch.clamp(torch.floor(src).long(), max=n_in - 1)
                hi = torch.clamp(lo + 1, max=n_in - 1)
                w = (src - lo.to(src.dtype)).clamp(0, 1).to(x.dtype)
                shape = [1] * x.dim()
                shape[axis] = n_out
                w = w.reshape(shape)
                x = x.index_select(axis, lo) * (1 - w) + x.index_select(axis, hi) * w
        return x


@converter("Upsample", 7, 9)
def convert(node, graph):
    mode = node.attributes.get("mode", "nearest")
    if mode not in ("nearest", "linear", "bilinear"):
        raise NotImplementedError(f"Upsample with mode={mode!r} is not supported")
    scales = node.attributes.get("scales")
    if scales is None:
        scales = const_input(node, graph, 1)
    if scales is None:
        raise NotImplementedError("Upsample without scales is not supported")
    scales = [float(s) for s in list(scales)]
    return result(node, Upsample(scales, "nearest" if mode == "nearest" else "linear"), first_input_only=True)
