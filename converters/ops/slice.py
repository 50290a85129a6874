"""Slice indexed with a tuple of slices. onnx2torch's module indexes the tensor with a list of
them, which torch reads as a tuple today, warns about at every call (a UserWarning on stderr),
and will read as a tensor index in a later version."""

from __future__ import annotations

import torch
from onnx2torch.node_converters.slice import OnnxSlice, _get_slices

from audit.converters.ops import extend
from audit.converters.ops._common import result


class TupleSlice(OnnxSlice):
    """onnx2torch's OnnxSlice (inputs starts, ends, axes, steps) with tuple indexing."""

    def forward(self, input_tensor: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor,
                axes: torch.Tensor | None = None, steps: torch.Tensor | None = None) -> torch.Tensor:
        flip_dims, pos_axes_slices, neg_axes_slices = _get_slices(starts, ends, axes, steps)
        x = torch.flip(input_tensor, dims=flip_dims) if flip_dims else input_tensor
        if pos_axes_slices:
            x = x[tuple(pos_axes_slices)]
        if neg_axes_slices:
            x = x[tuple(neg_axes_slices)]
        return x


@extend("Slice", 10, 11, 13)
def convert(node, graph, base):
    out = base(node, graph)
    if type(out.torch_module) is not OnnxSlice:
        return out
    return result(node, TupleSlice())
