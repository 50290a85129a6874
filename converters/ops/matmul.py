"""MatMul by a 2-D weight initializer becomes nn.Linear without bias (x @ W on the last axis,
whatever the rank of x), so the dense layer is a trainable, resettable module. onnx2torch keeps
such a weight as a constant of its plain matrix product; other MatMuls keep that converter."""

from __future__ import annotations

import torch
from torch import nn

from audit.converters.ops import extend
from audit.converters.ops._common import result


@extend("MatMul", 1, 9, 13)
def convert(node, graph, base):
    w_name = node.input_values[1] if len(node.input_values) > 1 else None
    init = graph.initializers.get(w_name) if w_name else None
    if init is None or node.input_values[0] in graph.initializers:
        return base(node, graph)
    w = init.to_torch()
    if w.dim() != 2 or not torch.is_floating_point(w):
        return base(node, graph)
    linear = nn.Linear(w.shape[0], w.shape[1], bias=False)
    with torch.no_grad():
        linear.weight.data = w.T.contiguous().to(linear.weight.dtype)
    return result(node, linear, first_input_only=True)
