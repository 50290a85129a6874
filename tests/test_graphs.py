"""Graph normalisation passes, model analysis (layout, classes, output kind) and the ORT probe.

Every pass test builds a tiny graph with onnx.helper and checks three things: the rewrite
happened, onnxruntime gives the same outputs before and after, and the caller's model object
is untouched (its serialisation is byte-identical before and after).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from audit.data import Preprocess
from audit.errors import ModelError
from audit.graphs import passes as P
from audit.graphs.info import analyse
from audit.graphs.model import AuditModel
from audit.graphs.probe import expose, find_probe_layers, mean_activations

RNG = np.random.default_rng(1234)
F = TensorProto.FLOAT


# ------------------------------------------------------------------------------------------
# helpers


def vi(name: str, shape, elem=F) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def make_model(nodes, inputs, outputs, inits: dict | None = None, *, opset: int = 13,
               ir: int = 8, name: str = "g") -> onnx.ModelProto:
    tensors = [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()]
    g = helper.make_graph(nodes, name, inputs, outputs, tensors)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)],
                          producer_name="test_graphs")
    m.ir_version = ir
    return m


def rand(*shape) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def ort_run(model: onnx.ModelProto, x: np.ndarray, outputs=None) -> list[np.ndarray]:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(outputs, {s.get_inputs()[0].name: x})


def apply(pass_fn, model: onnx.ModelProto):
    """Run one pass; assert it left the caller's model untouched."""
    before = model.SerializeToString()
    ctx = P.PassContext()
    out, modified = pass_fn(model, ctx)
    assert model.SerializeToString() == before, f"{pass_fn.__name__} mutated its input"
    return out, modified, ctx


def assert_same_outputs(a: onnx.ModelProto, b: onnx.ModelProto, x: np.ndarray,
                        atol: float = 1e-5) -> None:
    ra, rb = ort_run(a, x), ort_run(b, x)
    assert len(ra) == len(rb)
    for u, v in zip(ra, rb):
        assert u.shape == v.shape
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=atol)


def ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def small_cnn(*, input_shape=("N", 1, 6, 6), classes: int = 4, final: str | None = None,
              names: bool = True) -> onnx.ModelProto:
    """Conv(3x3, pad 1) -> Relu -> MaxPool 2 -> Flatten -> Gemm -> Relu -> Gemm [-> final]."""
    c, h, w = input_shape[1:]
    k1, hidden = 3, 8
    flat = k1 * (h // 2) * (w // 2)
    inits = {"W1": rand(k1, c, 3, 3), "B1": rand(k1), "W2": rand(hidden, flat), "B2": rand(hidden),
             "W3": rand(hidden, classes), "B3": rand(classes)}
    nodes = [
        helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2],
                         name="pool1"),
        helper.make_node("Flatten", ["p1"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "W2", "B2"], ["g2"], transB=1, name="fc1"),
        helper.make_node("Relu", ["g2"], ["r2"], name="relu2"),
        helper.make_node("Gemm", ["r2", "W3", "B3"], ["logits"], name="fc2"),
    ]
    out = "logits"
    if final:
        nodes.append(helper.make_node(final, ["logits"], ["scores"], axis=1, name="final"))
        out = "scores"
    if not names:
        for n in nodes:
            n.name = ""
    return make_model(nodes, [vi("x", list(input_shape))], [vi(out, ["N", classes])], inits)


# ------------------------------------------------------------------------------------------
# structural passes


def test_remove_initializer_inputs_ir3():
    m = small_cnn()
    m.ir_version = 3
    m.opset_import[0].version = 8
    # IR 3 (CNTK, old exporters) lists every initializer as a graph input as well
    for t in m.graph.initializer:
        m.graph.input.append(vi(t.name, list(t.dims)))
    assert len(m.graph.input) == 7
    out, modified, _ = apply(P.remove_initializer_inputs, m)
    assert modified
    assert [i.name for i in out.graph.input] == ["x"]
    assert len(out.graph.initializer) == 6
    assert_same_outputs(m, out, rand(5, 1, 6, 6))
    # the analysis sees one image input in either form
    assert analyse(m).input_name == "x"
    am = AuditModel.from_proto(m, device="cpu")
    assert "remove_initializer_inputs" in am.ctx.applied
    assert am.info.layout == "NCHW" and am.info.num_classes == 4


