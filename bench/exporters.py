"""Exporter matrix: digits classifiers exported to ONNX by many exporters, then audited.

Every exporter path builds small image classifiers on scikit-learn's digits (8x8 grey, upsampled
to 16x16, split 70/30 with a fixed seed), exports them to ONNX and writes one folder per model
with ``model.onnx`` and ``meta.json`` (exporter and framework versions, opset, architecture,
preprocessing, input layout). The `audit` CLI then inspects and launders every model in
subprocesses, and the written-back model is checked (same opset, runs in onnxruntime, test
accuracy).

Subcommands:

* ``build --out ZOO --paths a,b``: build the named paths with this interpreter (the frameworks are
  imported inside the builders, so each path runs in an interpreter that has them);
* ``audit ZOO``: audit every model in ZOO (no rebuild), write bench/results/exporters.json and
  print a Markdown table; this needs the interpreter that has `audit` installed;
* ``run --out ZOO [--python-for NAMES=PYTHON ...]``: write the data, build every path (each in
  the interpreter given for it, else this one), then audit;
* ``available``: print the paths this interpreter can build, as JSON.

The zoo lives outside the repository (default <temp folder>/audit-exporters-zoo, or $AUDIT_EXPORTERS_ZOO);
results name files relative to it (``<zoo>/...``).

Exporter paths: torchscript (torch.onnx.export dynamo=False, opsets 9/13/17), dynamo
(dynamo=True, opset 18 and the default), tf2onnx (tf.function + tf2onnx.convert.from_function),
keras3 (Keras 3 ``model.export(format="onnx")``), jax2onnx (plain jax functions), paddle2onnx
(paddle.onnx.export), skl2onnx (MLPClassifier with and without ZipMap).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "exporters.json"
DEFAULT_ZOO = Path(os.environ.get("AUDIT_EXPORTERS_ZOO", Path(tempfile.gettempdir()) / "audit-exporters-zoo"))
SIDE = 16
SEED = 0
SUBSET = 150
# small settings: the bench checks that every exporter's graph goes through the whole pipeline
# (inspect, Neural Cleanse, reset, retrain, write-back), not how well it launders; a fixed rate
# skips the learning-rate trials of --lr auto
AUDIT_SETTINGS = {"rounds": 1, "epochs": 2, "nc_epochs": 2, "nc_epochs_later": 2, "lr": "1e-3", "seed": 0,
                  "device": "cpu"}
PATHS = ("torchscript", "dynamo", "skl2onnx", "tf2onnx", "keras3", "jax2onnx", "paddle2onnx")
# module that must import for a path to be buildable
NEEDS = {"torchscript": ("torch",), "dynamo": ("torch", "onnxscript"), "skl2onnx": ("sklearn", "skl2onnx"),
         "tf2onnx": ("tensorflow", "tf2onnx"), "keras3": ("keras", "tensorflow", "tf2onnx"),
         "jax2onnx": ("jax", "jax2onnx"), "paddle2onnx": ("paddle", "paddle2onnx")}


# ---------------------------------------------------------------------------- data
def make_data(zoo: Path) -> dict[str, np.ndarray]:
    """Digits upsampled to 16x16 uint8, a stratified 70/30 split and a 150-image clean subset.

    Written once to ZOO/data/{train,test,subset150}.npz; later calls (other interpreters) read
    them, so every framework trains and is tested on the same images.
    """
    d = zoo / "data"
    files = {k: d / f"{k}.npz" for k in ("train", "test", f"subset{SUBSET}")}
    if all(f.exists() for f in files.values()):
        return {k: dict(np.load(f)) for k, f in files.items()}
    from sklearn.datasets import load_digits

    digits = load_digits()
    x8 = digits.images.astype(np.float64) / 16.0            # [N, 8, 8] in [0, 1]
    x16 = _upsample(x8, SIDE)
    x = np.clip(np.round(x16 * 255), 0, 255).astype(np.uint8)
    y = digits.target.astype(np.int64)
    rng = np.random.default_rng(SEED)
    train_idx, test_idx = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(0.7 * len(idx)))
        train_idx += list(idx[:k])
        test_idx += list(idx[k:])
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    sub = np.sort(np.concatenate([rng.permutation(train_idx[y[train_idx] == c])[:SUBSET // 10]
                                  for c in range(10)]))
    out = {"train": {"x": x[train_idx], "y": y[train_idx]}, "test": {"x": x[test_idx], "y": y[test_idx]},
           f"subset{SUBSET}": {"x": x[sub], "y": y[sub]}}
    d.mkdir(parents=True, exist_ok=True)
    for k, v in out.items():
        np.savez(files[k], **v)
    return out


def _upsample(x: np.ndarray, side: int) -> np.ndarray:
    """Bilinear resize of [N, h, w] to [N, side, side] (align_corners=False)."""
    n, h, w = x.shape

    def axis(src: int):
        pos = (np.arange(side) + 0.5) * src / side - 0.5
        pos = np.clip(pos, 0, src - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, src - 1)
        return lo, hi, pos - lo

    ylo, yhi, fy = axis(h)
    xlo, xhi, fx = axis(w)
    rows = x[:, ylo] * (1 - fy)[None, :, None] + x[:, yhi] * fy[None, :, None]
    return rows[:, :, xlo] * (1 - fx)[None, None, :] + rows[:, :, xhi] * fx[None, None, :]


def preprocess(x_u8: np.ndarray, pp: dict, layout: str) -> np.ndarray:
    """uint8 [N,H,W] -> the model input tensor: (u8*scale - mean)/std in the given layout."""
    v = (x_u8.astype(np.float32) * np.float32(pp["scale"]) - np.float32(pp["mean"])) / np.float32(pp["std"])
    if layout == "NCHW":
        return v[:, None]
    if layout == "NHWC":
        return v[..., None]
    if layout == "NHW":
        return v
    if layout == "NF":
        return v.reshape(len(v), -1)
    raise ValueError(layout)


PP_DEFAULT = {"scale": 1 / 255, "mean": 0.0, "std": 1.0}
PP_HALF = {"scale": 1 / 255, "mean": 0.5, "std": 0.5}
PP_RAW = {"scale": 1.0, "mean": 0.0, "std": 255.0}


# ---------------------------------------------------------------------------- model folders
class Zoo:
    """Writes one folder per model: model.onnx + meta.json (or meta.json with build_error)."""

    def __init__(self, root: Path, data: dict, only: set[str] | None = None):
        self.root, self.data, self.only = root, data, only

    def wanted(self, name: str) -> bool:
        return self.only is None or name in self.only

    def add(self, name: str, meta: dict, export, framework_acc: float | None) -> None:
        """export(path) writes the ONNX file; failures are recorded in meta.json."""
        folder = self.root / name
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        meta = {"name": name, **meta, "framework_accuracy": framework_acc, "python": platform.python_version(),
                "build_ok": False, "build_error": None, "opset": None, "ort_accuracy": None}
        t = time.perf_counter()
        try:
            export(folder / "model.onnx")
            meta["build_ok"] = (folder / "model.onnx").exists()
            if not meta["build_ok"]:
                meta["build_error"] = "exporter wrote no model.onnx"
        except Exception as exc:  # record and go on with the next model
            meta["build_error"] = f"{type(exc).__name__}: {_first_line(exc)}"
        meta["export_seconds"] = round(time.perf_counter() - t, 2)
        if meta["build_ok"]:
            meta.update(_onnx_facts(folder / "model.onnx"))
            meta["ort_accuracy"] = _ort_accuracy(folder / "model.onnx", self.data["test"], meta)
        (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        status = "ok" if meta["build_ok"] else f"FAILED {meta['build_error']}"
        acc = f" acc {framework_acc:.3f}" if framework_acc is not None else ""
        print(f"  {name:<28} opset {meta['opset']}{acc} ort {meta['ort_accuracy']} {status}", flush=True)


def _onnx_facts(path: Path) -> dict:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    imports = {o.domain or "ai.onnx": o.version for o in m.opset_import}
    return {"opset": imports.get("ai.onnx"), "opset_imports": imports, "ir_version": m.ir_version,
            "producer": " ".join(x for x in (m.producer_name, m.producer_version) if x),
            "onnx_version": onnx.__version__}


def _ort_session(path: Path):
    import onnx
    import onnxruntime as ort

    m = onnx.load(str(path))
    if m.ir_version > 10:  # onnxruntime < 1.20 reads IR <= 10
        m.ir_version = 10
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _ort_accuracy(path: Path, test: dict, meta: dict) -> float | None:
    """Test accuracy under onnxruntime: the first float [N,K] output, else an integer label output."""
    try:
        sess = _ort_session(path)
    except Exception as exc:
        meta.setdefault("ort_error", f"{type(exc).__name__}: {_first_line(exc)}")
        return None
    try:
        x = preprocess(test["x"], meta["preprocess"], meta["input_layout"])
        inp = sess.get_inputs()[0]
        fixed = inp.shape[0] if inp.shape and isinstance(inp.shape[0], int) else None
        outs = sess.get_outputs()
        pick = next((i for i, o in enumerate(outs) if o.type == "tensor(float)" and len(o.shape or []) == 2), None)
        label = next((i for i, o in enumerate(outs) if o.type == "tensor(int64)"), None)
        if pick is None and label is None:
            meta.setdefault("ort_error", "no float [N,K] or int64 label output")
            return None
        step = fixed or 256
        preds = []
        for i in range(0, len(x), step):
            r = sess.run(None, {inp.name: x[i:i + step]})
            preds.append(r[pick].argmax(axis=1) if pick is not None else np.asarray(r[label]).reshape(-1))
        return _accuracy(np.concatenate(preds), test["y"])
    except Exception as exc:
        meta.setdefault("ort_error", f"{type(exc).__name__}: {_first_line(exc)}")
        return None


def _accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    """Share of predicted labels equal to y, rounded to 4 places (every accuracy the bench records)."""
    return round(float((np.asarray(pred) == y).mean()), 4)


def _first_line(exc: BaseException | str) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:400] if text else (type(exc).__name__ if isinstance(exc, BaseException) else "")


def _version(mod: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:
        return None


# ---------------------------------------------------------------------------- torch
def _torch_models():
    import torch
    from torch import nn

    def mlp():
        return nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, 64), nn.ReLU(), nn.Linear(64, 10))

    def cnn():
        return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Flatten(), nn.Linear(16 * 4 * 4, 10))

    def cnn_bn():
        return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Flatten(), nn.Linear(16 * 4 * 4, 10))

    return torch, {"mlp": mlp, "cnn": cnn, "cnn_bn": cnn_bn}


def _torch_train(make, data, pp, epochs=12):
    import torch

    torch.manual_seed(SEED)
    model = make()
    x = torch.from_numpy(preprocess(data["train"]["x"], pp, "NCHW"))
    y = torch.from_numpy(data["train"]["y"])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(SEED)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x), generator=g).split(32):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        xt = torch.from_numpy(preprocess(data["test"]["x"], pp, "NCHW"))
        return model, _accuracy(model(xt).argmax(1).numpy(), data["test"]["y"])


def _build_torch(zoo: Zoo, plan, export, meta: dict) -> None:
    """Train each (name, arch, opset, preprocess, fixed batch 1) of plan and add it to the zoo,
    exported by export(model, path, opset, fixed1); meta names the exporter."""
    torch, archs = _torch_models()
    for name, arch, opset, pp, fixed1 in plan:
        if not zoo.wanted(name):
            continue
        model, acc = _torch_train(archs[arch], zoo.data, pp)
        zoo.add(name, {**meta, "framework": "torch", "framework_version": torch.__version__,
                       "requested_opset": opset, "arch": arch, "preprocess": pp, "input_layout": "NCHW",
                       "batch": 1 if fixed1 else "dynamic"},
                lambda path, model=model, opset=opset, fixed1=fixed1: export(model, path, opset, fixed1),
                acc)


def build_torchscript(zoo: Zoo) -> None:
    import torch

    def export(model, path, opset, fixed1):
        dummy = torch.zeros(1 if fixed1 else 2, 1, SIDE, SIDE)
        axes = None if fixed1 else {"input": {0: "batch"}, "logits": {0: "batch"}}
        torch.onnx.export(model, (dummy,), str(path), dynamo=False, opset_version=opset,
                          input_names=["input"], output_names=["logits"], dynamic_axes=axes)

    _build_torch(zoo, [("torchscript-op9-mlp", "mlp", 9, PP_DEFAULT, False),
                       ("torchscript-op9-cnn", "cnn", 9, PP_HALF, False),
                       ("torchscript-op13-cnn_bn", "cnn_bn", 13, PP_DEFAULT, False),
                       ("torchscript-op17-cnn", "cnn", 17, PP_DEFAULT, False),
                       ("torchscript-op17-cnn_bn-b1", "cnn_bn", 17, PP_HALF, True)],
                 export, {"exporter": "torch.onnx.export(dynamo=False)", "path": "torchscript",
                          "exporter_version": torch.__version__})


def build_dynamo(zoo: Zoo) -> None:
    import torch

    def export(model, path, opset, fixed1):
        batch = torch.export.Dim("batch", min=1, max=4096)
        kw = {} if opset is None else {"opset_version": opset}
        prog = torch.onnx.export(model, (torch.zeros(2, 1, SIDE, SIDE),), dynamo=True,
                                 input_names=["input"], output_names=["logits"],
                                 dynamic_shapes=({0: batch},), **kw)
        prog.save(str(path))

    _build_torch(zoo, [("dynamo-op18-cnn", "cnn", 18, PP_DEFAULT, False),
                       ("dynamo-op18-cnn_bn", "cnn_bn", 18, PP_HALF, False),
                       ("dynamo-default-mlp", "mlp", None, PP_DEFAULT, False),
                       ("dynamo-default-cnn_bn", "cnn_bn", None, PP_DEFAULT, False)],
                 export, {"exporter": "torch.onnx.export(dynamo=True)", "path": "dynamo",
                          "exporter_version": f"torch {torch.__version__}, onnxscript {_version('onnxscript')}"})


# ---------------------------------------------------------------------------- scikit-learn
def build_skl2onnx(zoo: Zoo) -> None:
    import skl2onnx
    import sklearn
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.neural_network import MLPClassifier

    pp = PP_DEFAULT
    x = preprocess(zoo.data["train"]["x"], pp, "NF")
    xt = preprocess(zoo.data["test"]["x"], pp, "NF")
    clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=200, random_state=SEED).fit(x, zoo.data["train"]["y"])
    acc = _accuracy(clf.predict(xt), zoo.data["test"]["y"])
    for name, options in (("skl2onnx-mlp-zipmap", None), ("skl2onnx-mlp-nozipmap", {id(clf): {"zipmap": False}})):
        if not zoo.wanted(name):
            continue

        def export(path, options=options):
            onx = to_onnx(clf, initial_types=[("input", FloatTensorType([None, SIDE * SIDE]))], options=options,
                          target_opset={"": 17, "ai.onnx.ml": 3})
            path.write_bytes(onx.SerializeToString())

        zoo.add(name, {"exporter": "skl2onnx.to_onnx", "path": "skl2onnx", "exporter_version": skl2onnx.__version__,
                       "framework": "scikit-learn", "framework_version": sklearn.__version__,
                       "requested_opset": 17, "arch": "mlp", "options": "zipmap=False" if options else "default",
                       "preprocess": pp, "input_layout": "NF", "batch": "dynamic"},
                export, acc)


# ---------------------------------------------------------------------------- TensorFlow / Keras
def _keras_models():
    import keras
    from keras import layers

    def mlp():
        inp = keras.Input((SIDE, SIDE), name="input")
        h = layers.Flatten()(inp)
        h = layers.Dense(64, activation="relu")(h)
        return keras.Model(inp, layers.Dense(10)(h))

    def mlp_bn():
        inp = keras.Input((SIDE, SIDE), name="input")
        h = layers.Flatten()(inp)
        h = layers.Dense(64)(h)
        h = layers.BatchNormalization()(h)
        h = layers.Activation("relu")(h)
        return keras.Model(inp, layers.Dense(10)(h))

    def cnn():
        inp = keras.Input((SIDE, SIDE, 1), name="input")
        h = layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
        h = layers.MaxPooling2D()(h)
        h = layers.Conv2D(16, 3, padding="same", activation="relu")(h)
        h = layers.MaxPooling2D()(h)
        h = layers.Flatten()(h)
        return keras.Model(inp, layers.Dense(10)(h))

    def cnn_bn():
        inp = keras.Input((SIDE, SIDE, 1), name="input")
        h = layers.Conv2D(8, 3, padding="same", use_bias=False)(inp)
        h = layers.BatchNormalization()(h)
        h = layers.Activation("relu")(h)
        h = layers.MaxPooling2D()(h)
        h = layers.Conv2D(16, 3, padding="same", use_bias=False)(h)
        h = layers.BatchNormalization()(h)
        h = layers.Activation("relu")(h)
        h = layers.MaxPooling2D()(h)
        h = layers.Flatten()(h)
        return keras.Model(inp, layers.Dense(10, activation="softmax")(h))

    return keras, {"mlp": (mlp, "NHW"), "mlp_bn": (mlp_bn, "NHW"), "cnn": (cnn, "NHWC"), "cnn_bn": (cnn_bn, "NHWC")}


def _keras_train(keras, make, layout, data, pp, epochs=15):
    keras.utils.set_random_seed(SEED)
    model = make()
    probs = model.layers[-1].get_config().get("activation") == "softmax"
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=not probs), metrics=["accuracy"])
    x = preprocess(data["train"]["x"], pp, layout)
    model.fit(x, data["train"]["y"], epochs=epochs, batch_size=32, verbose=0)
    xt = preprocess(data["test"]["x"], pp, layout)
    return model, _accuracy(model.predict(xt, verbose=0).argmax(1), data["test"]["y"])


def build_tf2onnx(zoo: Zoo) -> None:
    import tensorflow as tf
    import tf2onnx

    keras, archs = _keras_models()
    plan = [("tf2onnx-op13-mlp", "mlp", 13, PP_DEFAULT),
            ("tf2onnx-op13-cnn", "cnn", 13, PP_DEFAULT),
            ("tf2onnx-op17-cnn_bn", "cnn_bn", 17, PP_HALF)]
    for name, arch, opset, pp in plan:
        if not zoo.wanted(name):
            continue
        make, layout = archs[arch]
        model, acc = _keras_train(keras, make, layout, zoo.data, pp)

        def export(path, model=model, opset=opset, layout=layout):
            shape = [None, SIDE, SIDE] + ([1] if layout == "NHWC" else [])
            spec = (tf.TensorSpec(shape, tf.float32, name="input"),)

            @tf.function(input_signature=spec)
            def serve(x):
                return model(x, training=False)

            tf2onnx.convert.from_function(serve, input_signature=spec, opset=opset, output_path=str(path))

        zoo.add(name, {"exporter": "tf2onnx.convert.from_function", "path": "tf2onnx",
                       "exporter_version": tf2onnx.__version__, "framework": "tensorflow",
                       "framework_version": f"tensorflow {tf.__version__}, keras {keras.__version__}",
                       "requested_opset": opset, "arch": arch, "preprocess": pp, "input_layout": layout,
                       "batch": "dynamic"},
                export, acc)


def build_keras3(zoo: Zoo) -> None:
    keras, archs = _keras_models()
    plan = [("keras3-mlp", "mlp", PP_DEFAULT), ("keras3-mlp_bn", "mlp_bn", PP_DEFAULT),
            ("keras3-cnn", "cnn", PP_RAW), ("keras3-cnn_bn", "cnn_bn", PP_DEFAULT)]
    for name, arch, pp in plan:
        if not zoo.wanted(name):
            continue
        make, layout = archs[arch]
        model, acc = _keras_train(keras, make, layout, zoo.data, pp)

        def export(path, model=model):
            model.export(str(path), format="onnx", verbose=False)

        zoo.add(name, {"exporter": 'keras.Model.export(format="onnx")', "path": "keras3",
                       "exporter_version": f"keras {keras.__version__}, tf2onnx {_version('tf2onnx')}",
                       "framework": f"keras ({keras.backend.backend()} backend)",
                       "framework_version": f"keras {keras.__version__}, tensorflow {_version('tensorflow')}",
                       "requested_opset": None, "arch": arch, "preprocess": pp, "input_layout": layout,
                       "batch": "dynamic"},
                export, acc)


# ---------------------------------------------------------------------------- JAX
def _jax_nets():
    import jax
    import jax.numpy as jnp

    def init(key, arch):
        k = jax.random.split(key, 4)
        if arch == "mlp":
            return {"w1": jax.random.normal(k[0], (SIDE * SIDE, 64)) * (2 / (SIDE * SIDE)) ** 0.5,
                    "b1": jnp.zeros(64), "w2": jax.random.normal(k[1], (64, 10)) * (2 / 64) ** 0.5,
                    "b2": jnp.zeros(10)}
        return {"c1": jax.random.normal(k[0], (3, 3, 1, 8)) * (2 / 9) ** 0.5, "cb1": jnp.zeros(8),
                "c2": jax.random.normal(k[1], (3, 3, 8, 16)) * (2 / 72) ** 0.5, "cb2": jnp.zeros(16),
                "w": jax.random.normal(k[2], (16 * 4 * 4, 10)) * (2 / 256) ** 0.5, "b": jnp.zeros(10)}

    def apply(p, x, arch):
        if arch == "mlp":  # x: [N, 256]
            h = jax.nn.relu(x @ p["w1"] + p["b1"])
            return h @ p["w2"] + p["b2"]
        h = x  # [N, H, W, 1]

        def conv(h, w, b):
            y = jax.lax.conv_general_dilated(h, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
            return jax.nn.relu(y + b)

        def pool(h):
            return jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")

        h = pool(conv(h, p["c1"], p["cb1"]))
        h = pool(conv(h, p["c2"], p["cb2"]))
        return h.reshape(h.shape[0], -1) @ p["w"] + p["b"]

    return jax, jnp, init, apply


def build_jax2onnx(zoo: Zoo) -> None:
    import jax2onnx

    jax, jnp, init, apply = _jax_nets()
    plan = [("jax2onnx-op23-mlp", "mlp", "NF", PP_DEFAULT, 23), ("jax2onnx-op23-cnn", "cnn", "NHWC", PP_HALF, 23)]
    for name, arch, layout, pp, opset in plan:
        if not zoo.wanted(name):
            continue
        params = init(jax.random.PRNGKey(SEED), arch)
        x = jnp.asarray(preprocess(zoo.data["train"]["x"], pp, layout))
        y = jnp.asarray(zoo.data["train"]["y"])

        def loss(p, xb, yb, arch=arch):
            logits = apply(p, xb, arch)
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), yb[:, None], axis=1))

        grad = jax.jit(jax.grad(loss))
        m = jax.tree_util.tree_map(jnp.zeros_like, params)
        v = jax.tree_util.tree_map(jnp.zeros_like, params)
        rng = np.random.default_rng(SEED)
        step = 0
        for _ in range(15):  # Adam, lr 3e-3
            for idx in np.array_split(rng.permutation(len(x)), len(x) // 32):
                step += 1
                g = grad(params, x[idx], y[idx])
                m = jax.tree_util.tree_map(lambda a, b: 0.9 * a + 0.1 * b, m, g)
                v = jax.tree_util.tree_map(lambda a, b: 0.999 * a + 0.001 * b * b, v, g)
                params = jax.tree_util.tree_map(
                    lambda p_, a, b, s=step: p_ - 3e-3 * (a / (1 - 0.9 ** s)) / (jnp.sqrt(b / (1 - 0.999 ** s)) + 1e-8),
                    params, m, v)
        xt = jnp.asarray(preprocess(zoo.data["test"]["x"], pp, layout))
        acc = _accuracy(np.asarray(apply(params, xt, arch)).argmax(1), zoo.data["test"]["y"])
        frozen = jax.tree_util.tree_map(np.asarray, params)

        def export(path, frozen=frozen, arch=arch, layout=layout, opset=opset, name=name):
            def classifier(x):
                return apply(frozen, x, arch)

            shape = ("B", SIDE * SIDE) if layout == "NF" else ("B", SIDE, SIDE, 1)
            onx = jax2onnx.to_onnx(classifier, [shape], model_name=name.replace("-", "_"), opset=opset)
            import onnx

            onnx.save_model(onx, str(path))

        zoo.add(name, {"exporter": "jax2onnx.to_onnx", "path": "jax2onnx", "exporter_version": _version("jax2onnx"),
                       "framework": "jax (plain functions, jax.lax)", "framework_version": jax.__version__,
                       "requested_opset": opset, "arch": arch, "preprocess": pp, "input_layout": layout,
                       "batch": "dynamic"},
                export, acc)
    _build_flax_nnx(zoo)


def _build_flax_nnx(zoo: Zoo) -> None:
    """flax.nnx CNNs (nnx.Conv, nnx.BatchNorm, nnx.max_pool, nnx.Linear) through jax2onnx."""
    import flax
    import jax
    import jax.numpy as jnp
    import jax2onnx
    import onnx
    import optax
    from flax import nnx

    class CNN(nnx.Module):
        def __init__(self, bn: bool, rngs: nnx.Rngs):
            self.c1 = nnx.Conv(1, 8, (3, 3), padding="SAME", use_bias=not bn, rngs=rngs)
            self.c2 = nnx.Conv(8, 16, (3, 3), padding="SAME", use_bias=not bn, rngs=rngs)
            self.b1 = nnx.BatchNorm(8, rngs=rngs) if bn else None
            self.b2 = nnx.BatchNorm(16, rngs=rngs) if bn else None
            self.fc = nnx.Linear(16 * 4 * 4, 10, rngs=rngs)

        def __call__(self, x):
            h = self.c1(x)
            h = nnx.relu(self.b1(h) if self.b1 is not None else h)
            h = nnx.max_pool(h, window_shape=(2, 2), strides=(2, 2))
            h = self.c2(h)
            h = nnx.relu(self.b2(h) if self.b2 is not None else h)
            h = nnx.max_pool(h, window_shape=(2, 2), strides=(2, 2))
            return self.fc(h.reshape(h.shape[0], -1))

    plan = [("jax2onnx-nnx-op23-cnn", "cnn", 23, PP_DEFAULT), ("jax2onnx-nnx-op23-cnn_bn", "cnn_bn", 23, PP_HALF),
            ("jax2onnx-nnx-op18-cnn_bn", "cnn_bn", 18, PP_DEFAULT)]
    for name, arch, opset, pp in plan:
        if not zoo.wanted(name):
            continue
        model = CNN(arch == "cnn_bn", nnx.Rngs(SEED))
        opt = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

        @nnx.jit
        def step(model, opt, xb, yb):
            def loss_fn(m):
                return optax.softmax_cross_entropy_with_integer_labels(m(xb), yb).mean()

            grads = nnx.grad(loss_fn)(model)
            opt.update(model, grads)

        x = jnp.asarray(preprocess(zoo.data["train"]["x"], pp, "NHWC"))
        y = jnp.asarray(zoo.data["train"]["y"])
        rng = np.random.default_rng(SEED)
        model.train()
        for _ in range(12):
            for idx in np.array_split(rng.permutation(len(x)), len(x) // 32):
                step(model, opt, x[idx], y[idx])
        model.eval()
        xt = jnp.asarray(preprocess(zoo.data["test"]["x"], pp, "NHWC"))
        acc = _accuracy(np.asarray(model(xt)).argmax(1), zoo.data["test"]["y"])

        def export(path, model=model, opset=opset, name=name):
            onx = jax2onnx.to_onnx(model, [("B", SIDE, SIDE, 1)], model_name=name.replace("-", "_"), opset=opset)
            onnx.save_model(onx, str(path))

        zoo.add(name, {"exporter": "jax2onnx.to_onnx", "path": "jax2onnx", "exporter_version": _version("jax2onnx"),
                       "framework": "jax + flax.nnx", "framework_version": f"jax {jax.__version__}, flax "
                       f"{flax.__version__}", "requested_opset": opset, "arch": arch, "preprocess": pp,
                       "input_layout": "NHWC", "batch": "dynamic"},
                export, acc)


# ---------------------------------------------------------------------------- Paddle
def build_paddle2onnx(zoo: Zoo) -> None:
    import paddle
    import paddle2onnx
    from paddle import nn

    def mlp():
        return nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, 64), nn.ReLU(), nn.Linear(64, 10))

    def cnn():
        return nn.Sequential(nn.Conv2D(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2D(2),
                             nn.Conv2D(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2D(2),
                             nn.Flatten(), nn.Linear(16 * 4 * 4, 10))

    def cnn_bn():
        return nn.Sequential(nn.Conv2D(1, 8, 3, padding=1), nn.BatchNorm2D(8), nn.ReLU(), nn.MaxPool2D(2),
                             nn.Conv2D(8, 16, 3, padding=1), nn.BatchNorm2D(16), nn.ReLU(), nn.MaxPool2D(2),
                             nn.Flatten(), nn.Linear(16 * 4 * 4, 10))

    plan = [("paddle2onnx-op11-mlp", mlp, "mlp", 11, PP_DEFAULT),
            ("paddle2onnx-op13-cnn", cnn, "cnn", 13, PP_HALF),
            ("paddle2onnx-op13-cnn_bn", cnn_bn, "cnn_bn", 13, PP_DEFAULT)]
    for name, make, arch, opset, pp in plan:
        if not zoo.wanted(name):
            continue
        paddle.seed(SEED)
        model = make()
        x = paddle.to_tensor(preprocess(zoo.data["train"]["x"], pp, "NCHW"))
        y = paddle.to_tensor(zoo.data["train"]["y"])
        opt = paddle.optimizer.Adam(learning_rate=3e-3, parameters=model.parameters())
        rng = np.random.default_rng(SEED)
        for _ in range(12):
            model.train()
            for idx in np.array_split(rng.permutation(len(zoo.data["train"]["y"])), len(x) // 32):
                i = paddle.to_tensor(idx)
                loss = nn.functional.cross_entropy(model(paddle.gather(x, i)), paddle.gather(y, i))
                loss.backward()
                opt.step()
                opt.clear_grad()
        model.eval()
        xt = paddle.to_tensor(preprocess(zoo.data["test"]["x"], pp, "NCHW"))
        acc = _accuracy(model(xt).numpy().argmax(1), zoo.data["test"]["y"])

        def export(path, model=model, opset=opset):
            spec = [paddle.static.InputSpec([None, 1, SIDE, SIDE], "float32", "input")]
            prefix = str(path)[:-len(".onnx")]
            paddle.onnx.export(model, prefix, input_spec=spec, opset_version=opset)

        zoo.add(name, {"exporter": "paddle.onnx.export (paddle2onnx)", "path": "paddle2onnx",
                       "exporter_version": paddle2onnx.__version__, "framework": "paddlepaddle",
                       "framework_version": paddle.__version__, "requested_opset": opset, "arch": arch,
                       "preprocess": pp, "input_layout": "NCHW", "batch": "dynamic"},
                export, acc)


BUILDERS = {"torchscript": build_torchscript, "dynamo": build_dynamo, "skl2onnx": build_skl2onnx,
            "tf2onnx": build_tf2onnx, "keras3": build_keras3, "jax2onnx": build_jax2onnx,
            "paddle2onnx": build_paddle2onnx}


def available() -> dict[str, str | None]:
    """Path -> None when this interpreter can build it, else the import that fails."""
    import importlib.util

    out = {}
    for p in PATHS:
        missing = [m for m in NEEDS[p] if importlib.util.find_spec(m) is None]
        out[p] = f"missing {', '.join(missing)}" if missing else None
    return out


def cmd_build(args) -> int:
    zoo_root = Path(args.out)
    data = make_data(zoo_root)
    paths = [p for p in args.paths.split(",") if p] if args.paths else list(PATHS)
    have = available()
    only = set(args.only.split(",")) if args.only else None
    zoo = Zoo(zoo_root, data, only)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for p in paths:
        if p not in BUILDERS:
            print(f"unknown path {p!r}; known: {', '.join(PATHS)}", file=sys.stderr)
            return 2
        if have[p]:
            print(f"{p}: skipped ({have[p]} in {platform.python_version()})", flush=True)
            continue
        print(f"{p}:", flush=True)
        try:
            BUILDERS[p](zoo)
        except Exception as exc:  # training or an import inside the builder failed
            print(f"  {p} FAILED before export: {type(exc).__name__}: {_first_line(exc)}", flush=True)
    return 0


# ---------------------------------------------------------------------------- auditing
def _audit_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "audit"
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "from audit.cli import main; main()"]


def _pp_args(pp: dict) -> list[str]:
    return ["--scale", repr(float(pp["scale"])), "--mean", repr(float(pp["mean"])), "--std", repr(float(pp["std"]))]


def _error_line(stderr: str) -> str | None:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errs = [ln for ln in lines if ln.startswith("error:")]
    return (errs[-1] if errs else (lines[-1] if lines else None))


def _run(cmd: list[str], timeout: int) -> tuple[int, str, str, float]:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    env.pop("AUDIT_DEBUG", None)
    t = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        return p.returncode, p.stdout, p.stderr, time.perf_counter() - t
    except subprocess.TimeoutExpired:
        return 124, "", f"error: timed out after {timeout} s", time.perf_counter() - t


def audit_one(folder: Path, zoo: Path, settings: dict) -> dict:
    meta = json.loads((folder / "meta.json").read_text())
    rel = lambda p: f"<zoo>/{Path(p).relative_to(zoo).as_posix()}"  # noqa: E731
    rec = {k: meta.get(k) for k in ("name", "path", "exporter", "exporter_version", "framework",
                                    "framework_version", "opset", "opset_imports", "ir_version",
                                    "requested_opset", "arch", "input_layout", "batch", "preprocess",
                                    "options", "framework_accuracy", "ort_accuracy", "build_ok", "build_error")}
    rec.update({"model": rel(folder / "model.onnx"), "inspect_ok": False, "inspect_rc": None, "parity_rel": None,
                "accuracy": None, "inspect_opset": None, "inspect_error": None, "output_kind": None,
                "layout": None, "rewrites": None, "launder_ok": False, "launder_rc": None,
                "launder_seconds": None, "launder_error": None, "written_opset": None,
                "written_opset_same": None, "laundered_accuracy": None, "written_error": None, "error": None})
    if not meta.get("build_ok"):
        rec["error"] = f"build: {meta.get('build_error')}"
        return rec
    model = folder / "model.onnx"
    test, subset = zoo / "data" / "test.npz", zoo / "data" / f"subset{SUBSET}.npz"
    pp = _pp_args(meta["preprocess"])
    dev = ["--device", settings["device"]]
    cmd = [*_audit_cmd(), "inspect", str(model), "--data", str(test), "--json", *pp, *dev]
    rc, out, err, _ = _run(cmd, 300)
    rec["inspect_rc"] = rc
    rec["inspect_ok"] = rc == 0
    try:
        rep = json.loads(out)
        rec.update({"parity_rel": rep.get("parity_rel"), "accuracy": rep.get("accuracy"),
                    "inspect_opset": rep.get("opset"), "output_kind": rep.get("output_kind"),
                    "layout": rep.get("layout"), "rewrites": rep.get("rewrites")})
        if rep.get("conversion_error"):
            rec["inspect_error"] = f"conversion_error: {rep['conversion_error']}"
    except json.JSONDecodeError:
        pass
    if rc != 0:
        rec["inspect_error"] = _error_line(err) or rec["inspect_error"]
    out_model = folder / "laundered.onnx"
    if out_model.exists():
        out_model.unlink()
    cmd = [*_audit_cmd(), "launder", str(model), "--data", str(subset), "-o", str(out_model),
           "--rounds", str(settings["rounds"]), "--quiet", "--epochs", str(settings["epochs"]),
           "--nc-epochs", str(settings["nc_epochs"]), "--nc-epochs-later", str(settings["nc_epochs_later"]),
           "--lr", str(settings["lr"]), "--seed", str(settings["seed"]), *pp, *dev]
    rc, out, err, secs = _run(cmd, 900)
    rec["launder_rc"] = rc
    rec["launder_seconds"] = round(secs, 1)
    rec["launder_ok"] = rc == 0 and out_model.exists()
    if rc != 0:
        rec["launder_error"] = _error_line(err)
    if out_model.exists():
        rec.update(_check_written(model, out_model, zoo, meta))
    for k in ("inspect_error", "launder_error", "written_error"):
        if rec[k]:
            rec[k] = rec[k].replace(str(zoo), "<zoo>")
    errors = [e for e in (rec["inspect_error"] and f"inspect: {rec['inspect_error']}",
                          rec["launder_error"] and f"launder: {rec['launder_error']}",
                          rec["written_error"] and f"written: {rec['written_error']}") if e]
    rec["error"] = "; ".join(errors) or None
    return rec


def _check_written(model: Path, out_model: Path, zoo: Path, meta: dict) -> dict:
    """Opset imports identical to the input's, runs in onnxruntime, test accuracy."""
    before, after = _onnx_facts(model), _onnx_facts(out_model)
    res = {"written_opset": after["opset"], "written_opset_same": after["opset_imports"] == before["opset_imports"],
           "written_error": None}
    if not res["written_opset_same"]:
        res["written_error"] = f"opset imports {before['opset_imports']} -> {after['opset_imports']}"
    probe = {"preprocess": meta["preprocess"], "input_layout": meta["input_layout"]}
    test = dict(np.load(zoo / "data" / "test.npz"))
    res["laundered_accuracy"] = _ort_accuracy(out_model, test, probe)
    res["written_runs_in_onnxruntime"] = not probe.get("ort_error")
    if probe.get("ort_error"):
        given = {"preprocess": meta["preprocess"], "input_layout": meta["input_layout"]}
        if _ort_accuracy(model, test, given) is None:
            # the exported model itself does not run in onnxruntime as written (audit rewrites it
            # to run): the written model is judged by `audit evaluate`, as the input was
            res["laundered_accuracy"] = _audit_accuracy(out_model, zoo, meta)
            if res["laundered_accuracy"] is None:
                res["written_error"] = "audit evaluate failed on the written model"
        else:
            res["written_error"] = f"onnxruntime: {probe['ort_error']}"
    return res


