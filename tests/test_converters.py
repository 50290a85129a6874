"""ONNX -> torch conversion, parity, and write-back into the user's graph.

Two families of models: the third-party ones in ../shared/data (skipped when absent), and
models these tests train and export themselves (TorchScript exporter at opsets 13 and 17 with
BatchNormalization kept, the dynamo exporter, and scikit-learn's MLPClassifier via skl2onnx),
each inspected through the CLI on its own held-out data.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from audit.cli import run
from audit.converters.to_torch import logits_graph, to_torch, torch_logits
from audit.converters.write_back import updated_initializers, write_back
from audit.data import Preprocess, load_dataset
from audit.graphs.io import had_external_data, load_model, save_model
from audit.graphs.model import AuditModel
from audit.models_zoo.train import torch_threads

PARITY = 1e-4


# ------------------------------------------------------------------------------------------
# helpers


def ort_outputs(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    """All graph outputs for x under onnxruntime (image by image for a fixed batch of 1)."""
    m = model
    if m.ir_version > 10:
        m = onnx.ModelProto()
        m.CopyFrom(model)
        m.ir_version = 10
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    inp = s.get_inputs()[0]
    if inp.shape and inp.shape[0] == 1:
        parts = [s.run(None, {inp.name: x[i:i + 1]}) for i in range(len(x))]
        return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]
    return s.run(None, {inp.name: x})


def max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    assert len(a) == len(b)
    out = 0.0
    for u, v in zip(a, b):
        assert u.shape == v.shape and u.dtype == v.dtype
        if u.size:
            out = max(out, float(np.max(np.abs(u.astype(np.float64) - v.astype(np.float64)))))
    return out


def assert_same_structure(written: onnx.ModelProto, original: onnx.ModelProto) -> None:
    """write_back keeps everything but initializer values."""
    g, o = written.graph, original.graph
    assert [n.name for n in g.node] == [n.name for n in o.node]
    assert [n.op_type for n in g.node] == [n.op_type for n in o.node]
    assert [i.name for i in g.input] == [i.name for i in o.input]
    assert [x.name for x in g.output] == [x.name for x in o.output]
    assert g.name == o.name
    assert written.ir_version == original.ir_version
    assert [(x.domain, x.version) for x in written.opset_import] == \
        [(x.domain, x.version) for x in original.opset_import]
    assert written.producer_name == original.producer_name
    assert [(t.name, tuple(t.dims), t.data_type) for t in g.initializer] == \
        [(t.name, tuple(t.dims), t.data_type) for t in o.initializer]


def round_trip(am: AuditModel, x_model: np.ndarray) -> tuple[float, onnx.ModelProto]:
    """to_torch -> write_back with unchanged weights; max |ORT(written) - ORT(original)|."""
    before = am.original.SerializeToString()
    tm = to_torch(am, x_model)
    assert tm.parity_rel <= PARITY
    written = write_back(tm)
    assert am.original.SerializeToString() == before, "conversion touched the user's model"
    assert_same_structure(written, am.original)
    return max_diff(ort_outputs(written, x_model), ort_outputs(am.original, x_model)), written


def perturb_and_write_back(am: AuditModel, x_model: np.ndarray) -> None:
    """Change every trainable tensor in torch; the written ONNX must follow torch exactly."""
    tm = to_torch(am, x_model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for b in tm.bindings:
            t = getattr(tm.module.get_submodule(b.module), b.attr)
            noise = torch.randn(t.shape, generator=g, dtype=t.dtype)
            t.add_(noise * (0.05 * float(t.float().std()) + 1e-3))
            if b.attr == "running_var":
                t.abs_()
    changed = set(updated_initializers(tm))
    written = write_back(tm, x_model)  # check_written: ORT(written) == torch within PARITY
    assert_same_structure(written, am.original)
    new_am = AuditModel.from_proto(written, device="cpu")
    ort_logits = ort_outputs(logits_graph(new_am), x_model)[0]
    t_logits = torch_logits(tm, x_model)
    scale = max(1.0, float(np.abs(t_logits).max()))
    assert np.abs(ort_logits - t_logits).max() / scale <= PARITY
    old_logits = ort_outputs(logits_graph(am), x_model)[0]
    assert np.abs(ort_logits - old_logits).max() / scale > 1e-3, "write-back changed nothing"
    # initializers that no torch tensor maps to are byte-identical
    orig = {t.name: t for t in am.original.graph.initializer}
    for t in written.graph.initializer:
        if t.name not in changed:
            np.testing.assert_array_equal(numpy_helper.to_array(t),
                                          numpy_helper.to_array(orig[t.name]))
        else:
            assert not np.array_equal(numpy_helper.to_array(t),
                                      numpy_helper.to_array(orig[t.name]))


def inspect_json(capsys, model: Path, data: Path, *opts: str) -> dict:
    capsys.readouterr()
    rc = run(["inspect", str(model), "--data", str(data), "--json", "--device", "cpu", *opts])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "Traceback" not in err
    return json.loads(out)


def check_report(r: dict, *, accuracy: float, n: int) -> None:
    assert r["n"] == n
    assert r["accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert r["convertible"] is True and r["conversion_error"] is None
    assert r["parity_max_abs"] <= PARITY
    assert r["parity_rel"] <= PARITY
    layers = r["probe_layers"]
    assert layers and sum(layer["is_output"] for layer in layers) == 1
    out = next(layer for layer in layers if layer["is_output"])
    assert out["units"] == r["num_classes"] == 10


# ------------------------------------------------------------------------------------------
# third-party models from ../shared/data


MANIFEST_FILES = ["onnx_models/cntk_mnist8.onnx", "onnx_models/tf2onnx_keras_mnist.onnx",
                  "onnx_models/pytorch111_mnist.onnx",
                  "onnx_models/pytorch291_external_data/mnist.onnx",
                  "onnx_models/keras2onnx_mlp_mnist.onnx", "onnx_models/pytorch17_cifar10.onnx",
                  "backdoored/badnets_mnist.onnx"]


@pytest.fixture(scope="module")
def real_batches(shared_data, manifest):
    """256 real test images per data set (canonical [0,1] NCHW), loaded once."""
    cache = {}

    def get(entry: dict, am: AuditModel) -> np.ndarray:
        key = (entry["dataset"], am.info.channels, am.info.height, am.info.width)
        if key not in cache:
            ds = manifest["datasets"][entry["dataset"]]
            path = shared_data / ds["dir"] / ds["test"][0] if "dir" in ds else shared_data / ds["file"]
            cache[key] = load_dataset(path, channels=key[1], height=key[2], width=key[3],
                                      limit=256).x
        return cache[key]

    return get


def manifest_entry(manifest: dict, file: str) -> dict:
    return next(m for m in manifest["models"] if m["file"] == file)


@pytest.mark.shared
def test_manifest_lists_the_models_we_test(manifest):
    assert sorted(m["file"] for m in manifest["models"]) == sorted(MANIFEST_FILES)


@pytest.mark.shared
@pytest.mark.parametrize("file", MANIFEST_FILES)
def test_real_model_round_trip(file, shared_data, manifest, real_batches, tmp_path):
    entry = manifest_entry(manifest, file)
    src = shared_data / file
    am = AuditModel.load(src, device="cpu")
    pp = Preprocess(scale=entry["scale"], mean=entry["mean"], std=entry["std"])
    x = am.model_input(real_batches(entry, am), pp)
    diff, written = round_trip(am, x)
    assert diff <= 1e-6, f"{file}: written model differs from the original by {diff}"
    # saved to disk the way the original was laid out (external data stays external)
    external = had_external_data(src)
    assert external == ("external_data" in entry)
    out = save_model(written, tmp_path / src.name, external_data=external, inputs=(src,))
    assert (tmp_path / (src.name + ".data")).is_file() == external
    reloaded = load_model(out)
    assert max_diff(ort_outputs(reloaded, x), ort_outputs(am.original, x)) <= 1e-6
    assert_same_structure(reloaded, am.original)


@pytest.mark.shared
@pytest.mark.parametrize("file", MANIFEST_FILES)
def test_real_model_write_back_of_changed_weights(file, shared_data, manifest, real_batches):
    entry = manifest_entry(manifest, file)
    am = AuditModel.load(shared_data / file, device="cpu")
    pp = Preprocess(scale=entry["scale"], mean=entry["mean"], std=entry["std"])
    perturb_and_write_back(am, am.model_input(real_batches(entry, am)[:64], pp))


@pytest.mark.shared
def test_save_refuses_to_overwrite_the_input(shared_data, tmp_path):
    src = shared_data / "backdoored" / "badnets_mnist.onnx"
    am = AuditModel.load(src, device="cpu")
    with pytest.raises(Exception, match="refusing to overwrite"):
        save_model(am.original, src, inputs=(src,))


# ------------------------------------------------------------------------------------------
# models exported by these tests: scikit-learn digits (8x8), 1400 train / 397 test


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.round(d.images * (255 / 16)).astype(np.uint8)  # [N,8,8] 0..255 pixels
    y = d.target.astype(np.int64)
    folder = tmp_path_factory.mktemp("digits")
    np.savez(folder / "test.npz", x=x[1400:], y=y[1400:])
    return {"train": (x[:1400], y[:1400]), "test": (x[1400:], y[1400:]),
            "npz": folder / "test.npz", "dir": folder}


class DigitsNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(8 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = self.pool(torch.relu(self.bn(self.conv(x))))
        x = x.reshape(x.shape[0], -1)
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.fixture(scope="module")
def torch_digits(digits):
    """A small CNN with BatchNorm trained for a few seconds; its test accuracy in torch."""
    with torch_threads(1):  # tiny tensors: threads only add contention
        torch.manual_seed(0)
        net = DigitsNet()
        xtr = torch.from_numpy(digits["train"][0][:, None].astype(np.float32) / 255)
        ytr = torch.from_numpy(digits["train"][1])
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        for _ in range(15):
            for i in range(0, len(xtr), 100):
                opt.zero_grad()
                nn.functional.cross_entropy(net(xtr[i:i + 100]), ytr[i:i + 100]).backward()
                opt.step()
        net.eval()
        x_test = digits["test"][0][:, None].astype(np.float32) / 255
        with torch.no_grad():
            pred = net(torch.from_numpy(x_test)).argmax(1).numpy()
    acc = float((pred == digits["test"][1]).mean())
    assert acc >= 0.9, f"the digits CNN trained to only {acc}"
    return net, acc


def export(net: nn.Module, path: Path, *, dynamo: bool, opset: int | None = None) -> onnx.ModelProto:
    x = torch.zeros(2, 1, 8, 8)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(net, (x,), str(path), dynamo=True, input_names=["image"],
                              output_names=["logits"],
                              dynamic_shapes=({0: torch.export.Dim("batch")},))
        else:
            torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=opset,
                              training=torch.onnx.TrainingMode.PRESERVE,
                              input_names=["image"], output_names=["logits"],
                              dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    return onnx.load(str(path))


@pytest.mark.parametrize("opset", [13, 17])
def test_torchscript_export_with_batchnorm(opset, torch_digits, digits, capsys):
    net, acc = torch_digits
    path = digits["dir"] / f"ts{opset}.onnx"
    m = export(net, path, dynamo=False, opset=opset)
    assert [o.version for o in m.opset_import if o.domain in ("", "ai.onnx")] == [opset]
    assert "BatchNormalization" in [n.op_type for n in m.graph.node], "BN was folded away"
    r = inspect_json(capsys, path, digits["npz"])
    check_report(r, accuracy=acc, n=397)
    assert r["accuracy"] >= 0.9 and r["opset"] == opset and r["layout"] == "NCHW"
    assert [(l["op"], l["units"]) for l in r["probe_layers"]] == [("Conv", 8), ("Gemm", 32),
                                                                  ("Gemm", 10)]
    am = AuditModel.load(path, device="cpu")
    x = am.model_input(digits["test"][0][:, None].astype(np.float32) / 255, Preprocess())
    diff, _ = round_trip(am, x)
    assert diff <= 1e-6
    tm = to_torch(am, x)
    assert {b.attr for b in tm.bindings} >= {"running_mean", "running_var"}  # BN is trainable
    # conv weights are kept channels-last on the CPU, and give the plain layout's logits
    plain = to_torch(am, x, channels_last=False)
    conv_w = [m.weight for m in tm.module.modules() if isinstance(m, torch.nn.Conv2d)]
    assert tm.channels_last and not plain.channels_last and conv_w
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in conv_w)
    np.testing.assert_allclose(torch_logits(tm, x), torch_logits(plain, x), rtol=1e-5, atol=1e-5)
    perturb_and_write_back(am, x[:64])


def test_shrink_reaches_through_batchnorm(torch_digits, digits):
    """The launder's shrunk warm start (reset.shrink_weights) on a Conv followed by BatchNorm:
    the BN's scale is shrunk too, or its normalisation would undo the conv's shrink."""
    from audit.graphs.probe import find_probe_layers
    from audit.reset import shrink_weights

    net, _ = torch_digits
    path = digits["dir"] / "ts_shrink.onnx"
    export(net, path, dynamo=False, opset=13)
    am = AuditModel.load(path, device="cpu")
    x = am.model_input(digits["test"][0][:, None].astype(np.float32) / 255, Preprocess())
    tm = to_torch(am, x)
    mods = list(tm.module.modules())
    bn = [m for m in mods if isinstance(m, torch.nn.BatchNorm2d)]
    layers = [m for m in mods if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert len(bn) == 1 and len(layers) == 3
    shrunk = {id(m.weight) for m in layers} | {id(bn[0].weight)}
    before = {n: p.detach().clone() for n, p in tm.module.named_parameters()}
    assert shrink_weights(tm, find_probe_layers(tm.graph, am.original), 0.5) == 4
    for n, p in tm.module.named_parameters():
        assert torch.equal(p.detach(), before[n] * (0.5 if id(p) in shrunk else 1.0)), n
    assert any(id(p) not in shrunk for p in tm.module.parameters())   # BN shift, biases kept


def test_dynamo_export(torch_digits, digits, capsys):
    net, acc = torch_digits
    path = digits["dir"] / "dynamo.onnx"
    m = export(net, path, dynamo=True)
    op_types = [n.op_type for n in m.graph.node]
    assert "BatchNormalization" not in op_types  # the dynamo exporter folds BN into the conv
    reshapes = [n for n in m.graph.node if n.op_type == "Reshape"]
    assert reshapes and all(
        any(a.name == "allowzero" and a.i == 1 for a in n.attribute) for n in reshapes)
    r = inspect_json(capsys, path, digits["npz"])
    check_report(r, accuracy=acc, n=397)
    assert "reshape_allowzero" in r["rewrites"]
    am = AuditModel.load(path, device="cpu")
    x = am.model_input(digits["test"][0][:, None].astype(np.float32) / 255, Preprocess())
    diff, _ = round_trip(am, x)
    assert diff <= 1e-6
    perturb_and_write_back(am, x[:64])


@pytest.fixture(scope="module")
def sklearn_digits(digits):
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    xtr, ytr = digits["train"]
    xte, yte = digits["test"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=500, random_state=0)
        clf.fit(xtr.reshape(len(xtr), -1).astype(np.float32) / 255, ytr)
    acc = float(clf.score(xte.reshape(len(xte), -1).astype(np.float32) / 255, yte))
    assert acc >= 0.9
    onx = convert_sklearn(clf, initial_types=[("input", FloatTensorType([None, 64]))],
                          options={id(clf): {"zipmap": False}})
    path = digits["dir"] / "sklearn_mlp.onnx"
    onnx.save(onx, str(path))
    return path, clf, acc


def test_sklearn_mlp_via_skl2onnx(sklearn_digits, digits, capsys):
    path, clf, acc = sklearn_digits
    m = onnx.load(str(path))
    op_types = [n.op_type for n in m.graph.node]
    assert "MatMul" in op_types and "Add" in op_types and "Conv" not in op_types
    assert "ZipMap" not in op_types
    assert [o.name for o in m.graph.output] == ["label", "probabilities"]
    assert "ai.onnx.ml" in {o.domain for o in m.opset_import}  # the label branch
    r = inspect_json(capsys, path, digits["npz"])
    check_report(r, accuracy=acc, n=397)
    assert (r["layout"], r["channels"], r["height"], r["width"]) == ("NF", 1, 8, 8)
    assert r["output_kind"] == "probabilities"
    assert [(l["op"], l["units"]) for l in r["probe_layers"]] == [("MatMul", 64), ("MatMul", 10)]
    am = AuditModel.load(path, device="cpu")
    x01 = digits["test"][0][:, None].astype(np.float32) / 255
    x = am.model_input(x01, Preprocess())
    assert x.shape == (397, 64)
    np.testing.assert_allclose(ort_outputs(m, x)[1], clf.predict_proba(x), rtol=1e-4, atol=1e-5)
    diff, _ = round_trip(am, x)
    assert diff <= 1e-6  # both outputs, label and probabilities
    # torch sees the scores before the softmax, not the probabilities
    tm = to_torch(am, x)
    assert not tm.channels_last  # no convolution: nothing to re-lay out
    probs = torch.softmax(torch.from_numpy(torch_logits(tm, x)), dim=1).numpy()
    np.testing.assert_allclose(probs, ort_outputs(m, x)[1], rtol=1e-4, atol=1e-6)
    assert np.abs(torch_logits(tm, x)).max() > 1.5  # logits, not probabilities
    perturb_and_write_back(am, x[:64])


def test_parity_failure_is_reported_with_the_node(digits, torch_digits):
    """A converter bug must surface as a ConversionError naming the first diverging node."""
    net, _ = torch_digits
    path = digits["dir"] / "ts13_parity.onnx"
    export(net, path, dynamo=False, opset=13)
    am = AuditModel.load(path, device="cpu")
    x = am.model_input(digits["test"][0][:32, None].astype(np.float32) / 255, Preprocess())
    tm = to_torch(am, x)
    conv_path = tm.node_modules[next(n.name for n in tm.graph.graph.node if n.op_type == "Conv")]
    from audit.converters import to_torch as tt

    with torch.no_grad():
        tm.module.get_submodule(conv_path).weight.add_(0.5)
    assert tt.parity_with_scale(tm, x)[0] > 1e-2
    node = tt.first_divergence(tm, x[:4], PARITY)
    assert node is not None and node.endswith("(Conv)")