def test_name_graph_and_nodes_empty_and_duplicate_names():
    m = small_cnn(names=False)
    m.graph.name = ""
    m.graph.node[1].name = "dup"
    m.graph.node[2].name = "dup"
    out, modified, _ = apply(P.name_graph_and_nodes, m)
    assert modified
    names = [n.name for n in out.graph.node]
    assert out.graph.name == "main_graph"
    assert all(names) and len(set(names)) == len(names)
    assert "dup" in names and "dup_1" in names
    # ORT refuses duplicate node names; compare with the same graph without any names
    unnamed = onnx.ModelProto()
    unnamed.CopyFrom(m)
    for n in unnamed.graph.node:
        n.name = ""
    assert_same_outputs(unnamed, out, rand(3, 1, 6, 6))
    m = unnamed
    # probe layers of the normalised graph are named
    layers = find_probe_layers(AuditModel.from_proto(m, device="cpu").normalised)
    assert len(layers) == 3 and all(layer.name for layer in layers)
    # already-named graphs are returned as they are
    _, modified, _ = apply(P.name_graph_and_nodes, small_cnn())
    assert not modified


def test_dedupe_outputs():
    m = small_cnn()
    m.graph.output.append(vi("logits", ["N", 4]))
    assert [o.name for o in m.graph.output] == ["logits", "logits"]
    out, modified, _ = apply(P.dedupe_outputs, m)
    assert modified
    assert [o.name for o in out.graph.output] == ["logits"]
    x = rand(4, 1, 6, 6)
    before, after = ort_run(m, x), ort_run(out, x)
    assert len(before) == 2 and len(after) == 1
    np.testing.assert_array_equal(before[0], after[0])
    am = AuditModel.from_proto(m, device="cpu")
    assert am.info.output_name == "logits"


def test_toposort_shuffled_nodes():
    m = small_cnn()
    order = [6, 2, 4, 0, 5, 3, 1]
    shuffled = [m.graph.node[i] for i in order]
    bad = onnx.ModelProto()
    bad.CopyFrom(m)
    del bad.graph.node[:]
    bad.graph.node.extend(shuffled)
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(bad)
    out, modified, _ = apply(P.toposort, bad)
    assert modified
    onnx.checker.check_model(out)  # sorted now
    assert [n.name for n in out.graph.node] == [n.name for n in m.graph.node]
    assert_same_outputs(bad, out, rand(3, 1, 6, 6))
    # a sorted graph is left alone; a cycle is refused
    _, modified, _ = apply(P.toposort, m)
    assert not modified
    cyc = make_model([helper.make_node("Relu", ["b"], ["a"]), helper.make_node("Relu", ["a"], ["b"])],
                     [vi("x", ["N", 4])], [vi("a", ["N", 4])])
    with pytest.raises(P.PassError, match="cycle"):
        P.toposort(cyc, P.PassContext())


def test_lift_constants_makes_weights_visible():
    w = rand(3, 5)
    nodes = [helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(w), name="k"),
             helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")]
    m = make_model(nodes, [vi("x", ["N", 3])], [vi("y", ["N", 5])])
    assert find_probe_layers(m) == []  # weight not an initializer yet
    out, modified, _ = apply(P.lift_constants, m)
    assert modified
    assert ops(out) == ["MatMul"]
    np.testing.assert_array_equal(numpy_helper.to_array(out.graph.initializer[0]), w)
    assert_same_outputs(m, out, rand(4, 3))
    assert [layer.units for layer in find_probe_layers(out)] == [5]