def _audit_accuracy(model: Path, zoo: Path, meta: dict) -> float | None:
    cmd = [*_audit_cmd(), "evaluate", str(model), "--data", str(zoo / "data" / "test.npz"), "--json",
           *_pp_args(meta["preprocess"]), "--device", "cpu"]
    rc, out, _, _ = _run(cmd, 300)
    try:
        return round(float(json.loads(out)["accuracy"]), 4) if rc == 0 else None
    except (ValueError, KeyError, TypeError):
        return None


def _portable(argv: list[str], zoo: Path) -> str:
    """The command line with the zoo as <zoo>, repository paths relative, interpreters by name."""
    out = []
    for a in argv:
        for prefix, repl in ((str(zoo), "<zoo>"), (str(REPO) + "/", "")):
            a = a.replace(prefix, repl)
        if "=" in a and os.path.isabs(a.split("=", 1)[1]):
            k, v = a.split("=", 1)
            a = f"{k}=<{Path(v).parent.parent.name}>/bin/{Path(v).name}"
        elif os.path.isabs(a):
            a = f"<{Path(a).name}>"
        out.append(a)
    return " ".join(out)


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except Exception:
        return None


def _git_dirty() -> bool | None:
    try:
        cmd = ["git", "status", "--porcelain", "--untracked-files=no", "--", "audit", "graphs", "converters"]
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True).stdout
        return bool(out.strip())
    except Exception:
        return None


