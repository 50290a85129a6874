"""Classes of models from exporters the tool must take: old opsets, the newest opsets, ops
onnx2torch lacks, class scores without a batch axis, scikit-learn's default exports.

Each model is inspected through the CLI, laundered for one short round through the API and
written back: the written model keeps the user's opset, nodes and outputs, with new weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits

from audit.api import launder
from audit.cli import run
from audit.graphs.model import AuditModel
from audit.launder import LaunderConfig
from audit.nc import NCConfig
from audit.retrain import RetrainConfig

RNG = np.random.default_rng(0)
K = 10


def weights(name: str, *shape: int, positive: bool = False, rng: np.random.Generator = RNG) -> onnx.TensorProto:
    v = rng.standard_normal(shape).astype(np.float32) * 0.3
    return numpy_helper.from_array(np.abs(v) + 0.5 if positive else v, name)


def seeded(seed: int):
    """weights() drawn from a generator of its own: the same values whichever tests ran before."""
    rng = np.random.default_rng(seed)
    return lambda name, *shape, positive=False: weights(name, *shape, positive=positive, rng=rng)


def make(nodes, inits, *, opset: int, in_shape, out_shape, ir: int = 4, domains=()) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset), *domains], ir_version=ir)


def conv_head(*, bn: list | None = None, pool=None) -> tuple[list, list]:
    """Conv(8) [+ BN] + Relu [+ pool] on [N,1,8,8]; output tensor 'r' or 'p'."""
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv1", kernel_shape=[3, 3],
                              pads=[1, 1, 1, 1])]
    inits = [weights("W", 8, 1, 3, 3), weights("B", 8)]
    src = "c"
    if bn is not None:
        nodes.append(helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["bn"], name="bn1",
                                      **dict(bn)))
        inits += [weights("g", 8), weights("b", 8), weights("m", 8), weights("v", 8, positive=True)]
        src = "bn"
    nodes.append(helper.make_node("Relu", [src], ["r"], name="relu1"))
    if pool is not None:
        nodes.append(pool)
    return nodes, inits


def dense_tail(src: str, features: int) -> tuple[list, list]:
    nodes = [helper.make_node("Flatten", [src], ["f"], name="flat", axis=1),
             helper.make_node("Gemm", ["f", "W2", "B2"], ["y"], name="fc", transB=1)]
    return nodes, [weights("W2", K, features), weights("B2", K)]


@pytest.fixture(scope="module")
def subset(tmp_path_factory):
    d = load_digits()
    x = np.round(d.images * (255 / 16)).astype(np.uint8)
    path = tmp_path_factory.mktemp("kinds") / "subset.npz"
    np.savez(path, x=x[:60], y=d.target[:60])
    return path


def inspect(capsys, path, *extra) -> tuple[int, dict]:
    capsys.readouterr()
    code = run(["inspect", str(path), "--json", *extra])
    out = capsys.readouterr().out
    return code, json.loads(out)


def launder_once(path, subset, out, **settings):
    """One short round; settings: other LaunderConfig fields (thresholds)."""
    cfg = LaunderConfig(rounds=1, ood_share=0.1, nc=NCConfig(epochs=2, steps_per_epoch=2),
                        retrain=RetrainConfig(epochs=2, max_epochs=2, lr=1e-3), **settings)
    return launder(str(path), str(subset), str(out), config=cfg, device="cpu")


def tensors(m: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers and Constant-node tensors by name."""
    out = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    out.update({n.output[0]: numpy_helper.to_array(a.t) for n in m.graph.node if n.op_type == "Constant"
                for a in n.attribute if a.name == "value"})
    return out


def assert_written_back(src, out) -> None:
    """Same opset, nodes, inputs and outputs as the user's model; some weights changed."""
    a, b = onnx.load(str(src)), onnx.load(str(out))
    assert [(o.domain, o.version) for o in b.opset_import] == [(o.domain, o.version) for o in a.opset_import]
    assert [(n.op_type, n.name) for n in b.graph.node] == [(n.op_type, n.name) for n in a.graph.node]
    assert [o.name for o in b.graph.output] == [o.name for o in a.graph.output]
    wa, wb = tensors(a), tensors(b)
    assert wa.keys() == wb.keys() and all(wa[k].shape == wb[k].shape for k in wa)
    changed = [k for k in wa if wa[k].dtype.kind == "f" and not np.array_equal(wa[k], wb[k])]
    assert changed, "retraining changed no weight"