def test_fold_initializer_ops_keeps_a_way_back():
    """CNTK reshapes its dense weights at run time; folding must map back to the original."""
    raw = rand(2, 3, 4, 5)  # stored 4-D, reshaped to [24, 5] before the MatMul
    nodes = [helper.make_node("Reshape", ["Wraw", "shape"], ["W"], name="rs"),
             helper.make_node("Transpose", ["W"], ["Wt"], perm=[1, 0], name="tp"),
             helper.make_node("Gemm", ["x", "Wt"], ["y"], transB=1, name="fc")]
    m = make_model(nodes, [vi("x", ["N", 24])], [vi("y", ["N", 5])],
                   {"Wraw": raw, "shape": np.array([24, 5], np.int64)})
    out, modified, ctx = apply(P.fold_initializer_ops, m)
    assert modified
    assert ops(out) == ["Gemm"]
    assert [t.name for t in out.graph.initializer] == ["Wt"]
    assert_same_outputs(m, out, rand(3, 24))
    folded = numpy_helper.to_array(out.graph.initializer[0])
    orig, back = ctx.origin("Wt")
    assert orig == "Wraw"
    np.testing.assert_array_equal(back(folded), raw)


def test_fuse_conv_add_bias():
    w, b = rand(4, 2, 3, 3), rand(1, 4, 1, 1)
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
             helper.make_node("Add", ["c", "b"], ["y"], name="add")]
    m = make_model(nodes, [vi("x", ["N", 2, 7, 7])], [vi("y", ["N", 4, 5, 5])], {"W": w, "b": b})
    out, modified, ctx = apply(P.fuse_conv_add, m)
    assert modified
    assert ops(out) == ["Conv"]
    conv = out.graph.node[0]
    assert len(conv.input) == 3 and conv.output[0] == "y"
    assert_same_outputs(m, out, rand(3, 2, 7, 7))
    orig, back = ctx.origin(conv.input[2])
    assert orig == "b"
    bias = numpy_helper.to_array(next(t for t in out.graph.initializer if t.name == conv.input[2]))
    assert bias.shape == (4,)
    np.testing.assert_array_equal(back(bias), b)


def test_fuse_conv_add_refuses_a_non_channel_bias():
    """A 1-D [C] Add broadcasts over W, not over channels: it must not become a conv bias."""
    w, b = rand(5, 1, 3, 3), rand(5)
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
             helper.make_node("Add", ["c", "b"], ["y"], name="add")]
    m = make_model(nodes, [vi("x", ["N", 1, 7, 7])], [vi("y", ["N", 5, 5, 5])], {"W": w, "b": b})
    out, modified, _ = apply(P.fuse_conv_add, m)
    assert not modified and ops(out) == ["Conv", "Add"]


@pytest.mark.parametrize("bias_first", [False, True])
def test_fuse_matmul_add_to_gemm(bias_first):
    w, b = rand(6, 3), rand(3)
    add_in = ["b", "mm"] if bias_first else ["mm", "b"]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["mm"], name="dense"),
             helper.make_node("Add", add_in, ["y"], name="add")]
    m = make_model(nodes, [vi("x", ["N", 6])], [vi("y", ["N", 3])], {"W": w, "b": b})
    out, modified, ctx = apply(P.fuse_matmul_add, m)
    assert modified
    assert ops(out) == ["Gemm"]
    gemm = out.graph.node[0]
    assert gemm.name == "dense" and gemm.output[0] == "y" and gemm.input[1] == "W"
    assert ctx.origin(gemm.input[2])[0] == "b"
    assert_same_outputs(m, out, rand(5, 6))
    layers = find_probe_layers(out, m)
    assert [(layer.op, layer.units, layer.is_output) for layer in layers] == [("MatMul", 3, True)]


def test_fuse_matmul_add_keeps_a_bias_that_adds_an_axis():
    """An Add of a [1, 1, N] bias broadcasts [B, N] to [1, B, N]: it is no Gemm bias."""
    w, b = rand(6, 3), rand(1, 1, 3)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["mm"], name="dense"),
             helper.make_node("Add", ["mm", "b"], ["y"], name="add")]
    m = make_model(nodes, [vi("x", ["N", 6])], [vi("y", [1, "N", 3])], {"W": w, "b": b})
    out, modified, _ = apply(P.fuse_matmul_add, m)
    assert modified and ops(out) == ["Gemm", "Add"]
    assert len(out.graph.node[0].input) == 2
    assert_same_outputs(m, out, rand(5, 6))


