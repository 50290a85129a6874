"""CumSum: ``reverse`` defaults to 0 (onnx2torch's converter takes 1 when the attribute is absent)."""

from __future__ import annotations

from onnx2torch.node_converters.cumsum import OnnxCumSum

from audit.converters.ops import extend
from audit.converters.ops._common import result


@extend("CumSum", 11, 14)
def convert(node, graph, base):
    attrs = node.attributes
    return result(node, OnnxCumSum(bool(attrs.get("exclusive", 0)), bool(attrs.get("reverse", 0))))