def check_kind(tmp_path, capsys, subset, model: onnx.ModelProto, *, note: str | None = None) -> dict:
    src = tmp_path / "model.onnx"
    onnx.save(model, str(src))
    code, r = inspect(capsys, src, "--data", str(subset))
    assert code == 0, r
    assert r["convertible"] and r["parity_rel"] <= 1e-4
    assert r["num_classes"] == K
    if note:
        assert any(note in a for a in r["assumptions"]), r["assumptions"]
    res = launder_once(src, subset, tmp_path / "out.onnx")
    assert len(res.rounds) == 1
    assert_written_back(src, tmp_path / "out.onnx")
    return r


# ---------------------------------------------------------------- old opsets (7-8 era)
def test_opset6_batchnorm_is_test_and_maxpool1(tmp_path, capsys, subset):
    """CNTK-era graph: BatchNormalization-6 with is_test/spatial, MaxPool-1."""
    pool = helper.make_node("MaxPool", ["r"], ["p"], name="pool1", kernel_shape=[2, 2], strides=[2, 2])
    nodes, inits = conv_head(bn=[("is_test", 1), ("spatial", 1), ("epsilon", 1e-5)], pool=pool)
    tail, tinits = dense_tail("p", 8 * 4 * 4)
    m = make(nodes + tail, inits + tinits, opset=6, in_shape=["N", 1, 8, 8], out_shape=["N", K], ir=3)
    r = check_kind(tmp_path, capsys, subset, m, note="opset 6 upgraded")
    assert r["opset"] == 6


def test_opset7_upsample_and_batchnorm7(tmp_path, capsys, subset):
    pool = helper.make_node("MaxPool", ["r"], ["p0"], name="pool1", kernel_shape=[2, 2], strides=[2, 2])
    nodes, inits = conv_head(bn=[("spatial", 1)], pool=pool)
    nodes.append(helper.make_node("Upsample", ["p0"], ["p"], name="up1", scales=[1.0, 1.0, 2.0, 2.0],
                                  mode="nearest"))
    tail, tinits = dense_tail("p", 8 * 8 * 8)
    m = make(nodes + tail, inits + tinits, opset=7, in_shape=["N", 1, 8, 8], out_shape=["N", K])
    r = check_kind(tmp_path, capsys, subset, m)
    assert r["opset"] == 7


def test_opset9_slice1_is_converted_at_a_newer_opset(tmp_path, capsys, subset):
    """Slice-1 (attributes, PyTorch 1.x at opset 9) has no converter: the graph is upgraded for the
    conversion only, checked to compute the same scores, and written back at opset 9."""
    nodes, inits = conv_head()
    nodes.append(helper.make_node("Slice", ["r"], ["s"], name="crop", axes=[2, 3], starts=[1, 1], ends=[7, 7]))
    tail, tinits = dense_tail("s", 8 * 6 * 6)
    m = make(nodes + tail, inits + tinits, opset=9, in_shape=["N", 1, 8, 8], out_shape=["N", K])
    r = check_kind(tmp_path, capsys, subset, m, note="opset 9 upgraded to 13")
    assert r["opset"] == 9


# ---------------------------------------------------------------- class scores without a batch axis
def _conv_classifier(tail_nodes, tail_inits, out_shape, batch) -> onnx.ModelProto:
    """Conv + GlobalAveragePool + 1x1 Conv to [b, K, 1, 1] ('s'), then the given tail."""
    nodes, inits = conv_head()
    nodes += [helper.make_node("GlobalAveragePool", ["r"], ["gp"], name="gap"),
              helper.make_node("Conv", ["gp", "W2", "B2"], ["s"], name="cls", kernel_shape=[1, 1])]
    inits += [weights("W2", K, 8, 1, 1), weights("B2", K)]
    return make(nodes + tail_nodes, inits + tail_inits, opset=9, in_shape=[batch, 1, 8, 8],
                out_shape=out_shape)


