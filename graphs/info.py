"""What kind of classifier a graph is: input layout and geometry, classes, output kind."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import onnx

from audit.errors import ModelError
from audit.graphs.passes import initializers, opset, producers

FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
               onnx.TensorProto.BFLOAT16}
_CHANNELS = (1, 3, 4)


@dataclass(frozen=True)
class ModelInfo:
    producer: str
    ir_version: int
    opset: int
    input_name: str
    input_shape: tuple  # ints and symbolic names
    layout: str         # NCHW | NHWC | NHW | NF
    channels: int
    height: int
    width: int
    output_name: str
    num_classes: int
    output_kind: str    # logits | probabilities | log-probs
    fixed_batch: int | None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        return d


def _dims(vi: onnx.ValueInfoProto) -> tuple:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return ()
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                 for d in t.shape.dim)


def data_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = initializers(model)
    return [i for i in model.graph.input if i.name not in inits]


def analyse(model: onnx.ModelProto, where: str = "model") -> ModelInfo:
    """Describe the classifier or raise ModelError saying why it is not one we can audit."""
    inputs = data_inputs(model)
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs) or "none"
        raise ModelError(f"{where}: expected exactly one image input, found {len(inputs)} ({names})")
    inp = inputs[0]
    if inp.type.tensor_type.elem_type not in FLOAT_TYPES:
        raise ModelError(f"{where}: input {inp.name!r} is not a float tensor (no float image input)")
    dims = _dims(inp)
    geo = infer_layout(model, inp.name, dims, where)
    fixed = dims[0] if dims and isinstance(dims[0], int) and dims[0] > 0 else None

    out, k = _class_output(model, where, fixed)
    kind = output_kind(model, out.name)
    return ModelInfo(
        producer=" ".join(x for x in (model.producer_name, model.producer_version) if x),
        ir_version=model.ir_version, opset=opset(model), input_name=inp.name, input_shape=dims,
        **asdict(geo), output_name=out.name, num_classes=k, output_kind=kind, fixed_batch=fixed,
    )


@dataclass(frozen=True)
class InputGeometry:
    """How an image batch enters the graph: the layout and the image's channels and size."""

    layout: str   # NCHW, NHWC, NHW or NF (flat)
    channels: int
    height: int
    width: int


def infer_layout(model: onnx.ModelProto, name: str, dims: tuple, where: str) -> InputGeometry:
    def static(d) -> int | None:
        return d if isinstance(d, int) and d > 0 else None

    rank = len(dims)
    if rank == 4:
        d1, d2, d3 = (static(d) for d in dims[1:])
        first_ch, last_ch = d1 in _CHANNELS, d3 in _CHANNELS
        if first_ch and last_ch:
            # e.g. [N, 3, 32, 3]: trust a Transpose NHWC->NCHW right after the input
            nhwc = any(n.op_type == "Transpose" and n.input and n.input[0] == name
                       and list(_perm(n)) == [0, 3, 1, 2] for n in model.graph.node)
            first_ch = not nhwc
        if first_ch and d2 and d3:
            return InputGeometry("NCHW", d1, d2, d3)
        if last_ch and d1 and d2:
            return InputGeometry("NHWC", d3, d1, d2)
        raise ModelError(f"{where}: cannot infer the image layout of input shape {list(dims)}")
    if rank == 3:
        h, w = static(dims[1]), static(dims[2])
        if h and w:
            return InputGeometry("NHW", 1, h, w)
    if rank == 2:
        f = static(dims[1])
        if f:
            for c in (1, 3):
                side = math.isqrt(f // c)
                if f % c == 0 and side * side * c == f:
                    return InputGeometry("NF", c, side, side)
    raise ModelError(f"{where}: input shape {list(dims)} is not an image batch "
                     "([N,C,H,W], [N,H,W,C], [N,H,W] or flat [N,H*W])")


def _perm(node: onnx.NodeProto):
    for a in node.attribute:
        if a.name == "perm":
            return a.ints
    return []


def _class_output(model: onnx.ModelProto, where: str, batch: int | None
                  ) -> tuple[onnx.ValueInfoProto, int]:
    for out in model.graph.output:
        t = out.type.tensor_type
        if t.elem_type not in FLOAT_TYPES:
            continue
        dims = _dims(out)
        if dims and isinstance(dims[0], int) and dims[0] != (batch or 1):
            continue  # rows that are not the images of the batch
        if len(dims) == 2 and isinstance(dims[1], int) and dims[1] >= 2:
            return out, dims[1]
        if len(dims) == 2 or not dims:
            k = _infer_classes(model, out.name)
            if k and k >= 2:
                return out, k
    raise ModelError(f"{where}: no class-score output (expected a float [N, K] output, K >= 2)")


def _infer_classes(model: onnx.ModelProto, name: str) -> int | None:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        return None
    for vi in list(inferred.graph.output) + list(inferred.graph.value_info):
        if vi.name == name:
            dims = _dims(vi)
            if len(dims) == 2 and isinstance(dims[1], int):
                return dims[1]
    return None


def output_kind(model: onnx.ModelProto, name: str) -> str:
    """Walk back through shape-only ops to see whether scores pass a Softmax or LogSoftmax."""
    prods = producers(model)
    node = prods.get(name)
    while node is not None and node.op_type in ("Identity", "Reshape", "Flatten", "Squeeze",
                                                 "Cast", "Dropout"):
        node = prods.get(node.input[0])
    if node is None:
        return "logits"
    if node.op_type == "Softmax":
        return "probabilities"
    if node.op_type == "LogSoftmax":
        return "log-probs"
    return "logits"
