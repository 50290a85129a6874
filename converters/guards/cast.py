"""Cast-19 added ``saturate`` and Cast-24 ``round_mode``; both act only on casts to float8/float4
types, which torch graphs here do not use. onnx2torch's Cast-13 converter serves the rest.
"""

from __future__ import annotations

import onnx

from audit.converters.guards import Guard, attrs

_SUPPORTED_TO = {
    onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
    onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT16, onnx.TensorProto.INT32,
    onnx.TensorProto.INT64, onnx.TensorProto.BOOL,
}


def refuse(node, version, consts):
    to = attrs(node).get("to")
    if version >= 19 and to not in _SUPPORTED_TO:
        name = onnx.TensorProto.DataType.Name(to) if to is not None else "?"
        return f"a cast to {name} is not supported"
    return None


GUARD = Guard("Cast", refuse, admits={19: 13, 24: 13}, note="casts to standard float/int/bool types")