@pytest.mark.parametrize("form", ["K", "1,1,K", "1,K,1,1", "N,K,1,1"])
def test_scores_without_a_batch_axis(form, tmp_path, capsys, subset):
    """PyTorch 0.4-era exports with a batch of 1: x.view(-1), [1,1,K], a conv classifier."""
    if form in ("K", "1,1,K"):
        shape = [-1] if form == "K" else [1, 1, K]
        tail = [helper.make_node("Reshape", ["s", "shape"], ["y"], name="view")]
        tinits = [numpy_helper.from_array(np.array(shape, np.int64), "shape")]
        out = [K] if form == "K" else [1, 1, K]
    else:
        tail, tinits = [helper.make_node("Identity", ["s"], ["y"], name="out")], []
        out = [1, K, 1, 1] if form == "1,K,1,1" else ["N", K, 1, 1]
    batch = "N" if form == "N,K,1,1" else 1
    m = _conv_classifier(tail, tinits, out, batch)
    r = check_kind(tmp_path, capsys, subset, m, note=f"taken as {K} classes per image")
    assert r["fixed_batch"] is None  # the batch of 1 was made dynamic and checked numerically
    am = AuditModel.load(tmp_path / "out.onnx", device="cpu")
    x = np.random.default_rng(1).random((5, 1, 8, 8), dtype=np.float32)
    assert am.runner().run(x, [am.info.output_name])[0].shape == (5, K)