def table(records: list[dict]) -> str:
    def fmt(v, spec=""):
        if v is None:
            return "-"
        if isinstance(v, bool):
            return "yes" if v else "**no**"
        return format(v, spec)

    lines = ["| model | exporter | version | opset | arch | inspect ok | parity | acc | launder ok "
             "| written opset | laundered acc |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        ver = r.get("exporter_version") or "-"
        lines.append(f"| {r['name']} | {r.get('path')} | {ver} | {fmt(r.get('opset'))} | {r.get('arch')} "
                     f"| {fmt(r['inspect_ok'])} | {fmt(r['parity_rel'], '.1e')} | {fmt(r['accuracy'], '.3f')} "
                     f"| {fmt(r['launder_ok'])} | {fmt(r['written_opset'])} | {fmt(r['laundered_accuracy'], '.3f')} |")
    return "\n".join(lines)


def cmd_audit(args, argv_for_record: list[str] | None = None) -> int:
    zoo = Path(args.zoo).resolve()
    if not (zoo / "data" / "test.npz").exists():
        print(f"{zoo}: no data/test.npz (run `build` first)", file=sys.stderr)
        return 2
    settings = dict(AUDIT_SETTINGS, rounds=args.rounds, epochs=args.epochs, nc_epochs=args.nc_epochs,
                    nc_epochs_later=args.nc_epochs_later, lr=args.lr)
    folders = sorted(p.parent for p in zoo.glob("*/meta.json"))
    if args.only:
        keep = set(args.only.split(","))
        folders = [f for f in folders
                   if f.name in keep or json.loads((f / "meta.json").read_text()).get("path") in keep]
    records = []
    t0 = time.perf_counter()
    for f in folders:
        rec = audit_one(f, zoo, settings)
        records.append(rec)
        print(f"{rec['name']:<28} inspect {'ok' if rec['inspect_ok'] else 'FAIL'}  launder "
              f"{'ok' if rec['launder_ok'] else 'FAIL'}  {rec['error'] or ''}", flush=True)
    import onnx
    import onnxruntime
    import torch

    result = {
        "benchmark": "exporters",
        "command": _portable(argv_for_record or ["python", "bench/exporters.py", *sys.argv[1:]], zoo),
        "git_commit": _git_commit(), "tool_sources_modified": _git_dirty(),
        "zoo": "<zoo>: the folder given to `bench/exporters.py build --out`",
        "data": {"dataset": "sklearn digits, bilinear 8x8 -> 16x16 uint8", "split": "stratified 70/30, seed 0",
                 "test": "<zoo>/data/test.npz", "subset": f"<zoo>/data/subset{SUBSET}.npz",
                 "n_test": int(len(np.load(zoo / "data" / "test.npz")["y"])), "n_subset": SUBSET},
        "audit_settings": settings,
        "audit_commands": {
            "inspect": ("audit inspect <model> --data <zoo>/data/test.npz --json --scale S --mean M --std D "
                        "--device cpu"),
            "launder": (f"audit launder <model> --data <zoo>/data/subset{SUBSET}.npz -o <model dir>/laundered.onnx "
                        f"--rounds {settings['rounds']} --quiet --epochs {settings['epochs']} --nc-epochs "
                        f"{settings['nc_epochs']} --nc-epochs-later {settings['nc_epochs_later']} --lr "
                        f"{settings['lr']} --seed {settings['seed']} --scale S --mean M --std D --device cpu")},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                    "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                    "onnx2torch": _version("onnx2torch"), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        "seconds": round(time.perf_counter() - t0, 1),
        "summary": {"models": len(records), "built": sum(bool(r["build_ok"]) for r in records),
                    "inspect_ok": sum(r["inspect_ok"] for r in records),
                    "launder_ok": sum(r["launder_ok"] for r in records)},
        "models": records,
    }
    out = Path(args.results)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=out.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(result, fh, indent=2)
        fh.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, out)
    print()
    print(table(records))
    print(f"\n{result['summary']}; {result['seconds']} s; written {_portable([str(out)], zoo)}")
    return 0


