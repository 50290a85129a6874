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
    (_model([helper.make_node("Bernoulli", ["x"], ["y"], name="be0")], opset=15),
     "Bernoulli-15 (node 'be0')"),
    (_model([helper.make_node("RandomUniformLike", ["x"], ["y"], name="ru0")], opset=22),
     "RandomUniformLike-22 (node 'ru0')"),
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
    m = _classifier("Bernoulli", 15)
    with pytest.raises(ConversionError, match=r"^onnx2torch cannot convert Bernoulli-15 \(node 'bernoulli0'\)$"):
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
    assert rows[("Bernoulli", 15)].status == "unsupported"
    assert rows[("Hardmax", 13)].status == rows[("GroupNormalization", 21)].status == "audit"
    md = R.support_markdown()
    assert md.count("\n") == 2 and "`MeanVarianceNormalization` [audit]" in md and "`Bernoulli`" in md


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


# ------------------------------------------------------------------------------------------ more new op converters
def _graph(nodes, inits=(), opset=13, inputs=(("x", TensorProto.FLOAT, ("N", 3, 8, 8)),),
           y_type=TensorProto.FLOAT) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(*i) for i in inputs],
                          [helper.make_tensor_value_info("y", y_type, None)], list(inits))
    ir = {r[2]: r[1] for r in helper.VERSION_TABLE}.get(opset, 10)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=min(ir, 10))


def _ort_feeds(m: onnx.ModelProto, feeds: dict) -> np.ndarray:
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _torch_feeds(m: onnx.ModelProto, feeds: dict) -> np.ndarray:
    R.register_aliases()
    with torch.no_grad():
        return convert(m).eval()(*(torch.from_numpy(v) for v in feeds.values())).numpy()


def _close(got: np.ndarray, want: np.ndarray, tol: float = 1e-5) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype
    assert np.max(np.abs(got - want), initial=0.0) <= tol * max(1.0, float(np.abs(want).max(initial=0.0)))