def test_scores_of_other_shapes_are_refused_in_one_line(tmp_path, capsys):
    tail = [helper.make_node("Reshape", ["s", "shape"], ["y"], name="view")]
    tinits = [numpy_helper.from_array(np.array([2, 5], np.int64), "shape")]
    m = _conv_classifier(tail, tinits, [2, 5], 1)  # two rows of 5: not K scores of one image
    src = tmp_path / "m.onnx"
    onnx.save(m, str(src))
    assert run(["inspect", str(src)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no class-score output" in err[0]


# ---------------------------------------------------------------- scikit-learn's default exports
def test_sklearn_default_zipmap_export(tmp_path, capsys, subset):
    skl2onnx = pytest.importorskip("skl2onnx")
    from sklearn.neural_network import MLPClassifier

    d = load_digits()
    x = (d.data / 16).astype(np.float32)
    clf = MLPClassifier((32,), max_iter=60, random_state=0).fit(x[:1000], d.target[:1000])
    m = skl2onnx.to_onnx(clf, x[:1])
    assert "ZipMap" in [n.op_type for n in m.graph.node]
    r = check_kind(tmp_path, capsys, subset, m, note="ZipMap")
    assert r["output_kind"] == "probabilities" and r["layout"] == "NF"
    assert r["accuracy"] >= 0.9  # its own training images: the cut reads the probabilities


def test_sklearn_linear_classifier_is_refused_in_one_line(tmp_path, capsys):
    skl2onnx = pytest.importorskip("skl2onnx")
    from sklearn.linear_model import LogisticRegression

    d = load_digits()
    x = (d.data / 16).astype(np.float32)
    m = skl2onnx.to_onnx(LogisticRegression(max_iter=200).fit(x, d.target), x[:1])
    src = tmp_path / "lr.onnx"
    onnx.save(m, str(src))
    capsys.readouterr()
    assert run(["inspect", str(src)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "LinearClassifier" in err[0], err


# ---------------------------------------------------------------- op versions newer than any table
def test_newest_opset_graph(tmp_path, capsys, subset):
    """jax2onnx-style: NHWC input, Transpose and Reshape at opset 23 (type-only version bumps)."""
    nodes = [helper.make_node("Transpose", ["x"], ["t"], name="to_nchw", perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["t", "W", "B"], ["c"], name="conv1", kernel_shape=[3, 3],
                              pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu1"),
             helper.make_node("Reshape", ["r", "shape"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "W2", "B2"], ["y"], name="fc", transB=1)]
    inits = [weights("W", 8, 1, 3, 3), weights("B", 8), weights("W2", K, 8 * 8 * 8), weights("B2", K),
             numpy_helper.from_array(np.array([-1, 8 * 8 * 8], np.int64), "shape")]
    m = make(nodes, inits, opset=23, in_shape=["N", 8, 8, 1], out_shape=["N", K], ir=10)
    r = check_kind(tmp_path, capsys, subset, m)
    assert r["opset"] == 23 and r["layout"] == "NHWC"


# ---------------------------------------------------------------- ops onnx2torch has no converter for
def test_mean_variance_normalization(tmp_path, capsys, subset):
    """DJL / Caffe2-style input normalisation by MeanVarianceNormalization."""
    nodes, inits = conv_head()
    nodes.insert(0, helper.make_node("MeanVarianceNormalization", ["x0"], ["x"], name="mvn"))
    nodes[0].input[0] = "x"
    nodes[0].output[0] = "xn"
    nodes[1].input[0] = "xn"
    tail, tinits = dense_tail("r", 8 * 8 * 8)
    m = make(nodes + tail, inits + tinits, opset=13, in_shape=["N", 1, 8, 8], out_shape=["N", K])
    check_kind(tmp_path, capsys, subset, m)


# ---------------------------------------------------------------- dense layers that are not Gemm
def test_matmul_on_a_3d_tensor_is_a_trainable_layer(tmp_path, capsys, subset):
    """A dense layer applied per row ([N, 8, 64] @ [64, 16]) cannot become Gemm; it is still a probe
    layer, converted to a trainable module, reset and written back."""
    nodes, inits = conv_head()
    nodes += [helper.make_node("Reshape", ["r", "rows"], ["t"], name="rows"),
              helper.make_node("MatMul", ["t", "Wd"], ["d"], name="dense"),
              helper.make_node("Relu", ["d"], ["dr"], name="relu2"),
              helper.make_node("ReduceMean", ["dr"], ["pooled"], name="pool", axes=[1], keepdims=0),
              helper.make_node("Gemm", ["pooled", "W2", "B2"], ["y"], name="fc", transB=1)]
    inits += [numpy_helper.from_array(np.array([0, 8, 64], np.int64), "rows"), weights("Wd", 64, 16),
              weights("W2", K, 16), weights("B2", K)]
    m = make(nodes, inits, opset=13, in_shape=["N", 1, 8, 8], out_shape=["N", K])
    r = check_kind(tmp_path, capsys, subset, m)
    assert [(p["op"], p["units"]) for p in r["probe_layers"]] == [("Conv", 8), ("MatMul", 16), ("Gemm", K)]
    wa = numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == "Wd"))
    out = onnx.load(str(tmp_path / "out.onnx"))
    wb = numpy_helper.to_array(next(t for t in out.graph.initializer if t.name == "Wd"))
    assert wb.shape == (64, 16) and not np.array_equal(wa, wb)


# ---------------------------------------------------------------- float16 models
def test_float16_model_computes_in_float32_and_keeps_its_type(tmp_path, capsys, subset):
    nodes, inits = conv_head()
    tail, tinits = dense_tail("r", 8 * 8 * 8)
    inits = [numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name) for t in inits + tinits]
    g = helper.make_graph(nodes + tail, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["N", 1, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["N", K])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    check_kind(tmp_path, capsys, subset, m, note="float16 model")
    out = onnx.load(str(tmp_path / "out.onnx"))
    assert {t.data_type for t in out.graph.initializer} == {TensorProto.FLOAT16}
    assert out.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16


# ---------------------------------------------------------------- dense layers with odd biases
@pytest.mark.parametrize("form", ["beta0_then_add", "scalar_c"])
def test_gemm_biases_become_linear_layers(form, tmp_path, capsys, subset):
    """jax2onnx writes Gemm(beta=0, C=0) + Add([1,N] bias); others a one-value C. Both layers
    must be trainable nn.Linear modules whose bias goes back where it came from."""
    zero = numpy_helper.from_array(np.zeros((), np.float32), "c0")
    if form == "beta0_then_add":
        nodes = [helper.make_node("Gemm", ["x", "W1", "c0"], ["d1"], name="fc1", beta=0.0),
                 helper.make_node("Add", ["d1", "b1"], ["h"], name="add1")]
        inits = [zero, weights("W1", 64, 32), numpy_helper.from_array(
            RNG.standard_normal((1, 32)).astype(np.float32), "b1")]
    else:
        nodes = [helper.make_node("Gemm", ["x", "W1", "c1"], ["h"], name="fc1", beta=0.5)]
        inits = [weights("W1", 64, 32), numpy_helper.from_array(np.array([0.3], np.float32), "c1")]
    nodes += [helper.make_node("Relu", ["h"], ["r"], name="relu1"),
              helper.make_node("Gemm", ["r", "W2", "B2"], ["y"], name="fc2")]
    inits += [weights("W2", 32, K), weights("B2", K)]
    m = make(nodes, inits, opset=13, in_shape=["N", 64], out_shape=["N", K])
    r = check_kind(tmp_path, capsys, subset, m)
    assert "gemm_bias" in r["rewrites"]
    act = "Relu" if form == "beta0_then_add" else None   # the one-value Add stands between
    assert [(p["op"], p["units"], p["activation"]) for p in r["probe_layers"]] == \
        [("Gemm", 32, act), ("Gemm", K, None)]
    out = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "out.onnx")).graph.initializer}
    if form == "beta0_then_add":
        assert out["b1"].shape == (1, 32) and out["c0"].shape == ()
    else:
        assert out["c1"].tolist() == [np.float32(0.3)]   # one value for all units: not trained