def test_fuse_matmul_add_leaves_rank3_matmul():
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")]
    m = make_model(nodes, [vi("x", ["N", 4, 6])], [vi("y", ["N", 4, 3])], {"W": rand(6, 3)})
    out, modified, _ = apply(P.fuse_matmul_add, m)
    assert not modified and ops(out) == ["MatMul"]


def test_reshape_allowzero():
    nodes = [helper.make_node("Reshape", ["x", "s"], ["r"], allowzero=1, name="rs"),
             helper.make_node("Gemm", ["r", "W"], ["y"], name="fc")]
    m = make_model(nodes, [vi("x", ["N", 1, 4, 4])], [vi("y", ["N", 3])],
                   {"s": np.array([-1, 16], np.int64), "W": rand(16, 3)}, opset=14)
    out, modified, _ = apply(P.reshape_allowzero, m)
    assert modified
    assert P.attr(out.graph.node[0], "allowzero") == 0
    assert_same_outputs(m, out, rand(4, 1, 4, 4))
    # dynamo-style shape computed from Shape -> Gather -> Concat is also non-zero
    dyn_nodes = [helper.make_node("Shape", ["x"], ["sh"]),
                 helper.make_node("Gather", ["sh", "i0"], ["n"], axis=0),
                 helper.make_node("Concat", ["n", "m1"], ["s"], axis=0),
                 helper.make_node("Reshape", ["x", "s"], ["r"], allowzero=1),
                 helper.make_node("Gemm", ["r", "W"], ["y"])]
    dm = make_model(dyn_nodes, [vi("x", ["N", 1, 4, 4])], [vi("y", ["N", 3])],
                    {"i0": np.array([0], np.int64), "m1": np.array([-1], np.int64),
                     "W": rand(16, 3)}, opset=14)
    out, modified, _ = apply(P.reshape_allowzero, dm)
    assert modified
    assert_same_outputs(dm, out, rand(2, 1, 4, 4))
    # a literal 0 in the target means something different under allowzero=1: refuse
    zero = make_model(nodes, [vi("x", ["N", 1, 4, 4])], [vi("y", ["N", 3])],
                      {"s": np.array([0, 16], np.int64), "W": rand(16, 3)}, opset=14)
    with pytest.raises(P.PassError, match="allowzero"):
        apply(P.reshape_allowzero, zero)


