"""Sinh, Cosh, Asinh, Acosh and Atanh, -9 and -22: the elementwise torch functions."""

from __future__ import annotations

import torch
from onnx2torch.utils.common import OnnxToTorchModule
from torch import nn

from audit.converters.ops import converter
from audit.converters.ops._common import result

FUNCTIONS = {"Sinh": torch.sinh, "Cosh": torch.cosh, "Asinh": torch.asinh, "Acosh": torch.acosh, "Atanh": torch.atanh}


class Elementwise(nn.Module, OnnxToTorchModule):
    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return FUNCTIONS[self.op](x)


def convert(node, graph):
    return result(node, Elementwise(node.operation_type))


for _op in FUNCTIONS:
    converter(_op, 9, 22)(convert)