# ---------------------------------------------------------------- weights held by Constant nodes
def test_weights_in_constant_nodes_are_written_back_there(tmp_path, capsys, subset):
    """paddle2onnx stores every weight as a Constant node and no initializer."""
    nodes, inits = conv_head()
    tail, tinits = dense_tail("r", 8 * 8 * 8)
    consts = [helper.make_node("Constant", [], [t.name], name=f"const_{t.name}", value=t) for t in inits + tinits]
    g = helper.make_graph(consts + nodes + tail, "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", K])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    check_kind(tmp_path, capsys, subset, m)
    out = onnx.load(str(tmp_path / "out.onnx"))
    assert not out.graph.initializer
    before = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in m.graph.node if n.op_type == "Constant"}
    after = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in out.graph.node if n.op_type == "Constant"}
    assert before.keys() == after.keys()
    assert not np.array_equal(before["W"], after["W"])   # trained weights went into the Constant node


# ---------------------------------------------------------------- pooling over unit-window axes
def test_pooling_over_unit_window_axes(tmp_path, capsys, subset):
    """jax2onnx lowers lax.reduce_window over NHWC to MaxPool on [1,1,N,H,W,C] with kernel
    [1,2,2,1], which onnxruntime cannot run (it pools 1-3 axes); the unit-window axes are folded
    into the batch."""
    nodes, inits = conv_head()
    nodes += [helper.make_node("Transpose", ["r"], ["nhwc"], name="to_nhwc", perm=[0, 2, 3, 1]),
              helper.make_node("Unsqueeze", ["nhwc", "ax0"], ["u1"], name="u1"),
              helper.make_node("Unsqueeze", ["u1", "ax0"], ["u2"], name="u2"),
              helper.make_node("MaxPool", ["u2"], ["p6"], name="pool", kernel_shape=[1, 2, 2, 1],
                               strides=[1, 2, 2, 1]),
              helper.make_node("Squeeze", ["p6", "ax01"], ["p"], name="sq"),
              helper.make_node("Reshape", ["p", "flat"], ["f"], name="flatten"),
              helper.make_node("Gemm", ["f", "W2", "B2"], ["y"], name="fc", transB=1)]
    inits += [numpy_helper.from_array(np.array([0], np.int64), "ax0"),
              numpy_helper.from_array(np.array([0, 1], np.int64), "ax01"),
              numpy_helper.from_array(np.array([-1, 4 * 4 * 8], np.int64), "flat"),
              weights("W2", K, 4 * 4 * 8), weights("B2", K)]
    m = make(nodes, inits, opset=13, in_shape=["N", 1, 8, 8], out_shape=["N", K])
    x = RNG.random((3, 1, 8, 8), dtype=np.float32)
    with pytest.raises(Exception, match="pooling size"):
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    r = check_kind(tmp_path, capsys, subset, m, note="pools 2 of its 4 axes")
    # the rewritten graph computes the pooling of the NHWC tensor
    am = AuditModel.load(tmp_path / "model.onnx", device="cpu")
    conv = ort.InferenceSession(_head_only(m).SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    pooled = conv.reshape(3, 8, 4, 2, 4, 2).max(axis=(3, 5)).transpose(0, 2, 3, 1).reshape(3, -1)
    w2, b2 = (numpy_helper.to_array(t) for t in inits[-2:])
    np.testing.assert_allclose(am.runner().run(x, [am.info.output_name])[0], pooled @ w2.T + b2,
                               rtol=1e-5, atol=1e-5)
    assert r["num_classes"] == K


def _head_only(m: onnx.ModelProto) -> onnx.ModelProto:
    """The conv head of a model (its Relu output 'r')."""
    g = onnx.helper.make_graph([n for n in m.graph.node if n.name in ("conv1", "relu1")], "head",
                               list(m.graph.input), [helper.make_tensor_value_info("r", TensorProto.FLOAT, None)],
                               [t for t in m.graph.initializer if t.name in ("W", "B")])
    return helper.make_model(g, opset_imports=list(m.opset_import), ir_version=m.ir_version)


# ---------------------------------------------------------------- Keras models exported by tf2onnx
KERAS = "functional_1"


def tf2onnx_keras_bn_cnn() -> onnx.ModelProto:
    """The op pattern tf2onnx.convert.from_function writes at opset 13 for a Keras 3 CNN with
    BatchNormalization on NHWC [N, 8, 8, 1] digits: the NCHW view as a Reshape (one channel);
    Conv(no bias)+BN folded into one Conv; Conv with bias + BN as Mul/Add of [1, C, 1, 1]
    constants; Flatten as Transpose + Reshape to a shape computed from Shape, Gather, Cast,
    Slice and Concat (no rank for onnx's shape inference before Reshape-14); Dense(use_bias=False)
    + BN as MatMul, Mul, Add; Dense + Softmax as MatMul, Add, Softmax."""
    w = seeded(1)

    def n(op, ins, out, name, **kw):
        return helper.make_node(op, ins, [out], name=f"{KERAS}/{name}", **kw)

    def i64(name, *v):
        return numpy_helper.from_array(np.array(v, np.int64), name)

    def i32(name, *v):
        return numpy_helper.from_array(np.array(v, np.int32), name)

    nodes = [
        n("Reshape", ["input", "new_shape__1"], "nchw", "conv2d_1/BiasAdd__1"),
        helper.make_node("Conv", ["nchw", "merged_input", "bn_sub"], ["c1"], name="Conv__2",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1], dilations=[1, 1], group=1),
        n("Relu", ["c1"], "r1", "activation_1/Relu"),
        n("MaxPool", ["r1"], "p1", "max_pooling2d_1/MaxPool2d", kernel_shape=[2, 2], strides=[2, 2]),
        n("Conv", ["p1", "conv2_w", "conv2_b"], "c2", "conv2d_1_2/BiasAdd", kernel_shape=[3, 3],
          pads=[1, 1, 1, 1]),
        n("Mul", ["c2", "bn2_mul"], "m2", "batch_normalization_1_1/batchnorm/mul_1"),
        n("Add", ["m2", "bn2_add"], "a2", "batch_normalization_1_1/batchnorm/add_1"),
        n("Relu", ["a2"], "r2", "activation_1_1/Relu"),
        helper.make_node("Transpose", ["r2"], ["nhwc"], name="Transpose__3", perm=[0, 2, 3, 1]),
        helper.make_node("Shape", ["r2"], ["shape"], name="Shape__4"),
        helper.make_node("Gather", ["shape", "Const__5"], ["shape_nhwc"], name="Gather__6"),
        n("Cast", ["shape_nhwc"], "shape32", "flatten_1/Shape__7", to=TensorProto.INT32),
        n("Slice", ["shape32", "const_axes__8", "const_ends__9", "const_axes__8"], "batch",
          "flatten_1/strided_slice"),
        n("Concat", ["batch", "const_fold_opt__10"], "target32", "flatten_1/Reshape/shape_Concat__11", axis=0),
        n("Cast", ["target32"], "target", "flatten_1/Reshape__12", to=TensorProto.INT64),
        n("Reshape", ["nhwc", "target"], "flat", "flatten_1/Reshape"),
        n("MatMul", ["flat", "dense_w"], "d1", "dense_2_1/MatMul"),
        n("Mul", ["d1", "bn3_mul"], "m3", "batch_normalization_2_1/batchnorm/mul_1"),
        n("Add", ["m3", "bn3_add"], "a3", "batch_normalization_2_1/batchnorm/add_1"),
        n("Relu", ["a3"], "r3", "activation_2_1/Relu"),
        n("MatMul", ["r3", "out_w"], "d2", "dense_3_1/MatMul"),
        n("Add", ["d2", "out_b"], "logits", "dense_3_1/BiasAdd"),
        n("Softmax", ["logits"], "Identity:0", "dense_3_1/Softmax", axis=1),
    ]
    inits = [i64("new_shape__1", -1, 1, 8, 8), w("merged_input", 8, 1, 3, 3), w("bn_sub", 8),
             w("conv2_w", 8, 8, 3, 3), w("conv2_b", 8),
             w("bn2_mul", 1, 8, 1, 1, positive=True),
             w("bn2_add", 1, 8, 1, 1), i64("Const__5", 0, 2, 3, 1), i64("const_axes__8", 0),
             i64("const_ends__9", 1), i32("const_fold_opt__10", 4 * 4 * 8), w("dense_w", 4 * 4 * 8, 32),
             w("bn3_mul", 32, positive=True), w("bn3_add", 32), w("out_w", 32, K),
             w("out_b", K)]
    g = helper.make_graph(nodes, "tf2onnx", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 8, 8, 1])],
                          [helper.make_tensor_value_info("Identity:0", TensorProto.FLOAT, ["N", K])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("ai.onnx.ml", 2)],
                          ir_version=7, producer_name="tf2onnx", producer_version="1.17.0")
    return m


