"""Pad-2: the fill value is the ``value`` attribute (onnx2torch's converter reads ``constant_value``,
the input name of Pad-11, and pads with 0)."""

from __future__ import annotations

from onnx2torch.node_converters.pad import OnnxPadStatic

from audit.converters.ops import extend
from audit.converters.ops._common import result


@extend("Pad", 2)
def convert(node, graph, base):
    module = OnnxPadStatic.create_from_onnx_params(
        onnx_pads=node.attributes["pads"],
        onnx_mode=node.attributes.get("mode", "constant"),
        constant_value=node.attributes.get("value", 0.0),
    )
    return result(node, module)
