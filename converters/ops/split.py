"""Split-18: ``num_outputs`` chunks of ceil(n / num_outputs) along ``axis``, the last one smaller
(torch.split's rule); with a ``split`` input it is Split-13, served by onnx2torch's converter."""

from __future__ import annotations

import torch
from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription
from onnx2torch.utils.common import OnnxToTorchModule
from torch import nn

from audit.converters.ops import converter
from audit.converters.ops._common import result


class SplitChunks(nn.Module, OnnxToTorchModule):
    def __init__(self, num_outputs: int, axis: int) -> None:
        super().__init__()
        self.num_outputs = num_outputs
        self.axis = axis

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = x.shape[self.axis]
        return torch.split(x, -(-n // self.num_outputs), dim=self.axis)


@converter("Split", 18)
def convert(node, graph):
    if len(node.input_values) > 1 and node.input_values[1]:
        return _CONVERTER_REGISTRY[OperationDescription("", "Split", 13)](node, graph)
    num = node.attributes.get("num_outputs", len(node.output_values))
    return result(node, SplitChunks(int(num), int(node.attributes.get("axis", 0))), first_input_only=True)