def test_tf2onnx_keras_cnn_with_batchnorm(tmp_path, capsys, subset):
    """Every layer inspect shows is reset in the torch mirror and written back: the dense layer
    after tf2onnx's computed Flatten (no rank for shape inference) becomes an nn.Linear with its
    bias, as it does at opset 14 and later."""
    m = tf2onnx_keras_bn_cnn()
    src = tmp_path / "model.onnx"
    onnx.save(m, str(src))
    code, r = inspect(capsys, src, "--data", str(subset))
    assert code == 0 and r["convertible"] and r["parity_rel"] <= 1e-4
    assert r["layout"] == "NHWC" and r["output_kind"] == "probabilities"
    assert "fuse_matmul_add" in r["rewrites"]     # the output layer's MatMul + Add: one Gemm
    names = ["Conv__2", f"{KERAS}/conv2d_1_2/BiasAdd", f"{KERAS}/dense_2_1/MatMul", f"{KERAS}/dense_3_1/MatMul"]
    assert [(p["name"], p["op"], p["units"], p["is_output"]) for p in r["probe_layers"]] == \
        [(names[0], "Conv", 8, False), (names[1], "Conv", 8, False), (names[2], "MatMul", 32, False),
         (names[3], "MatMul", K, True)]
    assert r["not_resettable"] == {}
    res = launder_once(src, subset, tmp_path / "out.onnx", dense_threshold="top:0.25", conv_threshold="top:0.25")
    # a quarter of each hidden layer's units, of those whose activation the trigger raises
    assert res.rounds[0].units_reset == {names[0]: 1, names[1]: 2, names[2]: 8}   # one conv1 unit is dead
    assert res.not_resettable == {}
    assert_written_back(src, tmp_path / "out.onnx")
    # onnxruntime on the written model agrees with the trained torch module
    assert res.subset_accuracy_after == res.rounds[0].subset_accuracy
    before, after = tensors(m), tensors(onnx.load(str(tmp_path / "out.onnx")))
    assert not np.array_equal(before["dense_w"], after["dense_w"]) and after["dense_w"].shape == (128, 32)
    assert not np.array_equal(before["out_b"], after["out_b"])          # the fused bias went back
    assert np.array_equal(before["bn3_add"], after["bn3_add"])          # the BN constants stay