@pytest.mark.parametrize("size", [7, 8])
def test_explicit_pads_same_upper_and_lower(size):
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], auto_pad="SAME_UPPER",
                              strides=[2, 2], name="conv"),
             helper.make_node("MaxPool", ["c"], ["p"], auto_pad="SAME_LOWER", kernel_shape=[2, 2],
                              name="pool"),
             helper.make_node("AveragePool", ["p"], ["y"], auto_pad="VALID", kernel_shape=[2, 2],
                              name="avg")]
    m = make_model(nodes, [vi("x", ["N", 2, size, size])], [vi("y", None)],
                   {"W": rand(3, 2, 4, 4), "B": rand(3)})
    out, modified, _ = apply(P.explicit_pads, m)
    assert modified
    for n in out.graph.node:
        assert P.attr(n, "auto_pad") in (b"NOTSET", "NOTSET")
    conv_pads = P.attr(out.graph.node[0], "pads")
    # SAME_UPPER puts the odd pixel at the end
    out_size = -(-size // 2)
    total = max((out_size - 1) * 2 + 4 - size, 0)
    assert list(conv_pads) == [total // 2] * 2 + [total - total // 2] * 2
    x = rand(3, 2, size, size)
    assert_same_outputs(m, out, x)


def test_explicit_pads_needs_static_spatial_dims():
    nodes = [helper.make_node("Conv", ["x", "W"], ["y"], auto_pad="SAME_UPPER", name="conv")]
    m = make_model(nodes, [vi("x", ["N", 1, "H", "W"])], [vi("y", None)], {"W": rand(2, 1, 3, 3)})
    with pytest.raises(P.PassError, match="static spatial"):
        apply(P.explicit_pads, m)


def test_strip_output_softmax_through_identity():
    """skl2onnx ends with Softmax -> Identity; torch must still see the scores before it."""
    m = small_cnn(final="Softmax")
    m.graph.node.append(helper.make_node("Identity", ["scores"], ["probs"], name="id"))
    m.graph.output[0].name = "probs"
    out, modified, _ = apply(P.strip_output_softmax, m)
    assert modified
    assert "Softmax" not in ops(out)
    x = rand(4, 1, 6, 6)
    logits = ort_run(small_cnn_like(m), x)[0]
    np.testing.assert_allclose(ort_run(out, x)[0], logits, rtol=1e-6, atol=1e-6)


def small_cnn_like(m: onnx.ModelProto) -> onnx.ModelProto:
    """m with its 'logits' tensor as the only output."""
    c = onnx.ModelProto()
    c.CopyFrom(m)
    del c.graph.output[:]
    c.graph.output.append(vi("logits", ["N", 4]))
    return c


# ------------------------------------------------------------------------------------------
# fixed batch 1 -> dynamic


def fixed_batch_model(shape: list[int], transpose: bool = False) -> onnx.ModelProto:
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1], name="conv")]
    src = "c"
    if transpose:  # batch no longer on axis 0 at the Reshape: the rewrite must be rejected
        nodes.append(helper.make_node("Transpose", ["c"], ["ct"], perm=[1, 0, 2, 3], name="tp"))
        src = "ct"
    nodes += [helper.make_node("Reshape", [src, "s"], ["r"], name="rs"),
              helper.make_node("MatMul", ["r", "G"], ["y"], name="fc")]
    return make_model(nodes, [vi("x", [1, 1, 4, 4])], [vi("y", [1, 5])],
                      {"W": rand(4, 1, 3, 3), "G": rand(64, 5), "s": np.array(shape, np.int64)})


@pytest.mark.parametrize("shape", [[1, -1], [1, 64]])
def test_fixed_batch_one_becomes_dynamic(shape):
    m = fixed_batch_model(shape)
    before = m.SerializeToString()
    am = AuditModel.from_proto(m, device="cpu")
    assert m.SerializeToString() == before
    assert am.info.fixed_batch == 1
    assert am.fixed_batch is None and "dynamic_batch" in am.ctx.applied
    dims = am.normalised.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].HasField("dim_value")
    x = rand(6, 1, 4, 4)
    batched = ort_run(am.normalised, x)[0]
    one_by_one = np.concatenate([ort_run(m, x[i:i + 1])[0] for i in range(6)])
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-5, atol=1e-5)
    # scores go through the normalised graph in one batch
    pp = Preprocess(scale=1 / 255)
    x01 = RNG.random((6, 1, 4, 4), dtype=np.float32)
    np.testing.assert_allclose(am.scores(x01, pp),
                               np.concatenate([ort_run(m, x01[i:i + 1])[0] for i in range(6)]),
                               rtol=1e-5, atol=1e-5)


def test_fixed_batch_stays_fixed_when_the_rewrite_would_change_outputs():
    m = fixed_batch_model([1, -1], transpose=True)
    am = AuditModel.from_proto(m, device="cpu")
    assert am.fixed_batch == 1 and "dynamic_batch" not in am.ctx.applied
    x01 = RNG.random((5, 1, 4, 4), dtype=np.float32)
    pp = Preprocess(scale=1 / 255)
    want = np.concatenate([ort_run(m, x01[i:i + 1])[0] for i in range(5)])
    np.testing.assert_allclose(am.scores(x01, pp, batch_size=4), want, rtol=1e-5, atol=1e-5)


