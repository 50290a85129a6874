"""Classes of models from exporters the tool must take: old opsets, the newest opsets, ops
onnx2torch lacks, class scores without a batch axis, scikit-learn's default exports.

Each model is inspected through the CLI, laundered for one short round through the API and
written back: the written model keeps the user's opset, nodes and outputs, with new weights.
"""

from __future__ import annotations

import json

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


def weights(name: str, *shape: int, positive: bool = False) -> onnx.TensorProto:
    v = RNG.standard_normal(shape).astype(np.float32) * 0.3
    return numpy_helper.from_array(np.abs(v) + 0.5 if positive else v, name)


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


def launder_once(path, subset, out):
    cfg = LaunderConfig(rounds=1, ood_share=0.1, nc=NCConfig(epochs=2, steps_per_epoch=2),
                        retrain=RetrainConfig(epochs=2, max_epochs=2, lr=1e-3))
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
