"""Reduce*-18 (ReduceMax/Min-20 alike): ``axes`` is an input rather than an attribute.

The axes must be a constant; ``noop_with_empty_axes=1`` with empty axes is the identity. The
reduction itself is onnx2torch's ``OnnxReduceStaticAxes``, the module it builds for Reduce*-13.
ReduceSum takes its axes as an input since version 13 and is left to onnx2torch.
"""

from __future__ import annotations

from onnx2torch.node_converters.reduce import OnnxReduceStaticAxes
from torch import nn

from audit.converters.ops import converter
from audit.converters.ops._common import const_input, result

OPS = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
       "ReduceProd", "ReduceSumSquare")


def convert(node, graph):
    axes = const_input(node, graph, 1)
    keepdims = node.attributes.get("keepdims", 1)
    if axes is None or axes.size == 0:
        if node.attributes.get("noop_with_empty_axes", 0):
            return result(node, nn.Identity(), first_input_only=True)
        axes_list = None
    else:
        axes_list = [int(a) for a in axes.reshape(-1)]
    return result(node, OnnxReduceStaticAxes(node.operation_type, axes_list, keepdims), first_input_only=True)


for _op in OPS:
    converter(_op, 18)(convert)
