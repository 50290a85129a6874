"""Trilu-14: the upper (``upper`` = 1, default) or lower triangle of the last two axes, from
diagonal ``k`` (input 1, default 0; j - i >= k is kept for upper, j - i <= k for lower)."""

from __future__ import annotations

import torch
from onnx2torch.utils.common import OnnxMapping, OnnxToTorchModule, OperationConverterResult
from torch import nn

from audit.converters.ops import converter
from audit.converters.ops._common import const_input, result


class Trilu(nn.Module, OnnxToTorchModule):
    def __init__(self, upper: bool, k: int = 0) -> None:
        super().__init__()
        self.upper, self.k = upper, int(k)

    def forward(self, x: torch.Tensor, k: torch.Tensor | None = None) -> torch.Tensor:
        diag = self.k if k is None else k.reshape(()).to(torch.int64)
        rows = torch.arange(x.shape[-2], device=x.device).unsqueeze(-1)
        offset = torch.arange(x.shape[-1], device=x.device) - rows
        keep = offset >= diag if self.upper else offset <= diag
        return torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))


@converter("Trilu", 14)
def convert(node, graph):
    upper = bool(node.attributes.get("upper", 1))
    if len(node.input_values) < 2 or not node.input_values[1]:
        return result(node, Trilu(upper), first_input_only=True)
    try:
        k = const_input(node, graph, 1)
    except NotImplementedError:
        mapping = OnnxMapping(inputs=tuple(node.input_values[:2]), outputs=node.output_values)
        return OperationConverterResult(torch_module=Trilu(upper), onnx_mapping=mapping)
    return result(node, Trilu(upper, int(k.reshape(()))), first_input_only=True)
