"""Every classifier op the converters support, at every opset from 7 to onnx's newest.

Each case is a tiny classifier built with onnx.helper: input [N,C,8,8], a scale-and-shift to
[-2, 2), the op under test, Flatten and a Gemm to [N,4] class scores. It goes through the
project's path: ``AuditModel.from_proto`` -> ``to_torch`` (parity with onnxruntime <= 1e-4
relative) -> ``write_back``, whose model must keep the input's initializers byte for byte and its
opset_import. Where onnxruntime cannot run the graph (an opset, or an op version, newer than it
implements) the graph is converted by onnx2torch directly and checked against onnx's reference
evaluator.
A pair is skipped only where the op does not exist at that opset.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, defs, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import RuntimeImplementationError

from audit.converters.registry import missing_converters, register_aliases
from audit.converters.to_torch import to_torch, torch_logits
from audit.converters.write_back import write_back
from audit.errors import AuditError
from audit.graphs.model import AuditModel

FIRST, LAST = 7, defs.onnx_opset_version()
K = 4  # classes
RNG = np.random.default_rng(0)


def _ir(opset: int) -> int:
    table = {row[2]: row[1] for row in helper.VERSION_TABLE}
    return min(table.get(opset, max(table.values())), 10)


@functools.lru_cache(maxsize=1)
def ort_max_opset() -> int:
    """The newest default-domain opset this onnxruntime loads."""
    for opset in range(LAST, FIRST - 1, -1):
        g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=_ir(opset))
        try:
            ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
            return opset
        except Exception:
            continue
    return FIRST


# ------------------------------------------------------------------------------------------ graph building
class B:
    """Nodes and initializers of one graph under construction."""

    def __init__(self, opset: int):
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def name(self, stem: str) -> str:
        self._n += 1
        return f"{stem}{self._n}"

    def const(self, value, dtype=np.float32) -> str:
        name = self.name("c")
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def weight(self, *shape) -> str:
        return self.const(RNG.standard_normal(shape).astype(np.float32) * 0.5)

    def node(self, op: str, inputs: list[str], n_out: int = 1, **attrs) -> str | list[str]:
        outs = [self.name("t") for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=self.name(op.lower()), **attrs))
        return outs[0] if n_out == 1 else outs

    def axes(self, op: str, x: str, axes: list[int], input_from: int, **attrs) -> str:
        """``op`` with ``axes`` as an attribute before opset ``input_from`` and an input from it."""
        if self.opset < input_from:
            return self.node(op, [x], axes=axes, **attrs)
        return self.node(op, [x, self.const(axes, np.int64)], **attrs)


@dataclass
class Case:
    op: str
    body: Callable[[B, str], str]     # builder, centred input -> op output
    shape: Callable[[int], tuple]      # opset -> output shape without the batch
    channels: int = 3
    min_opset: int = FIRST
    max_opset: int = LAST
    extra_ops: tuple = field(default_factory=tuple)


def same(c=3, h=8, w=8):
    return lambda opset: (c, h, w)


def unary(op: str, **attrs) -> Case:
    return Case(op, lambda b, x: b.node(op, [x], **attrs), same())


def binary(op: str, value) -> Case:
    return Case(op, lambda b, x: b.node(op, [x, b.const(np.full((1, 3, 1, 1), value))]), same())


def _pad(b: B, x: str) -> str:
    pads = [0, 0, 1, 2, 0, 0, 2, 1]
    if b.opset < 11:
        return b.node("Pad", [x], pads=pads, value=0.5)
    return b.node("Pad", [x, b.const(pads, np.int64), b.const(0.5)])


def _clip(b: B, x: str) -> str:
    if b.opset < 11:
        return b.node("Clip", [x], min=-1.0, max=1.5)
    return b.node("Clip", [x, b.const(-1.0), b.const(1.5)])


def _dropout(b: B, x: str) -> str:
    if b.opset < 12:
        return b.node("Dropout", [x], ratio=0.3)
    return b.node("Dropout", [x, b.const(0.3)])


def _sum_like(op: str) -> Case:
    def body(b: B, x: str) -> str:
        y = b.node("Mul", [x, b.const([0.5])])
        z = b.node("Mul", [x, b.const([-1.5])])
        return b.node(op, [x, y, z])

    return Case(op, body, same())


def _squeeze(b: B, x: str) -> str:
    return b.axes("Squeeze", b.node("GlobalAveragePool", [x]), [2, 3], 13)


def _split(b: B, x: str) -> str:
    if b.opset < 13:
        return b.node("Split", [x], 2, axis=1, split=[1, 2])[0]
    return b.node("Split", [x, b.const([1, 2], np.int64)], 2, axis=1)[0]


def _upsample(b: B, x: str) -> str:
    if b.opset < 9:
        return b.node("Upsample", [x], scales=[1.0, 1.0, 2.0, 2.0], mode="nearest")
    return b.node("Upsample", [x, b.const([1.0, 1.0, 2.0, 2.0])], mode="nearest")


def _resize(b: B, x: str) -> str:
    scales = b.const([1.0, 1.0, 2.0, 2.0])
    if b.opset < 11:
        return b.node("Resize", [x, scales], mode="nearest")
    return b.node("Resize", [x, b.const(np.zeros(0)), scales], mode="nearest")


def _gemm(b: B, x: str) -> str:
    f = b.node("Flatten", [x], axis=1)
    return b.node("Gemm", [f, b.weight(6, 192), b.weight(6)], alpha=0.5, beta=2.0, transB=1)


def _bn(b: B, x: str) -> str:
    var = np.abs(RNG.standard_normal(3)).astype(np.float32) + 0.5
    return b.node("BatchNormalization", [x, b.weight(3), b.weight(3), b.weight(3), b.const(var)], epsilon=1e-3)


CASES = [
    Case("Conv", lambda b, x: b.node("Conv", [x, b.weight(4, 3, 3, 3), b.weight(4)], pads=[1, 1, 1, 1]),
         same(4)),
    Case("Gemm", _gemm, lambda o: (6,)),
    Case("MatMul", lambda b, x: b.node("MatMul", [x, b.weight(8, 5)]), same(3, 8, 5)),
    Case("BatchNormalization", _bn, same()),
    Case("InstanceNormalization",
         lambda b, x: b.node("InstanceNormalization", [x, b.weight(3), b.weight(3)]), same()),
    Case("LRN", lambda b, x: b.node("LRN", [x], size=3, alpha=1e-2), same()),
    Case("MeanVarianceNormalization", lambda b, x: b.node("MeanVarianceNormalization", [x]), same(), min_opset=9),
    Case("LpNormalization", lambda b, x: b.node("LpNormalization", [x], axis=1, p=2), same()),
    unary("Relu"), unary("LeakyRelu", alpha=0.1), unary("Elu", alpha=0.7), unary("Selu"), unary("Sigmoid"),
    unary("Tanh"), unary("HardSigmoid", alpha=0.3), unary("HardSwish"), unary("Softplus"), unary("Softsign"),
    unary("Celu", alpha=1.3), unary("Mish"), unary("ThresholdedRelu", alpha=0.4),
    unary("Shrink", lambd=0.3, bias=0.1), unary("Gelu"), unary("Swish", alpha=0.8),
    Case("PRelu", lambda b, x: b.node("PRelu", [x, b.const([[[0.1]], [[0.3]], [[-0.2]]])]), same()),
    Case("Reciprocal", lambda b, x: b.node("Reciprocal", [b.node("Add", [x, b.const([3.0])])]), same()),
    Case("Clip", _clip, same()),
    Case("MaxPool", lambda b, x: b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2]), same(3, 4, 4)),
    Case("AveragePool", lambda b, x: b.node("AveragePool", [x], kernel_shape=[3, 3], strides=[2, 2],
                                            pads=[1, 1, 1, 1]), same(3, 4, 4)),
    Case("GlobalAveragePool", lambda b, x: b.node("GlobalAveragePool", [x]), same(3, 1, 1)),
    Case("GlobalMaxPool", lambda b, x: b.node("GlobalMaxPool", [x]), same(3, 1, 1)),
    Case("GlobalLpPool", lambda b, x: b.node("GlobalLpPool", [x], p=2), same(3, 1, 1)),
    Case("ReduceMean", lambda b, x: b.axes("ReduceMean", x, [2, 3], 18, keepdims=1), same(3, 1, 1)),
    Case("Flatten", lambda b, x: b.node("Flatten", [b.node("Transpose", [x], perm=[0, 2, 3, 1])], axis=1),
         lambda o: (192,)),
    Case("Reshape", lambda b, x: b.node("Reshape", [x, b.const([0, 3, 64], np.int64)]), lambda o: (3, 64)),
    Case("Transpose", lambda b, x: b.node("Transpose", [x], perm=[0, 1, 3, 2]), same()),
    Case("Unsqueeze", lambda b, x: b.axes("Unsqueeze", x, [2], 13), lambda o: (3, 1, 8, 8)),
    Case("Squeeze", _squeeze, lambda o: (3,)),
    Case("Concat", lambda b, x: b.node("Concat", [x, b.node("Neg", [x])], axis=1), same(6)),
    Case("Split", _split, same(1)),
    binary("Add", 0.25), binary("Sub", 0.25), binary("Mul", -1.5), binary("Div", 4.0),
    _sum_like("Sum"), _sum_like("Mean"), _sum_like("Max"), _sum_like("Min"),
    Case("Softmax", lambda b, x: b.node("Softmax", [x], axis=1), same()),
    Case("LogSoftmax", lambda b, x: b.node("LogSoftmax", [x], axis=1), same()),
    Case("Dropout", _dropout, same()),
    Case("Pad", _pad, same(3, 11, 11)),
    Case("DepthToSpace", lambda b, x: b.node("DepthToSpace", [b.node("Conv", [x, b.weight(4, 3, 1, 1)])], blocksize=2),
         same(1, 16, 16)),
    Case("SpaceToDepth", lambda b, x: b.node("SpaceToDepth", [x], blocksize=2), same(12, 4, 4)),
    Case("Upsample", _upsample, same(3, 16, 16), max_opset=9),
    Case("Resize", _resize, same(3, 16, 16)),
    Case("ImageScaler", lambda b, x: b.node("ImageScaler", [x], scale=0.5, bias=[0.1, -0.2, 0.3]), same(),
         max_opset=9),
]
BY_OP = {c.op: c for c in CASES}


def exists(case: Case, opset: int) -> bool:
    """Whether the op is defined at ``opset`` (not yet introduced, or deprecated, means no)."""
    if not case.min_opset <= opset <= case.max_opset:
        return False
    try:
        schema = defs.get_schema(case.op, max_inclusive_version=opset, domain="")
    except Exception:
        return case.op not in {s.name for s in defs.get_all_schemas_with_history()}
    return not schema.deprecated


def build(case: Case, opset: int) -> onnx.ModelProto:
    b = B(opset)
    x = b.node("Sub", [b.node("Mul", ["x", b.const([4.0])]), b.const([2.0])])
    y = case.body(b, x)
    f = b.node("Flatten", [y], axis=1)
    n_feat = int(np.prod(case.shape(opset)))
    b.nodes.append(helper.make_node("Gemm", [f, b.weight(n_feat, K), b.weight(K)], ["logits"], name="fc"))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", case.channels, 8, 8])]
    if _ir(opset) < 4:  # IR 3 lists initializers among the graph inputs
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in b.inits]
    graph = helper.make_graph(
        b.nodes, f"{case.op.lower()}_{opset}", inputs,
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", K])], b.inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=_ir(opset),
                             producer_name="opset-matrix")


def _x(case: Case) -> np.ndarray:
    return np.random.default_rng(1).random((3, case.channels, 8, 8), dtype=np.float32)


PAIRS = [pytest.param(c.op, o, id=f"{c.op}-{o}") for c in CASES for o in range(FIRST, LAST + 1) if exists(c, o)]


@functools.cache
def ort_runs(op: str, opset: int) -> bool:
    """Whether onnxruntime runs the case's graph at ``opset``."""
    try:
        ort.InferenceSession(build(BY_OP[op], opset).SerializeToString(), providers=["CPUExecutionProvider"])
        return True
    except Exception:
        return False


