"""CastLike-15 to -25: input 0 cast to the element type of input 1. ``saturate`` (-19 on) and
``round_mode`` (-24 on) act only on float8 and float4 targets, which are not supported."""

from __future__ import annotations

import torch
from onnx import TensorProto
from onnx2torch.utils.common import OnnxToTorchModule
from torch import nn

from audit.converters.ops import converter
from audit.converters.ops._common import result

TORCH_TYPES = {
    TensorProto.FLOAT: torch.float32, TensorProto.DOUBLE: torch.float64, TensorProto.FLOAT16: torch.float16,
    TensorProto.BFLOAT16: torch.bfloat16, TensorProto.INT8: torch.int8, TensorProto.INT16: torch.int16,
    TensorProto.INT32: torch.int32, TensorProto.INT64: torch.int64, TensorProto.UINT8: torch.uint8,
    TensorProto.BOOL: torch.bool,
}
SUPPORTED = frozenset(TORCH_TYPES.values())


class CastLike(nn.Module, OnnxToTorchModule):
    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.dtype not in SUPPORTED:
            raise NotImplementedError(f"CastLike: a cast to {target.dtype} is not supported")
        return x.to(target.dtype)


def _elem_type(graph, name: str) -> int | None:
    if name in graph.initializers:
        return int(graph.initializers[name].proto.data_type)
    info = graph.value_info.get(name)
    if info is not None and info.type.HasField("tensor_type") and info.type.tensor_type.elem_type:
        return int(info.type.tensor_type.elem_type)
    return None


@converter("CastLike", 15, 19, 21, 23, 24, 25)
def convert(node, graph):
    elem = _elem_type(graph, node.input_values[1])
    if elem is not None and elem not in TORCH_TYPES:
        raise NotImplementedError(f"CastLike: a cast to {TensorProto.DataType.Name(elem)} is not supported")
    return result(node, CastLike())