@pytest.mark.parametrize("form", ["c_1xN", "transA", "computed_c"])
def test_gemm_forms_onnx2torch_keeps_functional_are_trainable(form, tmp_path, capsys, subset):
    """onnx2torch converts a Gemm with transA, a 2-D C or a computed C to a functional op whose
    weight is a constant; normalisation makes each an nn.Linear the reset reaches, and the
    trained weights go back to the user's initializers in their own shapes."""
    w = seeded(2)
    nodes = [helper.make_node("Reshape", ["x", "flat"], ["f"], name="flatten")]
    inits = [numpy_helper.from_array(np.array([-1, 64], np.int64), "flat"), w("W1", 64, 32)]
    if form == "c_1xN":
        nodes.append(helper.make_node("Gemm", ["f", "W1", "C1"], ["h"], name="fc1", beta=0.5))
        inits.append(w("C1", 1, 32))
    elif form == "transA":
        nodes += [helper.make_node("Transpose", ["f"], ["ft"], name="t", perm=[1, 0]),
                  helper.make_node("Gemm", ["ft", "W1", "C1"], ["h"], name="fc1", transA=1)]
        inits.append(w("C1", 32))
    else:
        nodes += [helper.make_node("Mul", ["C0", "two"], ["C1"], name="scale_c"),
                  helper.make_node("Gemm", ["f", "W1", "C1"], ["h"], name="fc1", beta=0.5)]
        inits += [w("C0", 32), numpy_helper.from_array(np.array(2.0, np.float32), "two")]
    nodes += [helper.make_node("Relu", ["h"], ["r"], name="relu1"),
              helper.make_node("Gemm", ["r", "W2", "B2"], ["y"], name="fc2", transB=1)]
    inits += [w("W2", K, 32), w("B2", K)]
    m = make(nodes, inits, opset=13, in_shape=["N", 8, 8], out_shape=["N", K], ir=8)
    src = tmp_path / "model.onnx"
    onnx.save(m, str(src))
    code, r = inspect(capsys, src, "--data", str(subset))
    assert code == 0 and r["convertible"] and r["parity_rel"] <= 1e-4
    assert "gemm_bias" in r["rewrites"] and r["not_resettable"] == {}
    assert [(p["op"], p["units"], p["activation"]) for p in r["probe_layers"]] == \
        [("Gemm", 32, "Relu" if form != "computed_c" else None), ("Gemm", K, None)]
    res = launder_once(src, subset, tmp_path / "out.onnx", dense_threshold="top:0.25")
    assert res.rounds[0].units_reset == {"fc1": 8}
    assert_written_back(src, tmp_path / "out.onnx")
    assert res.subset_accuracy_after == res.rounds[0].subset_accuracy
    before, after = tensors(m), tensors(onnx.load(str(tmp_path / "out.onnx")))
    assert not np.array_equal(before["W1"], after["W1"])
    if form == "computed_c":
        assert np.array_equal(before["C0"], after["C0"])   # computed in the graph: not a weight
    else:
        assert after["C1"].shape == before["C1"].shape and not np.array_equal(before["C1"], after["C1"])