@pytest.mark.parametrize(("op", "opset"), PAIRS)
def test_op_at_opset(op: str, opset: int) -> None:
    register_aliases()
    case = BY_OP[op]
    model = build(case, opset)
    x = _x(case)
    if opset > ort_max_opset():
        _check_without_ort(case, model, x)
        return
    try:
        tm = to_torch(AuditModel.from_proto(model, device="cpu"), x)
    except AuditError as exc:  # an op version onnxruntime has no kernel for
        if "Could not find an implementation" not in str(exc):
            raise
        _check_without_ort(case, model, x)
        return
    assert tm.parity_rel <= 1e-4
    assert np.abs(torch_logits(tm, x)).max() > 1e-3  # the check compared real numbers
    written = write_back(tm, x)
    assert [(o.domain, o.version) for o in written.opset_import] == [("", opset)]
    assert [(t.name, t.SerializeToString()) for t in written.graph.initializer] == \
        [(t.name, t.SerializeToString()) for t in model.graph.initializer]


def _check_without_ort(case: Case, model: onnx.ModelProto, x: np.ndarray) -> None:
    """Where onnxruntime cannot run the graph (an opset or op version newer than it implements):
    convert with onnx2torch directly and compare with onnx's reference evaluator or, for an op it
    does not implement, with onnxruntime on the same graph at the newest opset it runs."""
    from onnx2torch import convert

    assert missing_converters(model) == []
    try:
        expected = ReferenceEvaluator(model).run(None, {"x": x})[0]
    except RuntimeImplementationError:
        opset = max(o for o in range(FIRST, ort_max_opset() + 1) if exists(case, o) and ort_runs(case.op, o))
        ref = build(case, opset)
        assert [n.op_type for n in ref.graph.node] == [n.op_type for n in model.graph.node]
        for dst, src in zip(ref.graph.initializer, model.graph.initializer, strict=True):
            dst.CopyFrom(src)
        sess = ort.InferenceSession(ref.SerializeToString(), providers=["CPUExecutionProvider"])
        expected = sess.run(None, {"x": x})[0]
    module = convert(model).eval()
    with torch.no_grad():
        got = module(torch.from_numpy(x)).numpy()
    assert got.shape == expected.shape
    assert np.abs(expected).max() > 1e-3
    assert np.max(np.abs(got - expected)) / max(1.0, float(np.abs(expected).max())) <= 1e-4
