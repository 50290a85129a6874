"""Trained torch weights -> the *original* ONNX graph's initializers (a drop-in replacement)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from audit.converters.to_torch import TorchModel, logits_graph, parity_with_scale
from audit.errors import ConversionError
from audit.graphs import passes as P
from audit.graphs.model import PARITY_ATOL, AuditModel


def updated_initializers(tm: TorchModel) -> dict[str, np.ndarray]:
    """Original-initializer name -> new value, for every trainable tensor of the torch module."""
    out: dict[str, np.ndarray] = {}
    for b in tm.bindings:
        t = getattr(tm.module.get_submodule(b.module), b.attr)
        value = b.to_onnx(np.ascontiguousarray(t.detach().cpu().numpy()))
        orig, back = tm.source.ctx.origin(b.init)
        out[orig] = back(value)
    return out


def write_back(tm: TorchModel, x_check: np.ndarray | None = None, *,
               atol: float = PARITY_ATOL) -> onnx.ModelProto:
    """A copy of the original model with new weights; node names, opset, IR and metadata kept."""
    original = tm.source.original
    m = P.copy_model(original)
    new = updated_initializers(tm)
    tensors = weight_tensors(m)
    for name, value in new.items():
        t = tensors.get(name)
        if t is None:
            raise ConversionError(f"no initializer {name!r} in the original graph to write back to")
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
        value = np.asarray(value, dtype=dtype)
        if tuple(value.shape) != tuple(t.dims):
            raise ConversionError(f"write-back of {name!r}: shape {value.shape} != {tuple(t.dims)}")
        fresh = numpy_helper.from_array(value, t.name)
        for f in ("raw_data", "float_data", "double_data", "int32_data", "int64_data"):
            t.ClearField(f)
        t.raw_data = fresh.raw_data
    if x_check is not None:
        check_written(m, tm, x_check, atol=atol)
    return m


# relative bound of the written-back check when weights were rounded to float16 / bfloat16
FLOAT16_ATOL = 2e-2


def weight_tensors(m: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Tensor name -> the TensorProto holding its value: initializers, and the `value` of
    Constant nodes (paddle2onnx stores weights so; normalisation lifted them to initializers)."""
    out = {t.name: t for t in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type == "Constant" and len(n.output) == 1 and n.output[0] not in out:
            for a in n.attribute:
                if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                    out[n.output[0]] = a.t
    return out


def check_written(model: onnx.ModelProto, tm: TorchModel, x: np.ndarray, *,
                  atol: float = PARITY_ATOL) -> float:
    """The written model, run by onnxruntime, must match the torch module on x."""
    am = AuditModel.from_proto(model, device=tm.source.device)
    if any(t.data_type in P.NARROW_OR_WIDE for t in model.graph.initializer):
        atol = max(atol, FLOAT16_ATOL)   # weights rounded to the model's own type
    probe = TorchModel(module=tm.module, graph=logits_graph(am), source=am, bindings=tm.bindings,
                       node_modules=tm.node_modules)
    diff, scale = parity_with_scale(probe, x)
    if not diff / max(1.0, scale) <= atol:
        raise ConversionError(f"written-back model differs from the trained torch module by {diff:.3g}")
    return diff
