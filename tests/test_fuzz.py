"""Byte flips and truncations of valid inputs (ONNX model, npz, IDX raw and gzip, PNG), fixed seeds.

Each mutant goes through the CLI: exit 0 (only when the mutant still is valid input, checked
independently) or 2 with at most one `error:` line; never an internal error, a traceback or a
hang; the inputs are never written.
"""

from __future__ import annotations

import gzip
import io
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from _hostile import conv_model, guarded_cli, snapshot, write_idx_pair, write_npz, write_png_folder
from PIL import Image

MUTANTS = {"onnx": 16, "npz": 10, "idx_gz": 8, "idx_raw": 6, "png": 8}


def mutate(raw: bytes, seed: int) -> bytes:
    """Even seeds flip 1-8 bytes (at least one), odd seeds truncate (sometimes also flip)."""
    rng = np.random.default_rng(seed)
    data = bytearray(raw)
    if seed % 2:
        data = data[: int(rng.integers(1, len(data)))]
    for _ in range(int(rng.integers(1 if seed % 2 == 0 else 0, 9))):
        i = int(rng.integers(0, len(data)))
        data[i] ^= int(rng.integers(1, 256))
    return bytes(data)


def check_outcome(rc: int, out: str, err: str, valid: bool) -> None:
    assert "Traceback" not in err and "internal error" not in err, err
    assert rc in (0, 2), (rc, err)
    if rc == 2:
        lines = err.splitlines()
        assert len(lines) <= 1 and all(line.startswith("error: ") for line in lines), err
    else:
        assert valid, f"accepted an invalid input: {out}"


# ------------------------------------------------------------------------------------------
# independent validity checks (not the code under test)


def onnx_runs(path: Path) -> bool:
    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (y,) = sess.run(None, {sess.get_inputs()[0].name: np.zeros((2, 1, 8, 8), np.float32)})
        return y.shape == (2, 10)
    except Exception:
        return False


def npz_valid(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            arrays = {n: np.load(io.BytesIO(z.read(n)), allow_pickle=False) for n in z.namelist()}
        return arrays["x.npy"].shape == (20, 8, 8) and len(arrays["y.npy"]) == 20
    except Exception:
        return False


def idx_valid(images: Path) -> bool:
    labels = images.with_name(images.name.replace("images-idx3", "labels-idx1"))
    try:
        raws = [gzip.decompress(p.read_bytes()) if p.name.endswith(".gz") else p.read_bytes()
                for p in (images, labels)]
    except Exception:
        return False
    img, lab = raws
    n = int.from_bytes(img[4:8], "big")
    rows, cols = int.from_bytes(img[8:12], "big"), int.from_bytes(img[12:16], "big")
    return (img[:4] == (2051).to_bytes(4, "big") and lab[:4] == (2049).to_bytes(4, "big")
            and n == int.from_bytes(lab[4:8], "big") and rows > 0 and cols > 0
            and len(img) >= 16 + n * rows * cols and len(lab) >= 8 + n and max(lab[8:8 + n], default=0) < 10)


def png_valid(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            im.load()
        return True
    except Exception:
        return False


# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fuzz_good")
    f = {"model": root / "model.onnx"}
    onnx.save(conv_model(0), str(f["model"]))
    f["npz"] = write_npz(root / "data.npz")
    (root / "gz").mkdir()
    f["idx_gz"] = write_idx_pair(root / "gz", gz=True)
    (root / "raw").mkdir()
    f["idx_raw"] = write_idx_pair(root / "raw", gz=False)
    f["png"] = write_png_folder(root / "png", n=4)
    return f


def run_mutant(capsys, tmp_path: Path, args: list, valid: bool) -> None:
    before = snapshot(tmp_path)
    rc, out, err = guarded_cli(capsys, *args, "--device", "cpu")
    check_outcome(rc, out, err, valid)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("seed", range(MUTANTS["onnx"]))
def test_fuzz_onnx_model(seed, good, tmp_path, capsys):
    bad = tmp_path / "mutant.onnx"
    bad.write_bytes(mutate(good["model"].read_bytes(), seed))
    run_mutant(capsys, tmp_path, ["inspect", bad], onnx_runs(bad))


@pytest.mark.parametrize("seed", range(MUTANTS["npz"]))
def test_fuzz_npz(seed, good, tmp_path, capsys):
    bad = tmp_path / "mutant.npz"
    bad.write_bytes(mutate(good["npz"].read_bytes(), 1000 + seed))
    run_mutant(capsys, tmp_path, ["evaluate", good["model"], "--data", bad], npz_valid(bad))


@pytest.mark.parametrize("kind,seed", [(k, s) for k in ("idx_gz", "idx_raw") for s in range(MUTANTS[k])])
def test_fuzz_idx(kind, seed, good, tmp_path, capsys):
    src = good[kind]
    labels = src.with_name(src.name.replace("images-idx3", "labels-idx1"))
    images = tmp_path / src.name
    which = seed % 3      # 0: images mutated, 1: labels mutated, 2: both
    for path, original, salt in ((images, src, 0), (tmp_path / labels.name, labels, 1)):
        raw = original.read_bytes()
        hit = which == 2 or which == salt
        path.write_bytes(mutate(raw, 2000 + 10 * seed + salt) if hit else raw)
    run_mutant(capsys, tmp_path, ["evaluate", good["model"], "--data", images], idx_valid(images))


@pytest.mark.parametrize("seed", range(MUTANTS["png"]))
def test_fuzz_png(seed, good, tmp_path, capsys):
    folder = tmp_path / "png"
    files = sorted(p for p in good["png"].rglob("*.png"))
    for i, src in enumerate(files):
        dst = folder / src.relative_to(good["png"])
        dst.parent.mkdir(parents=True, exist_ok=True)
        raw = src.read_bytes()
        dst.write_bytes(mutate(raw, 3000 + 10 * seed + i) if i == seed % len(files) else raw)
    valid = all(png_valid(p) for p in folder.rglob("*.png"))
    run_mutant(capsys, tmp_path, ["evaluate", good["model"], "--data", folder], valid)
