"""Shared helpers of the op converters."""

from __future__ import annotations

import numpy as np
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxMapping, OperationConverterResult, get_const_value, onnx_mapping_from_node
from torch import nn


def result(node: OnnxNode, module: nn.Module, *, first_input_only: bool = False) -> OperationConverterResult:
    """The converter result mapping the node's inputs (or its first input) and outputs to ``module``."""
    if first_input_only:
        mapping = OnnxMapping(inputs=(node.input_values[0],), outputs=node.output_values)
    else:
        mapping = onnx_mapping_from_node(node)
    return OperationConverterResult(torch_module=module, onnx_mapping=mapping)


def const_input(node: OnnxNode, graph: OnnxGraph, index: int) -> np.ndarray | None:
    """The constant value of input ``index`` (None when absent); NotImplementedError when computed."""
    if len(node.input_values) <= index or not node.input_values[index]:
        return None
    try:
        value = get_const_value(node.input_values[index], graph)
    except KeyError as exc:
        raise NotImplementedError(f"{node.operation_type}: input {index} must be a constant") from exc
    return np.asarray(value.numpy() if hasattr(value, "numpy") else value)
