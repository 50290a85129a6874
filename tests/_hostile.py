"""Helpers of the hostile-input tests: small models and data sets, a guarded CLI call, and
snapshots proving that inputs are never written."""

from __future__ import annotations

import gzip
import hashlib
import threading
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from audit.cli import run

CALL_DEADLINE_S = 30.0


def conv_model(seed: int = 0) -> onnx.ModelProto:
    """[N,1,8,8] -> Conv 4x3x3 -> Relu -> Flatten -> Gemm 10."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "W1"),
             numpy_helper.from_array(rng.standard_normal((10, 4 * 8 * 8)).astype(np.float32), "W2"),
             numpy_helper.from_array(np.zeros(10, np.float32), "B2")]
    nodes = [helper.make_node("Conv", ["x", "W1"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "W2", "B2"], ["y"], transB=1, name="fc")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def matmul_model(w: np.ndarray | None = None, *, constant_bias: np.ndarray | None = None) -> onnx.ModelProto:
    """[N,1,8,8] -> Flatten -> MatMul W [64,10] -> Add B: normalisation fuses the MatMul and the Add,
    and lifts the bias when it is a Constant node."""
    w = np.random.default_rng(1).standard_normal((64, 10)).astype(np.float32) if w is None else w
    inits = [numpy_helper.from_array(w.astype(np.float32), "W")]
    nodes = [helper.make_node("Flatten", ["x"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "W"], ["mm"], name="mm")]
    bias = np.zeros(10, np.float32) if constant_bias is None else constant_bias.astype(np.float32)
    if constant_bias is None:
        inits.append(numpy_helper.from_array(bias, "B"))
    else:
        nodes.append(helper.make_node("Constant", [], ["B"], name="bias",
                                      value=numpy_helper.from_array(bias, "Bv")))
    nodes.append(helper.make_node("Add", ["mm", "B"], ["y"], name="add"))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def images(n: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 8, 8), dtype=np.uint8), np.arange(n) % 10


def write_npz(path: Path, n: int = 20) -> Path:
    x, y = images(n)
    np.savez(path, x=x, y=y)
    return path


def write_idx_pair(folder: Path, *, gz: bool, n: int = 20) -> Path:
    """MNIST-named IDX images and labels; returns the images file."""
    x, y = images(n)
    ext = ".gz" if gz else ""
    pairs = [(folder / f"train-images-idx3-ubyte{ext}", 2051, x),
             (folder / f"train-labels-idx1-ubyte{ext}", 2049, y.astype(np.uint8))]
    for path, magic, arr in pairs:
        raw = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
        raw += arr.astype(np.uint8).tobytes()
        path.write_bytes(gzip.compress(raw, mtime=0) if gz else raw)
    return pairs[0][0]


def write_png_folder(root: Path, n: int = 10) -> Path:
    x, y = images(n)
    for i, (img, label) in enumerate(zip(x, y)):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / str(label) / f"{i}.png")
    return root


def snapshot(*roots: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mtime of every file under the roots (links not followed)."""
    snap = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for p in files:
            snap[str(p)] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
    return snap


def guarded_cli(capsys, *args, deadline: float = CALL_DEADLINE_S) -> tuple[int, str, str]:
    """audit.cli.run in a thread that must finish within the deadline; (code, stdout, stderr)."""
    capsys.readouterr()
    result: dict[str, object] = {}

    def target() -> None:
        try:
            result["rc"] = run([str(a) for a in args])
        except BaseException as exc:  # reported below, with the call
            result["exc"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(deadline)
    out, err = capsys.readouterr()
    assert not t.is_alive(), f"audit {' '.join(map(str, args))} still running after {deadline} s"
    assert "exc" not in result, f"audit {' '.join(map(str, args))} raised {result['exc']!r}"
    return int(result["rc"]), out, err


def assert_refused(rc: int, err: str, *fragments: str) -> None:
    """Exit 2 and exactly one `error:` line naming the fragments; never a traceback."""
    lines = err.splitlines()
    assert rc == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert "Traceback" not in err and "internal error" not in err, err
    for f in fragments:
        assert f in lines[0], (f, lines[0])