def cmd_run(args) -> int:
    zoo = Path(args.out).resolve()
    make_data(zoo)
    pins: dict[str, str] = {}
    for spec in args.python_for or []:
        names, _, py = spec.partition("=")
        for n in names.split(","):
            pins[n] = py
    paths = [p for p in args.paths.split(",") if p] if args.paths else list(PATHS)
    me = Path(__file__).resolve()
    for p in paths:
        py = pins.get(p, sys.executable)
        cmd = [py, str(me), "build", "--out", str(zoo), "--paths", p]
        print(f"$ {_portable(cmd, zoo)}", flush=True)
        rc = subprocess.run(cmd).returncode
        if rc:
            print(f"build of {p} exited {rc}", flush=True)
    argv = ["python", "bench/exporters.py", *sys.argv[1:]]
    return cmd_audit(argparse.Namespace(zoo=str(zoo), only=None, results=args.results, rounds=args.rounds,
                                        epochs=args.epochs, nc_epochs=args.nc_epochs,
                                        nc_epochs_later=args.nc_epochs_later, lr=args.lr), argv)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    def audit_opts(p):
        p.add_argument("--results", default=str(RESULTS), help="results JSON (default bench/results/exporters.json)")
        p.add_argument("--rounds", type=int, default=AUDIT_SETTINGS["rounds"])
        p.add_argument("--epochs", type=int, default=AUDIT_SETTINGS["epochs"])
        p.add_argument("--nc-epochs", type=int, default=AUDIT_SETTINGS["nc_epochs"])
        p.add_argument("--nc-epochs-later", type=int, default=AUDIT_SETTINGS["nc_epochs_later"])
        p.add_argument("--lr", default=AUDIT_SETTINGS["lr"], help="launder --lr (a rate or auto)")

    b = sub.add_parser("build", help="build exporter paths with this interpreter")
    b.add_argument("--out", default=str(DEFAULT_ZOO))
    b.add_argument("--paths", default=None, help=f"comma-separated, of {','.join(PATHS)} (default all)")
    b.add_argument("--only", default=None, help="comma-separated model names to (re)build")
    a = sub.add_parser("audit", help="audit every model of a built zoo (no rebuild)")
    a.add_argument("zoo", nargs="?", default=str(DEFAULT_ZOO))
    a.add_argument("--only", default=None, help="comma-separated model names or exporter paths")
    audit_opts(a)
    r = sub.add_parser("run", help="build every path (each in its interpreter), then audit")
    r.add_argument("--out", default=str(DEFAULT_ZOO))
    r.add_argument("--paths", default=None)
    r.add_argument("--python-for", action="append", metavar="NAMES=PYTHON",
                   help="build these comma-separated paths with PYTHON (default: this interpreter)")
    audit_opts(r)
    sub.add_parser("available", help="paths this interpreter can build, as JSON")
    args = ap.parse_args(argv)
    if args.cmd == "build":
        return cmd_build(args)
    if args.cmd == "audit":
        return cmd_audit(args)
    if args.cmd == "run":
        return cmd_run(args)
    print(json.dumps(available(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
