"""The op-version registry: schema comparison, aliases, guards, new op converters, error lines."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, defs, helper, numpy_helper
from onnx2torch import convert
from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription

from audit.converters import registry as R
from audit.converters.guards import guards
from audit.converters.to_torch import to_torch
from audit.errors import ConversionError
from audit.graphs.model import AuditModel


def _schema(op: str, version: int) -> defs.OpSchema:
    return defs.get_schema(op, max_inclusive_version=version, domain="")


# ------------------------------------------------------------------------------------------ schema comparison
def test_type_only_pairs_are_aliased() -> None:
    R.register_aliases()
    assert R.signature(_schema("Transpose", 21)) == R.signature(_schema("Transpose", 13))
    assert R.type_only("Transpose", 13, 21)
    assert R.ALIASES[OperationDescription("", "Transpose", 21)] == R.Alias(13)
    assert R.ALIASES[OperationDescription("", "Conv", 22)] == R.Alias(11)
    # older from newer where identical: Gemm-7 from Gemm-9, Flatten-1 from Flatten-9
    assert R.ALIASES[OperationDescription("", "Gemm", 7)] == R.Alias(9)
    assert R.ALIASES[OperationDescription("", "Flatten", 1)] == R.Alias(9)


def test_changed_signatures_are_not_type_only() -> None:
    assert not R.type_only("Pad", 13, 18)                  # Pad-18 added the axes input
    assert R.signature(_schema("Pad", 18))[0][-1] == ("axes", int(defs.OpSchema.FormalParameterOption.Optional))
    assert not R.type_only("Softmax", 11, 13)              # axis default 1 -> -1 (and no 2-D coercion)
    assert not R.type_only("Reshape", 13, 14)              # allowzero added
    assert not R.type_only("Squeeze", 11, 13)              # axes attribute -> input
    assert not R.type_only("BatchNormalization", 7, 9)     # spatial removed
    assert R.runs("Softmax") == ((1, 11), (13,))


def test_a_changed_attribute_breaks_the_signature() -> None:
    base = _schema("LeakyRelu", 16)
    changed = defs.OpSchema(
        "LeakyRelu", "", 99, inputs=[defs.OpSchema.FormalParameter("X", "T")],
        outputs=[defs.OpSchema.FormalParameter("Y", "T")],
        type_constraints=[("T", ["tensor(float)"], "")],
        attributes=[defs.OpSchema.Attribute("alpha", defs.OpSchema.AttrType.INT, "", required=False)],
    )
    assert R.signature(changed)[:2] == R.signature(base)[:2]
    assert R.signature(changed) != R.signature(base)
    same_types_only = defs.OpSchema(
        "LeakyRelu", "", 99, inputs=[defs.OpSchema.FormalParameter("X", "T")],
        outputs=[defs.OpSchema.FormalParameter("Y", "T")],
        type_constraints=[("T", ["tensor(double)"], "")],
        attributes=[defs.OpSchema.Attribute("alpha", helper.make_attribute("alpha", 0.01), "")],
    )
    assert R.signature(same_types_only) == R.signature(base)


def test_guarded_versions_are_registered_and_idempotent() -> None:
    first = R.register_aliases()
    assert R.register_aliases() == first
    pad18 = R.ALIASES[OperationDescription("", "Pad", 18)]
    assert pad18.base == 13 and pad18.guard is guards()[("", "Pad")]
    for v in (19, 21, 23, 24, 25):   # the type-only run of Pad-18
        assert OperationDescription("", "Pad", v) in _CONVERTER_REGISTRY
    assert R.ALIASES[OperationDescription("", "AveragePool", 19)].base == 11
    assert R.ALIASES[OperationDescription("", "BatchNormalization", 7)].base == 9
    assert R.ALIASES[OperationDescription("", "MaxPool", 1)].base == 8


# ------------------------------------------------------------------------------------------ guards and errors
def _model(nodes, inits=(), opset=13, x_shape=("N", 3, 8, 8), y_shape=None) -> onnx.ModelProto:
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=min(
        {r[2]: r[1] for r in helper.VERSION_TABLE}[opset], 10))


def _i64(name, v):
    return numpy_helper.from_array(np.asarray(v, np.int64), name)


def _f32(name, v):
    return numpy_helper.from_array(np.asarray(v, np.float32), name)


@pytest.mark.parametrize(("model", "expected"), [
    (_model([helper.make_node("Pad", ["x", "p", "", "ax"], ["y"], name="pad0")],
            [_i64("p", [1, 1, 1, 1]), _i64("ax", [2, 3])], opset=18),
     "Pad-18 (node 'pad0'): an axes input is not supported"),
    (_model([helper.make_node("Pad", ["x", "p"], ["y"], name="pad1", mode="wrap")],
            [_i64("p", [0, 0, 1, 1, 0, 0, 1, 1])], opset=19),
     "Pad-19 (node 'pad1'): mode='wrap' is not supported"),
    (_model([helper.make_node("AveragePool", ["x"], ["y"], name="ap0", kernel_shape=[2, 2],
                              dilations=[2, 2])], opset=19),
     "AveragePool-19 (node 'ap0'): dilations other than 1 are not supported"),
    (_model([helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], name="bn0", spatial=0)],
            [_f32(n, np.ones((3, 8, 8))) for n in "sbmv"], opset=7),
     "BatchNormalization-7 (node 'bn0'): spatial=0 is not supported"),
    (_model([helper.make_node("Dropout", ["x", "", "t"], ["y"], name="do0")],
            [numpy_helper.from_array(np.array(True), "t")], opset=13),
     "Dropout-13 (node 'do0'): training_mode=true (dropout at inference) is not supported"),
    (_model([helper.make_node("Resize", ["x", "", "sc"], ["y"], name="rs0", antialias=1, mode="linear")],
            [_f32("sc", [1, 1, 2, 2])], opset=18),
     "Resize-18 (node 'rs0'): antialias=1 is not supported"),
    (_model([helper.make_node("Cast", ["x"], ["y"], name="c0", to=TensorProto.FLOAT8E4M3FN)], opset=19),
     "Cast-19 (node 'c0'): a cast to FLOAT8E4M3FN is not supported"),
    (_model([helper.make_node("MaxPool", ["x"], ["y", "idx"], name="mp0", kernel_shape=[2, 2])], opset=13),
     "MaxPool-12 (node 'mp0'): the Indices output is not supported"),
    (_model([helper.make_node("Hardmax", ["x"], ["y"], name="hm0")], opset=13),
     "Hardmax-13 (node 'hm0')"),
    (_model([helper.make_node("LpPool", ["x"], ["y"], name="lp0", kernel_shape=[2, 2])], opset=22),
     "LpPool-22 (node 'lp0')"),
])
def test_guards_and_missing_converters_name_op_version_and_node(model, expected) -> None:
    assert R.missing_converters(model) == [expected]


def test_guard_inside_the_converter_refuses_too() -> None:
    """onnx2torch called directly goes through the same guard."""
    m = _model([helper.make_node("AveragePool", ["x"], ["y"], name="ap0", kernel_shape=[2, 2], dilations=[2, 2])],
               opset=19, x_shape=(1, 3, 8, 8))
    R.register_aliases()
    with pytest.raises(NotImplementedError, match=r"AveragePool-19 \(node 'ap0'\): dilations other than 1"):
        convert(m)


def test_guards_let_the_plain_nodes_through() -> None:
    pad = _model([helper.make_node("Pad", ["x", "p"], ["y"], name="pad0")], [_i64("p", [0, 0, 1, 1, 0, 0, 1, 1])],
                 opset=21)
    dropout = _model([helper.make_node("Dropout", ["x", "", "t"], ["y"], name="do0")],
                     [numpy_helper.from_array(np.array(False), "t")], opset=13)
    assert R.missing_converters(pad) == [] and R.missing_converters(dropout) == []


def _classifier(body_op: str, opset: int, **attrs) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    nodes = [helper.make_node(body_op, ["x"], ["h"], name=f"{body_op.lower()}0", **attrs),
             helper.make_node("Flatten", ["h"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "w", "b"], ["y"], name="fc")]
    inits = [_f32("w", rng.standard_normal((192, 4)) * 0.1), _f32("b", rng.standard_normal(4))]
    return _model(nodes, inits, opset=opset, y_shape=["N", 4])


def test_to_torch_error_names_op_version_and_node() -> None:
    m = _classifier("Hardmax", 13, axis=1)
    with pytest.raises(ConversionError, match=r"^onnx2torch cannot convert Hardmax-13 \(node 'hardmax0'\)$"):
        to_torch(AuditModel.from_proto(m, device="cpu"))


# ------------------------------------------------------------------------------------------ new op converters
def _ort(m: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _torch(m: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    R.register_aliases()
    with torch.no_grad():
        return convert(m).eval()(torch.from_numpy(x)).numpy()


NEW_OPS = [
    ("MeanVarianceNormalization", 13, {}),
    ("MeanVarianceNormalization", 9, {"axes": [1, 2, 3]}),
    ("GlobalMaxPool", 13, {}),
    ("GlobalLpPool", 13, {"p": 3}),
    ("LpNormalization", 13, {"axis": 1, "p": 1}),
    ("Mish", 18, {}),
    ("Gelu", 20, {"approximate": "tanh"}),
    ("ThresholdedRelu", 13, {"alpha": 0.3}),
    ("Shrink", 13, {"lambd": 0.4, "bias": 0.2}),
    ("SpaceToDepth", 13, {"blocksize": 2}),
    ("DepthToSpace", 13, {"blocksize": 2, "mode": "DCR"}),
    ("Upsample", 7, {"scales": [1.0, 1.0, 2.0, 3.0], "mode": "linear"}),
    ("ImageScaler", 8, {"scale": 2.0, "bias": [0.5, -1.0, 0.25]}),
    ("Affine", 8, {"alpha": -1.5, "beta": 0.5}),
    ("ScaledTanh", 8, {"alpha": 2.0, "beta": 0.7}),
]


@pytest.mark.parametrize(("op", "opset", "attrs"), NEW_OPS, ids=[f"{o}-{v}" for o, v, _ in NEW_OPS])
def test_new_op_converters_match_onnxruntime(op: str, opset: int, attrs: dict) -> None:
    channels = 4 if op == "DepthToSpace" else 3
    m = _model([helper.make_node(op, ["x"], ["y"], name="n0", **attrs)], opset=opset,
               x_shape=("N", channels, 8, 8))
    x = (np.random.default_rng(3).standard_normal((2, channels, 8, 8)) * 2).astype(np.float32)
    want, got = _ort(m, x), _torch(m, x)
    assert got.shape == want.shape and np.abs(want).max() > 0.1
    assert np.max(np.abs(got - want)) <= 1e-4 * max(1.0, float(np.abs(want).max()))


@pytest.mark.parametrize("opset", [18, 20])
def test_reduce_with_axes_input_matches_onnxruntime(opset: int) -> None:
    for op, keepdims in (("ReduceMean", 1), ("ReduceMax", 0), ("ReduceL2", 1), ("ReduceLogSumExp", 0)):
        m = _model([helper.make_node(op, ["x", "ax"], ["y"], name="r0", keepdims=keepdims)],
                   [_i64("ax", [2, 3])], opset=opset)
        x = np.random.default_rng(4).standard_normal((2, 3, 8, 8)).astype(np.float32)
        want, got = _ort(m, x), _torch(m, x)
        assert got.shape == want.shape == ((2, 3, 1, 1) if keepdims else (2, 3))
        assert np.max(np.abs(got - want)) <= 1e-4 * max(1.0, float(np.abs(want).max())), op


def test_pad2_uses_its_value_attribute() -> None:
    m = _model([helper.make_node("Pad", ["x"], ["y"], name="p0", pads=[0, 0, 1, 1, 0, 0, 1, 1], value=0.75)],
               opset=9)
    x = np.zeros((1, 3, 8, 8), np.float32)
    got = _torch(m, x)
    assert got[0, 0, 0, 0] == 0.75 and np.array_equal(got, _ort(m, x))


# ------------------------------------------------------------------------------------------ support table
def test_support_table() -> None:
    rows = {(r.op, r.version): r for r in R.support_table()}
    assert rows[("Conv", 11)].status == "onnx2torch"
    assert rows[("Conv", 22)] == R.SupportRow("Conv", 22, "alias", 11)
    assert rows[("Pad", 18)].status == "guarded" and "axes" in rows[("Pad", 18)].note
    assert rows[("MeanVarianceNormalization", 9)].status == "audit"
    assert rows[("MeanVarianceNormalization", 13)] == R.SupportRow("MeanVarianceNormalization", 13, "alias", 9)
    assert rows[("Hardmax", 13)].status == "unsupported"
    md = R.support_markdown()
    assert md.count("\n") == 2 and "`MeanVarianceNormalization` [audit]" in md and "`Hardmax`" in md


@pytest.mark.parametrize(("size", "parts"), [(8, 2), (7, 3), (3, 3)])
def test_split18_num_outputs_matches_onnxruntime(size, parts) -> None:
    """Split-18 with num_outputs: ceil(n / parts) per chunk, the last one smaller (torchvision's
    shufflenet through the dynamo exporter)."""
    outs = [f"o{i}" for i in range(parts)]
    nodes = [helper.make_node("Split", ["x"], outs, name="sp0", axis=1, num_outputs=parts),
             helper.make_node("Concat", outs[::-1], ["y"], name="cat", axis=1)]
    m = _model(nodes, opset=18, x_shape=("N", size, 4, 4))
    x = np.random.default_rng(0).standard_normal((2, size, 4, 4)).astype(np.float32)
    assert R.missing_converters(m) == []
    np.testing.assert_array_equal(_torch(m, x), _ort(m, x))