def test_fixed_batch_other_than_one_is_refused():
    m = small_cnn(input_shape=(2, 1, 6, 6))
    with pytest.raises(ModelError, match="fixed batch size 2"):
        AuditModel.from_proto(m, device="cpu")


# ------------------------------------------------------------------------------------------
# layout inference: every layout must feed the same canonical images to the same network


def scores_of(m: onnx.ModelProto, x01: np.ndarray, pp=None) -> tuple[AuditModel, np.ndarray]:
    am = AuditModel.from_proto(m, device="cpu")
    return am, am.scores(x01, pp or Preprocess(scale=1 / 255, mean=0.5, std=0.5))


def with_prefix(m: onnx.ModelProto, prefix_nodes, new_input, inits: dict | None = None):
    """m with its input renamed 'x0' -> prefix -> 'x' (a layout adapter in front)."""
    c = onnx.ModelProto()
    c.CopyFrom(m)
    del c.graph.input[:]
    c.graph.input.append(new_input)
    for k, v in (inits or {}).items():
        c.graph.initializer.append(numpy_helper.from_array(np.asarray(v), k))
    for n in reversed(prefix_nodes):
        c.graph.node.insert(0, n)
    return c


def test_layout_nhwc_with_transpose():
    ref = small_cnn(input_shape=("N", 3, 6, 6))
    nhwc = with_prefix(ref, [helper.make_node("Transpose", ["x0"], ["x"], perm=[0, 3, 1, 2])],
                       vi("x0", ["N", 6, 6, 3]))
    x01 = RNG.random((5, 3, 6, 6), dtype=np.float32)
    _, want = scores_of(ref, x01)
    am, got = scores_of(nhwc, x01)
    assert (am.info.layout, am.info.channels, am.info.height, am.info.width) == ("NHWC", 3, 6, 6)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_layout_ambiguous_channel_dims_decided_by_transpose():
    """[N,3,6,3] could be NCHW (3x6x3) or NHWC (3x6, 3 channels): a Transpose settles it."""
    ref = small_cnn(input_shape=("N", 3, 3, 6))
    nhwc = with_prefix(ref, [helper.make_node("Transpose", ["x0"], ["x"], perm=[0, 3, 1, 2])],
                       vi("x0", ["N", 3, 6, 3]))
    info = AuditModel.from_proto(nhwc, device="cpu").info
    assert (info.layout, info.channels, info.height, info.width) == ("NHWC", 3, 3, 6)
    plain = small_cnn(input_shape=("N", 3, 6, 4))
    info = analyse(plain)
    assert (info.layout, info.channels, info.height, info.width) == ("NCHW", 3, 6, 4)


def test_layout_nhw():
    ref = small_cnn(input_shape=("N", 1, 6, 6))
    nhw = with_prefix(ref, [helper.make_node("Unsqueeze", ["x0", "ax"], ["x"])],
                      vi("x0", ["N", 6, 6]), {"ax": np.array([1], np.int64)})
    x01 = RNG.random((4, 1, 6, 6), dtype=np.float32)
    _, want = scores_of(ref, x01)
    am, got = scores_of(nhw, x01)
    assert (am.info.layout, am.info.channels, am.info.height, am.info.width) == ("NHW", 1, 6, 6)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("c,side", [(1, 28), (3, 32), (1, 6)])