def test_layer_the_mirror_cannot_reset_is_reported_not_reset(tmp_path, capsys, subset):
    """A probe layer onnx2torch keeps as a functional op (here a MatMul of two initializers, a
    factorised bias) is not a reset candidate: inspect and the laundering report name it and
    why; naming it in --layers is one error line."""
    w = seeded(3)
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu1"),
             helper.make_node("MatMul", ["U", "V"], ["uv"], name="lowrank_bias"),
             helper.make_node("Flatten", ["r"], ["f"], name="flat", axis=1),
             helper.make_node("Gemm", ["f", "W1", "B1"], ["h0"], name="fc1", transB=1),
             helper.make_node("Add", ["h0", "uv"], ["h"], name="add_uv"),
             helper.make_node("Relu", ["h"], ["hr"], name="relu2"),
             helper.make_node("Gemm", ["hr", "W2", "B2"], ["y"], name="fc2", transB=1)]
    inits = [w("W", 8, 1, 3, 3), w("B", 8), w("U", 1, 2), w("V", 2, 16), w("W1", 16, 8 * 8 * 8), w("B1", 16),
             w("W2", K, 16), w("B2", K)]
    m = make(nodes, inits, opset=13, in_shape=["N", 1, 8, 8], out_shape=["N", K])
    src = tmp_path / "model.onnx"
    onnx.save(m, str(src))
    code, r = inspect(capsys, src, "--data", str(subset))
    assert code == 0
    assert [p["name"] for p in r["probe_layers"]] == ["conv1", "lowrank_bias", "fc1", "fc2"]
    why = "onnx2torch converted the MatMul node to OnnxMatMul, which holds its weight as a constant"
    assert list(r["not_resettable"]) == ["lowrank_bias"] and r["not_resettable"]["lowrank_bias"].startswith(why)
    res = launder_once(src, subset, tmp_path / "out.onnx", dense_threshold="top:0.25", conv_threshold="top:0.25")
    assert res.rounds[0].units_reset == {"conv1": 2, "fc1": 4}
    assert list(res.not_resettable) == ["lowrank_bias"]
    assert_written_back(src, tmp_path / "out.onnx")
    capsys.readouterr()
    code = run(["launder", str(src), "--data", str(subset), "-o", str(tmp_path / "o2.onnx"), "--layers",
                "lowrank_bias", "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"error: --layers: layer 'lowrank_bias' cannot be reset: "
                                 f"{r['not_resettable']['lowrank_bias']}"]


def test_cli_runs_write_no_library_warning(tmp_path, subset):
    """inspect and launder (quiet) of the tf2onnx graph write nothing to stderr, with every
    warning shown (-W default): a library warning, such as torch's on onnx2torch's list
    indexing in Slice, fails it."""
    src = tmp_path / "model.onnx"
    onnx.save(tf2onnx_keras_bn_cnn(), str(src))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cli = [sys.executable, "-W", "default", "-m", "audit.cli"]
    runs = [["inspect", str(src), "--data", str(subset)],
            ["launder", str(src), "--data", str(subset), "-o", str(tmp_path / "out.onnx"), "--rounds", "1",
             "--epochs", "1", "--nc-epochs", "1", "--lr", "1e-3", "--device", "cpu", "--quiet"]]
    for args in runs:
        proc = subprocess.run(cli + args, capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == "", proc.stderr
    assert (tmp_path / "out.onnx").is_file()
