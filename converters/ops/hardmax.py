"""Hardmax: 1 at the first maximum, 0 elsewhere. -1 and -11 work on the input seen as 2-D
[prod(shape[:axis]), prod(shape[axis:])] (``axis`` default 1); -13 along one ``axis`` (default -1)."""

from __future__ import annotations

import math

import torch
from onnx2torch.utils.common import OnnxToTorchModule
from torch import nn

from audit.converters.ops import converter
from audit.converters.ops._common import result


def _one_hot_max(x: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.zeros_like(x).scatter_(dim, x.argmax(dim, keepdim=True), 1)


class Hardmax(nn.Module, OnnxToTorchModule):
    def __init__(self, axis: int, flatten: bool) -> None:
        super().__init__()
        self.axis, self.flatten = int(axis), flatten

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        axis = self.axis % x.dim() if x.dim() else 0
        if not self.flatten:
            return _one_hot_max(x, axis)
        flat = x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))
        return _one_hot_max(flat, 1).reshape(x.shape)


@converter("Hardmax", 1, 11)
def convert11(node, graph):
    return result(node, Hardmax(node.attributes.get("axis", 1), flatten=True))


@converter("Hardmax", 13)
def convert13(node, graph):
    return result(node, Hardmax(node.attributes.get("axis", -1), flatten=False))