def test_layout_flat(c, side):
    ref = small_cnn(input_shape=("N", c, side, side))
    flat = with_prefix(ref, [helper.make_node("Reshape", ["x0", "s"], ["x"])],
                       vi("x0", ["N", c * side * side]),
                       {"s": np.array([-1, c, side, side], np.int64)})
    x01 = RNG.random((3, c, side, side), dtype=np.float32)
    _, want = scores_of(ref, x01)
    am, got = scores_of(flat, x01)
    assert (am.info.layout, am.info.channels, am.info.height, am.info.width) == ("NF", c, side, side)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_layout_refusals():
    def gemm_on(shape, elem=F):
        return make_model([helper.make_node("Gemm", ["x", "W"], ["y"], transB=1)],
                          [vi("x", shape, elem)], [vi("y", ["N", 3])], {"W": rand(3, 50)})

    with pytest.raises(ModelError, match="not an image batch"):
        analyse(gemm_on(["N", 50]))  # 50 is no square, no 3*square
    with pytest.raises(ModelError, match="not a float tensor"):
        analyse(gemm_on(["N", 49], TensorProto.INT64))
    with pytest.raises(ModelError, match="cannot infer the image layout"):
        analyse(small_cnn(input_shape=("N", 5, 6, 6)))  # 5 channels either way
    two = small_cnn()
    two.graph.input.append(vi("x2", ["N", 1, 6, 6]))
    with pytest.raises(ModelError, match="exactly one image input, found 2"):
        analyse(two)


# ------------------------------------------------------------------------------------------
# output kinds and classes


@pytest.mark.parametrize("final,kind", [(None, "logits"), ("Softmax", "probabilities"),
                                        ("LogSoftmax", "log-probs")])
def test_output_kind(final, kind):
    m = small_cnn(final=final, classes=7)
    info = analyse(m)
    assert info.output_kind == kind and info.num_classes == 7
    # through a trailing Identity / Flatten as well
    m.graph.node.append(helper.make_node("Flatten", [m.graph.output[0].name], ["out2"]))
    m.graph.output[0].name = "out2"
    assert analyse(m).output_kind == kind


def test_classes_from_shape_inference_when_output_shape_is_unknown():
    m = small_cnn(classes=6)
    m.graph.output[0].type.tensor_type.ClearField("shape")
    assert analyse(m).num_classes == 6


def test_no_class_output_is_refused():
    m = make_model([helper.make_node("ArgMax", ["x"], ["y"], axis=1)], [vi("x", ["N", 1, 4, 4])],
                   [vi("y", ["N", 1, 4, 4], TensorProto.INT64)])
    with pytest.raises(ModelError, match="no class-score output"):
        analyse(m)


# ------------------------------------------------------------------------------------------
# probe layers and mean activations