def _x(shape=(2, 3, 8, 8), seed=5, scale=2.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


HYPERBOLIC = {"Sinh": (-3, 3), "Cosh": (-3, 3), "Asinh": (-20, 20), "Acosh": (1, 20), "Atanh": (-0.99, 0.99)}


@pytest.mark.parametrize("opset", [9, 22])
@pytest.mark.parametrize("op", list(HYPERBOLIC))
def test_hyperbolic_ops_match_onnxruntime(op: str, opset: int) -> None:
    low, high = HYPERBOLIC[op]
    x = np.random.default_rng(6).uniform(low, high, (2, 3, 8, 8)).astype(np.float32)
    m = _graph([helper.make_node(op, ["x"], ["y"], name="n0")], opset=opset)
    _close(_torch(m, x), _ort(m, x))


@pytest.mark.parametrize(("opset", "attrs"), [(1, {"axis": 2}), (11, {}), (13, {}), (13, {"axis": 1})])
def test_hardmax_matches_onnxruntime(opset: int, attrs: dict) -> None:
    """-1 and -11 flatten from ``axis`` (one 1 per [n, :] for the default axis 1), -13 works on one axis."""
    m = _graph([helper.make_node("Hardmax", ["x"], ["y"], name="n0", **attrs)], opset=opset)
    for x in (_x(), np.round(_x(scale=0.7))):   # the second has ties: the first maximum wins
        got = _torch(m, x)
        np.testing.assert_array_equal(got, _ort(m, x))
    if opset < 13:   # one 1 per slice flattened from ``axis``
        axis = attrs.get("axis", 1)
        assert np.all(got.reshape(int(np.prod(got.shape[:axis])), -1).sum(1) == 1)
    else:
        assert np.all(got.sum(attrs.get("axis", -1)) == 1)


LP_POOLS = [
    (2, {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    (11, {"kernel_shape": [2, 2], "p": 1}),
    (18, {"kernel_shape": [3, 2], "strides": [2, 3], "pads": [1, 0, 0, 1], "dilations": [2, 1], "ceil_mode": 1,
          "p": 3}),
    (22, {"kernel_shape": [2, 3], "strides": [3, 2], "ceil_mode": 1}),
    (22, {"kernel_shape": [3], "strides": [2], "pads": [2, 1]}),
]


@pytest.mark.parametrize(("opset", "attrs"), LP_POOLS, ids=[f"LpPool-{o}-{i}" for i, (o, _) in enumerate(LP_POOLS)])
def test_lp_pool_matches_onnxruntime(opset: int, attrs: dict) -> None:
    shape = (2, 3, 8) if len(attrs["kernel_shape"]) == 1 else (2, 3, 9, 8)
    m = _graph([helper.make_node("LpPool", ["x"], ["y"], name="n0", **attrs)], opset=opset,
               inputs=[("x", TensorProto.FLOAT, shape)])
    x = _x(shape)
    _close(_torch(m, x), _ort(m, x))


def test_lp_pool1_float_p_matches_the_reference_evaluator() -> None:
    """onnxruntime has no LpPool-1 kernel; its p is a float."""
    from onnx.reference import ReferenceEvaluator

    m = _graph([helper.make_node("LpPool", ["x"], ["y"], name="n0", kernel_shape=[2, 2], strides=[2, 2], p=2.5)],
               opset=1, inputs=[("x", TensorProto.FLOAT, (2, 3, 8, 8))])
    x = _x()
    _close(_torch(m, x), ReferenceEvaluator(m).run(None, {"x": x})[0])


@pytest.mark.parametrize(("attrs", "reason"), [
    ({"kernel_shape": [2, 2], "auto_pad": "SAME_UPPER"}, "auto_pad='SAME_UPPER' is not supported"),
    ({}, "a kernel_shape attribute is required"),
])
def test_lp_pool_refuses_what_it_does_not_implement(attrs: dict, reason: str) -> None:
    m = _graph([helper.make_node("LpPool", ["x"], ["y"], name="n0", **attrs)], opset=1 if not attrs else 18,
               inputs=[("x", TensorProto.FLOAT, (2, 3, 8, 8))])
    R.register_aliases()
    with pytest.raises(NotImplementedError, match=reason):
        convert(m)


@pytest.mark.parametrize(("opset", "groups", "n_affine"), [(18, 2, 2), (18, 4, 4), (21, 2, 4), (21, 1, 4)])
def test_group_normalization_matches_onnxruntime(opset: int, groups: int, n_affine: int) -> None:
    """-18 takes one scale and bias per group, -21 one per channel."""
    rng = np.random.default_rng(7)
    inits = [_f32("s", rng.standard_normal(n_affine)), _f32("b", rng.standard_normal(n_affine))]
    m = _graph([helper.make_node("GroupNormalization", ["x", "s", "b"], ["y"], name="n0", num_groups=groups,
                                 epsilon=1e-3)], inits, opset=opset, inputs=[("x", TensorProto.FLOAT, ("N", 4, 6, 5))])
    x = _x((2, 4, 6, 5)) + 1.0
    _close(_torch(m, x), _ort(m, x))


@pytest.mark.parametrize(("opset", "target"), [
    (15, np.int32), (19, np.float16), (21, np.int64), (25, np.uint8), (25, np.bool_), (24, np.float64)])
def test_cast_like_matches_onnxruntime(opset: int, target) -> None:
    t = numpy_helper.from_array(np.zeros(2, target), "t")
    m = _graph([helper.make_node("CastLike", ["x", "t"], ["y"], name="n0")], [t], opset=opset,
               y_type=helper.np_dtype_to_tensor_dtype(np.dtype(target)))
    x = _x() * 20 if target is not np.uint8 else np.abs(_x() * 20)
    x[0, 0, 0, :3] = 0.0
    got, want = _torch(m, x), _ort(m, x)
    assert got.dtype == want.dtype == np.dtype(target)
    np.testing.assert_array_equal(got, want)


def test_cast_like_refuses_float8_targets() -> None:
    t = helper.make_tensor("t", TensorProto.FLOAT8E4M3FN, [1], [0.0])
    m = _graph([helper.make_node("CastLike", ["x", "t"], ["y"], name="n0")], [t], opset=19,
               y_type=TensorProto.FLOAT8E4M3FN)
    R.register_aliases()
    with pytest.raises(NotImplementedError, match="a cast to FLOAT8E4M3FN is not supported"):
        convert(m)


@pytest.mark.parametrize("opset", [13, 21])
def test_size_matches_onnxruntime(opset: int) -> None:
    m = _graph([helper.make_node("Size", ["x"], ["y"], name="n0")], opset=opset, y_type=TensorProto.INT64,
               inputs=[("x", TensorProto.FLOAT, ("N", 3, 5, 7))])
    x = _x((2, 3, 5, 7))
    got, want = _torch(m, x), _ort(m, x)
    assert got.shape == want.shape == () and got.dtype == want.dtype == np.int64 and got == want == 210


@pytest.mark.parametrize(("upper", "k"), [(1, None), (0, None), (1, 2), (0, -1), (1, -3), (0, 6)])
def test_trilu_matches_onnxruntime(upper: int, k) -> None:
    inits = [] if k is None else [_i64("k", k)]
    m = _graph([helper.make_node("Trilu", ["x"] + ([] if k is None else ["k"]), ["y"], name="n0", upper=upper)],
               inits, opset=14, inputs=[("x", TensorProto.FLOAT, ("N", 3, 6, 8))])
    x = _x((2, 3, 6, 8))
    np.testing.assert_array_equal(_torch(m, x), _ort(m, x))


def test_trilu_with_a_computed_k_matches_onnxruntime() -> None:
    m = _graph([helper.make_node("Neg", ["kin"], ["k"], name="neg"),
                helper.make_node("Trilu", ["x", "k"], ["y"], name="n0", upper=0)], opset=14,
               inputs=[("x", TensorProto.FLOAT, ("N", 3, 6, 8)), ("kin", TensorProto.INT64, ())])
    for k in (-2, 1):
        feeds = {"x": _x((2, 3, 6, 8)), "kin": np.array(k, np.int64)}
        np.testing.assert_array_equal(_torch_feeds(m, feeds), _ort_feeds(m, feeds))


@pytest.mark.skipif(not R.versions("CumProd"), reason="this onnx has no CumProd")
@pytest.mark.parametrize(("axis", "exclusive", "reverse"), [(1, 0, 0), (-1, 1, 0), (2, 0, 1), (3, 1, 1)])
def test_cum_prod_matches_onnxruntime(axis: int, exclusive: int, reverse: int) -> None:
    m = _graph([helper.make_node("CumProd", ["x", "ax"], ["y"], name="n0", exclusive=exclusive, reverse=reverse)],
               [_i64("ax", axis)], opset=26, inputs=[("x", TensorProto.FLOAT, ("N", 3, 6, 8))])
    x = 1.0 + 0.2 * _x((2, 3, 6, 8))
    _close(_torch(m, x), _ort(m, x))


@pytest.mark.parametrize("attrs", [{}, {"reverse": 1}, {"exclusive": 1}, {"exclusive": 1, "reverse": 1}])
def test_cumsum_reverse_defaults_to_zero(attrs) -> None:
    nodes = [helper.make_node("CumSum", ["x", "ax"], ["y"], name="cs0", **attrs)]
    m = _model(nodes, [_i64("ax", 1)], opset=14, x_shape=("N", 5))
    x = np.arange(10, dtype=np.float32).reshape(2, 5)
    np.testing.assert_array_equal(_torch(m, x), _ort(m, x))
