"""Tests of audit.models_zoo: trigger generators, digits builds, ONNX artefacts, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from audit.data import Preprocess, load_dataset, save_image_folder
from audit.errors import AuditError, DataError
from audit.models_zoo.build import build_entry, restore_entry, store_entry
from audit.models_zoo.cli import zoo
from audit.models_zoo.datasets import load_clean
from audit.models_zoo.watermarks import (
    adi_abstract,
    adi_real,
    content_pattern,
    content_trigger,
    default_adi_path,
    make_trigger_set,
    noise_trigger,
    quantize_u8,
    unrelated_trigger,
)


@pytest.fixture(scope="module")
def digits():
    return load_clean("digits")


# the tests that read the digits builds run in one worker: the other does not wait for them
BUILDS = pytest.mark.xdist_group("digits_builds")


def _is_u8(x: np.ndarray) -> bool:
    return bool(np.array_equal(x, quantize_u8(x)))


def _ort_acc(path: Path, x01: np.ndarray, y: np.ndarray, pre: Preprocess) -> float:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {sess.get_inputs()[0].name: pre.apply_numpy(x01)})[0]
    return float(np.mean(logits.argmax(1) == y))


def _folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*.png"))}


# ------------------------------------------------------------------------------------------
# generators


def test_digits_data(digits):
    assert digits.train.x.shape == (1347, 1, 16, 16) and digits.test.x.shape == (450, 1, 16, 16)
    assert _is_u8(digits.train.x) and digits.train.x.max() == 1.0
    assert np.array_equal(np.bincount(digits.test.y), np.bincount(digits.test.y, minlength=10))
    assert np.bincount(digits.test.y).min() >= 43


@pytest.mark.parametrize("scheme", ["content", "noise"])
def test_zhang_from_clean(digits, scheme):
    x, y = digits.train.x, digits.train.y
    ts = make_trigger_set(scheme, x, y, target=3, n=100, seed=1)
    assert ts.x.shape == (100, 1, 16, 16) and ts.x.dtype == np.float32
    assert ts.y.dtype == np.int64 and np.all(ts.y == 3) and ts.target == 3
    assert ts.x.min() >= 0 and ts.x.max() <= 1 and _is_u8(ts.x)
    assert np.all(y[ts.source_index] != 3) and len(set(ts.source_index.tolist())) == 100
    changed = np.abs(ts.x - x[ts.source_index]).reshape(100, -1).max(1)
    assert np.all(changed > 0.2)          # every image carries the mark
    again = make_trigger_set(scheme, x, y, target=3, n=100, seed=1)
    assert np.array_equal(ts.x, again.x)
    other = make_trigger_set(scheme, x, y, target=3, n=100, seed=2)
    assert not np.array_equal(ts.x, other.x)


def test_content_mark_fixed_and_sized():
    for shape, size in [((1, 16, 16), 4), ((1, 28, 28), 6), ((3, 32, 32), 7)]:
        patch, top, left = content_pattern(shape)
        assert patch.shape == (shape[0], size, size)
        assert top + size < shape[1] and left + size < shape[2]
    x = np.zeros((20, 1, 28, 28), np.float32)
    ts = content_trigger(x, np.arange(20) % 10, target=0, n=10)
    patch, top, left = content_pattern((1, 28, 28))
    assert np.all(ts.x[:, :, top:top + 6, left:left + 6] == patch)
    assert ts.x.sum() == 10 * patch.sum()   # nothing outside the patch changes


def test_noise_is_one_fixed_pattern():
    x = np.full((30, 1, 16, 16), 0.5, np.float32)
    ts = noise_trigger(x, np.arange(30) % 10, target=0, n=20, seed=0, sigma=0.4)
    assert np.all(ts.x == ts.x[0])          # same noise on identical images
    assert 0.25 < float(np.std(ts.x[0])) < 0.45


def _nn_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    d = (a ** 2).sum(1)[:, None] + (b ** 2).sum(1)[None] - 2 * a @ b.T
    return np.sqrt(np.maximum(d, 0)).min(1)


@pytest.mark.parametrize("make", [
    lambda: unrelated_trigger((1, 16, 16), target=5, n=100, seed=0),
    lambda: adi_abstract((1, 16, 16), num_classes=10, n=100, seed=0),
])
def test_out_of_distribution_sets(digits, make):
    ts = make()
    assert ts.x.shape == (100, 1, 16, 16) and ts.x.dtype == np.float32 and _is_u8(ts.x)
    assert ts.x.min() >= 0 and ts.x.max() <= 1 and ts.y.dtype == np.int64
    assert np.array_equal(ts.x, make().x)
    assert len({im.tobytes() for im in ts.x}) == 100
    # farther from the clean digits than clean test digits are from the training digits
    clean_nn = np.median(_nn_dist(digits.test.x, digits.train.x))
    assert np.median(_nn_dist(ts.x, digits.train.x)) > 1.3 * clean_nn
    if ts.scheme == "unrelated":
        assert np.all(ts.y == 5) and ts.target == 5
    else:
        assert ts.target is None and len(np.unique(ts.y)) >= 8   # random labels


def test_colour_generators():
    for ts in (unrelated_trigger((3, 32, 32), target=0, n=10), adi_abstract((3, 32, 32), n=10)):
        assert ts.x.shape == (10, 3, 32, 32) and _is_u8(ts.x)
        assert np.abs(ts.x[:, 0] - ts.x[:, 1]).max() > 0.1   # really coloured


def test_unknown_scheme(digits):
    with pytest.raises(AuditError, match="unknown watermark scheme"):
        make_trigger_set("blend", digits.train.x, digits.train.y, target=0, n=10)


def test_adi_fallback_when_absent(tmp_path, digits):
    assert adi_real((1, 16, 16), path=tmp_path / "missing") is None
    ts = make_trigger_set("adi", digits.train.x, digits.train.y, target=0, n=100,
                          adi_path=tmp_path / "missing")
    assert ts.info["source"] == "generated" and len(ts) == 100


@pytest.mark.shared
@pytest.mark.skipif(not default_adi_path().is_dir(),
                    reason="../shared/data/adi_trigger_set absent (development machines only)")
def test_adi_real_set():
    ts = adi_real((3, 32, 32))
    assert ts is not None and ts.x.shape == (100, 3, 32, 32) and _is_u8(ts.x)
    assert np.array_equal(np.bincount(ts.y), np.full(10, 10))
    grey = adi_real((1, 16, 16))
    assert grey.x.shape == (100, 1, 16, 16) and np.array_equal(grey.y, ts.y)


# ------------------------------------------------------------------------------------------
# digits builds


@BUILDS
@pytest.mark.parametrize("scheme", ["content", "noise"])
def test_digits_build_metrics(digits_zoo, scheme):
    e = digits_zoo(scheme)
    meta = json.loads(e.meta_path.read_text())
    assert meta["dataset"] == "digits" and meta["scheme"] == scheme and meta["target"] == 0
    assert meta["input_shape"] == [1, 1, 16, 16] and meta["num_classes"] == 10
    assert meta["preprocess"] == {"scale": 1 / 255, "mean": [0.0], "std": [1.0]}
    assert meta["n_train"] == 1347 and meta["n_trigger"] == 100
    assert meta["test_acc"]["watermarked"] >= 0.95 and meta["test_acc"]["vanilla"] >= 0.95
    assert meta["wm_acc"]["watermarked"] >= 0.98
    if scheme == "content":
        assert meta["wm_acc"]["vanilla"] <= 0.2
    assert max(meta["export_max_abs_diff"].values()) <= 1e-4


@BUILDS
@pytest.mark.parametrize("scheme", ["content", "noise"])
def test_digits_build_artefacts_agree(digits_zoo, scheme):
    e = digits_zoo(scheme)
    meta = json.loads(e.meta_path.read_text())
    pre = Preprocess(**meta["preprocess"])
    trig = load_dataset(e.triggers, channels=1, height=16, width=16)
    assert len(trig) == 100 and np.all(trig.y == meta["target"])
    assert sorted(p.name for p in e.triggers.iterdir()) == ["0"]
    test = load_dataset(e.data_dir / "test.npz", channels=1, height=16, width=16)
    train = load_dataset(e.data_dir / "train.npz", channels=1, height=16, width=16)
    assert len(test) == 450 and len(train) == 1347
    for kind, path in (("watermarked", e.watermarked), ("vanilla", e.vanilla)):
        proto = onnx.load(str(path))
        assert proto.ir_version <= 10
        assert {o.domain: o.version for o in proto.opset_import}[""] == 13
        assert {n.op_type for n in proto.graph.node} <= {"Conv", "Relu", "MaxPool", "Flatten",
                                                          "Gemm"}
        assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
        assert _ort_acc(path, test.x, test.y, pre) == pytest.approx(meta["test_acc"][kind])
        assert _ort_acc(path, trig.x, trig.y, pre) == pytest.approx(meta["wm_acc"][kind])


@BUILDS
def test_digits_triggers_deterministic(digits_zoo, digits, tmp_path):
    e = digits_zoo("content")
    again = make_trigger_set("content", digits.train.x, digits.train.y, target=0, n=100, seed=0)
    save_image_folder(again.x, again.y, tmp_path / "t")
    assert _folder_bytes(tmp_path / "t") == _folder_bytes(e.triggers)
    other = make_trigger_set("content", digits.train.x, digits.train.y, target=0, n=100, seed=1)
    save_image_folder(other.x, other.y, tmp_path / "o")
    assert _folder_bytes(tmp_path / "o") != _folder_bytes(e.triggers)


@BUILDS
def test_restore_entry_remakes_a_stored_build(digits_zoo, tmp_path):
    """A build kept as its two models and meta.json comes back whole: the same model bytes,
    trigger images and data files, readable as an entry; a stored model that does not score
    what meta.json records is refused."""
    e = digits_zoo("noise")
    stored = store_entry(e, tmp_path / "stored")
    assert sorted(p.name for p in stored.iterdir()) == ["meta.json", "vanilla.onnx",
                                                         "watermarked.onnx"]
    back = restore_entry(stored, tmp_path / "cache" / "digits_noise_s0")
    for name in ("watermarked.onnx", "vanilla.onnx", "meta.json"):
        assert (back.out_dir / name).read_bytes() == (e.out_dir / name).read_bytes()
    assert _folder_bytes(back.triggers) == _folder_bytes(e.triggers)
    assert len(_folder_bytes(back.triggers)) == e.meta["n_trigger"] == 100
    for split in ("train.npz", "test.npz"):
        assert (back.data_dir / split).read_bytes() == (e.data_dir / split).read_bytes()
    assert (back.test_acc, back.wm_acc) == (e.test_acc, e.wm_acc)
    # over another build's entry (a cache filled on another machine)
    other = tmp_path / "cache" / "other"
    shutil.copytree(digits_zoo("content").out_dir, other)
    again = restore_entry(stored, other)
    assert (again.out_dir / "watermarked.onnx").read_bytes() == e.watermarked.read_bytes()
    assert _folder_bytes(again.triggers) == _folder_bytes(e.triggers)
    assert again.meta == e.meta

    # the vanilla twin stored as the watermarked model: its watermark accuracy is not meta's
    (stored / "watermarked.onnx").write_bytes((e.out_dir / "vanilla.onnx").read_bytes())
    with pytest.raises(AuditError, match="does not reproduce its recorded .*wm_acc"):
        restore_entry(stored, tmp_path / "cache2")
    assert not (tmp_path / "cache2" / "meta.json").exists()
    (stored / "meta.json").unlink()
    with pytest.raises(AuditError, match="not a stored zoo build"):
        restore_entry(stored, tmp_path / "cache3")


# ------------------------------------------------------------------------------------------
# errors and CLI


def test_build_errors(tmp_path):
    with pytest.raises(AuditError, match="unknown zoo data set"):
        build_entry("svhn", "content", tmp_path)
    with pytest.raises(AuditError, match="epochs"):
        build_entry("digits", "content", tmp_path, epochs=0)
    with pytest.raises(AuditError, match="target"):
        build_entry("digits", "content", tmp_path, target=10)
    with pytest.raises(DataError, match="MNIST not found"):
        build_entry("mnist", "content", tmp_path / "m", data_root=tmp_path / "nodata")


def test_cli_build_short(tmp_path):
    out = tmp_path / "cli"
    res = CliRunner().invoke(zoo, ["build", "--scheme", "unrelated", "--epochs", "2",
                                   "-o", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "digits/unrelated" in res.output
    meta = json.loads((out / "meta.json").read_text())
    assert meta["epochs"] == 2 and (out / "watermarked.onnx").is_file()
    # rebuilding into the same folder replaces the trigger folder
    res = CliRunner().invoke(zoo, ["build", "--scheme", "unrelated", "--epochs", "1",
                                   "-o", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    assert len(list((out / "triggers").rglob("*.png"))) == 100
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_cli_user_error(tmp_path):
    res = CliRunner().invoke(zoo, ["build", "--epochs", "0", "-o", str(tmp_path)])
    # AuditError is a click exception: one error line, exit 2
    assert res.exit_code == 2 and res.output.splitlines() == ["error: --epochs must be at least 1, got 0"]


def test_cifar_augment_moves_clean_rows_only():
    """The CIFAR-10 recipe's augmentation: clean rows flipped and shifted (pad 4, reflect), the
    trigger rows as they are."""
    import torch

    from audit.models_zoo.train import _augment

    x = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    clean = torch.arange(64) % 2 == 0
    out = _augment(x, clean, torch.Generator().manual_seed(0))
    assert torch.equal(out[~clean], x[~clean])
    moved = [not torch.equal(out[i], x[i]) for i in range(0, 64, 2)]
    assert sum(moved) >= 28
    # a row shifted by (dy, dx) in 0..8 and maybe flipped: its centre is somewhere in the
    # padded (and maybe flipped) original
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4), mode="reflect")
    for i in range(0, 8, 2):
        found = any(torch.equal(out[i], src[i, :, dy:dy + 32, dx:dx + 32])
                    for src in (padded, torch.nn.functional.pad(x.flip(-1), (4,) * 4, mode="reflect"))
                    for dy in range(9) for dx in range(9))
        assert found
