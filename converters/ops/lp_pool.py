"""LpPool-1 to -22: (sum of |x|^p over each window)^(1/p), zero padding counting as nothing.
``kernel_shape``, ``strides``, ``pads`` ([begin..., end...]) and ``p`` (a float in -1, an int
from -2); -18 on add ``dilations`` and ``ceil_mode`` (a last, partial window where it starts
inside the input or the begin padding). Only ``auto_pad`` NOTSET is supported."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from onnx2torch.utils.common import OnnxToTorchModule
from torch import nn

from audit.converters.ops import converter
from audit.converters.ops._common import result

CONVS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


class LpPool(nn.Module, OnnxToTorchModule):
    def __init__(self, p: float, kernel: list[int], strides: list[int], pads: list[int], dilations: list[int],
                 ceil_mode: bool) -> None:
        super().__init__()
        self.p, self.kernel, self.strides = p, list(kernel), list(strides)
        self.pads, self.dilations, self.ceil_mode = list(pads), list(dilations), ceil_mode

    def _end_pad(self, i: int, size: int) -> int:
        d = len(self.kernel)
        begin, end = self.pads[i], self.pads[i + d]
        span = self.dilations[i] * (self.kernel[i] - 1) + 1
        if not self.ceil_mode:
            return end
        stride = self.strides[i]
        out = math.ceil((size + begin + end - span) / stride) + 1
        if (out - 1) * stride >= size + begin:
            out -= 1
        return max(end, (out - 1) * stride + span - size - begin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = len(self.kernel)
        spatial = x.shape[2:]
        flat_pads: list[int] = []
        for i in reversed(range(d)):
            flat_pads += [self.pads[i], self._end_pad(i, spatial[i])]
        powered = F.pad(x.abs().pow(self.p), flat_pads)
        weight = torch.ones((1, 1, *self.kernel), dtype=x.dtype, device=x.device)
        sums = CONVS[d](powered.reshape(-1, 1, *powered.shape[2:]), weight, stride=self.strides,
                        dilation=self.dilations)
        return sums.reshape(*x.shape[:2], *sums.shape[2:]).pow(1.0 / self.p)


def _module(node, version: int) -> LpPool:
    attrs = node.attributes
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad != "NOTSET":
        raise NotImplementedError(f"LpPool: auto_pad={auto_pad!r} is not supported (explicit pads only)")
    kernel = attrs.get("kernel_shape")
    if not kernel:
        raise NotImplementedError("LpPool: a kernel_shape attribute is required")
    d = len(kernel)
    if d not in CONVS:
        raise NotImplementedError(f"LpPool: {d} spatial axes are not supported (1 to 3)")
    p = float(attrs.get("p", 2.0)) if version == 1 else int(attrs.get("p", 2))
    if p <= 0:
        raise NotImplementedError(f"LpPool: p={p} is not supported (p > 0 only)")
    return LpPool(p, kernel, attrs.get("strides", [1] * d), attrs.get("pads", [0] * 2 * d),
                  attrs.get("dilations", [1] * d), bool(attrs.get("ceil_mode", 0)))


@converter("LpPool", 1)
def convert1(node, graph):
    return result(node, _module(node, 1))


@converter("LpPool", 2, 11, 18, 22)
def convert(node, graph):
    return result(node, _module(node, 2))