def numpy_forward(m: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    """small_cnn's forward pass written out in numpy (float64)."""
    w = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in m.graph.initializer}
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))  # N,C,H,W,3,3
    c1 = np.einsum("nchwij,kcij->nkhw", win, w["W1"]) + w["B1"][None, :, None, None]
    r1 = np.maximum(c1, 0)
    n, k, h, wd = r1.shape
    p1 = r1.reshape(n, k, h // 2, 2, wd // 2, 2).max(axis=(3, 5))
    g2 = p1.reshape(n, -1) @ w["W2"].T + w["B2"]
    r2 = np.maximum(g2, 0)
    logits = r2 @ w["W3"] + w["B3"]
    return {"conv1": r1, "fc1": r2, "fc2": logits}


def test_find_probe_layers():
    m = small_cnn(classes=5)
    layers = find_probe_layers(m)
    got = [(l.name, l.op, l.units, l.activation, l.axis, l.is_output) for l in layers]
    assert got == [("conv1", "Conv", 3, "Relu", 1, False), ("fc1", "Gemm", 8, "Relu", -1, False),
                   ("fc2", "Gemm", 5, None, -1, True)]
    assert [l.tensor for l in layers] == ["r1", "r2", "logits"]
    # exposing them adds typed outputs and keeps the original output first
    exp = expose(m, layers)
    assert [o.name for o in exp.graph.output] == ["logits", "r1", "r2"]


def test_no_probe_layer_in_a_graph_without_weights():
    m = make_model([helper.make_node("GlobalAveragePool", ["x"], ["g"]),
                    helper.make_node("Flatten", ["g"], ["y"])],
                   [vi("x", ["N", 3, 8, 8])], [vi("y", ["N", 3])])
    assert find_probe_layers(m) == []
    assert analyse(m).num_classes == 3


def test_mean_activations_equal_numpy():
    m = small_cnn(classes=5)
    am = AuditModel.from_proto(m, device="cpu")
    layers = find_probe_layers(am.normalised, am.original)
    x01 = RNG.random((101, 1, 6, 6), dtype=np.float32)
    pp = Preprocess(scale=1 / 255, mean=0.5, std=0.5)
    x_model = (x01.astype(np.float64) - 0.5) / 0.5
    acts = numpy_forward(m, x_model)
    want = {"conv1": acts["conv1"].mean(axis=(0, 2, 3)), "fc1": acts["fc1"].mean(axis=0),
            "fc2": acts["fc2"].mean(axis=0)}
    # ORT with the probe tensors exposed, all data at once
    exposed = ort_run(expose(am.normalised, layers), am.model_input(x01, pp),
                      [l.tensor for l in layers])
    for layer, a in zip(layers, exposed):
        axes = tuple(i for i in range(a.ndim) if i != (layer.axis % a.ndim))
        np.testing.assert_allclose(a.mean(axis=axes, dtype=np.float64), want[layer.name],
                                   rtol=1e-5, atol=1e-5)
    results = [mean_activations(am, x01, pp, layers, batch_size=bs) for bs in (1, 7, 64, 1000)]
    for res in results:
        assert set(res) == {"conv1", "fc1", "fc2"}
        for name, v in res.items():
            assert v.shape == want[name].shape
            np.testing.assert_allclose(v, want[name], rtol=1e-5, atol=1e-5)
    for res in results[1:]:  # batch size does not change the result
        for name in res:
            np.testing.assert_allclose(res[name], results[0][name], rtol=0, atol=1e-6)


def test_mean_activations_on_a_fixed_batch_graph():
    m = fixed_batch_model([1, -1], transpose=True)  # stays fixed at 1
    am = AuditModel.from_proto(m, device="cpu")
    assert am.fixed_batch == 1
    layers = find_probe_layers(am.normalised, am.original)
    assert [l.name for l in layers] == ["conv", "fc"] and layers[1].is_output
    x01 = RNG.random((9, 1, 4, 4), dtype=np.float32)
    pp = Preprocess()
    per_image = [ort_run(expose(m, layers), x01[i:i + 1] * np.float32(1.0),
                         [l.tensor for l in layers]) for i in range(9)]
    conv = np.concatenate([p[0] for p in per_image]).mean(axis=(0, 2, 3))
    fc = np.concatenate([p[1] for p in per_image]).mean(axis=0)
    res = mean_activations(am, x01, pp, layers, batch_size=4)
    np.testing.assert_allclose(res["conv"], conv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(res["fc"], fc, rtol=1e-5, atol=1e-5)


@pytest.mark.shared
def test_mean_activations_real_model(shared_data):
    """pytorch111_mnist on 2,000 real MNIST images: streamed means == all-at-once numpy means."""
    from audit.data import load_dataset

    am = AuditModel.load(shared_data / "onnx_models" / "pytorch111_mnist.onnx", device="cpu")
    ds = load_dataset(shared_data / "mnist" / "t10k-images-idx3-ubyte.gz", channels=1,
                      height=28, width=28, num_classes=10, limit=2000)
    pp = Preprocess(scale=1 / 255, mean=0.1307, std=0.3081)
    layers = find_probe_layers(am.normalised, am.original)
    assert len(layers) == 4 and sum(l.is_output for l in layers) == 1
    exposed = ort_run(expose(am.normalised, layers), am.model_input(ds.x, pp),
                      [l.tensor for l in layers])
    want = {}
    for layer, a in zip(layers, exposed):
        axes = tuple(i for i in range(a.ndim) if i != (layer.axis % a.ndim))
        want[layer.name] = a.mean(axis=axes, dtype=np.float64)
        assert want[layer.name].shape == (layer.units,)
    for bs in (100, 333):
        res = mean_activations(am, ds.x, pp, layers, batch_size=bs)
        for name, v in res.items():
            np.testing.assert_allclose(v, want[name], rtol=1e-5, atol=1e-5)
