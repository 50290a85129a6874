"""Tests of audit.data: data-set formats, geometry conversion, preprocessing, subsets."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from audit.data import (
    Dataset,
    Preprocess,
    load_dataset,
    save_image_folder,
    stratified_subset,
)
from audit.errors import AuditError, DataError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"shared real data not available at {SHARED}"
)


# ------------------------------------------------------------------------------------------
# helpers


def pillow_luma(r: int, g: int, b: int) -> int:
    """What Pillow's RGB -> L conversion gives for one pixel."""
    return int(np.asarray(Image.new("RGB", (1, 1), (r, g, b)).convert("L"))[0, 0])


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Bytes and mtime of every file under root (to prove loading writes nothing)."""
    return {str(p): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def write_idx(path: Path, magic: int, arr: np.ndarray, *, truncate: int = 0) -> None:
    """Write an unsigned-byte IDX file (gzip when the name ends with .gz)."""
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    if truncate:
        data = data[:-truncate]
    if path.name.endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)


def write_mnist_pair(folder: Path, x: np.ndarray, y: np.ndarray, *, prefix: str = "train",
                     gz: bool = True, dot: bool = False) -> Path:
    """Write images + labels IDX files with MNIST naming; return the images path."""
    sep = "." if dot else "-"
    ext = ".gz" if gz else ""
    images = folder / f"{prefix}-images{sep}idx3-ubyte{ext}"
    write_idx(images, 2051, x)
    write_idx(folder / f"{prefix}-labels{sep}idx1-ubyte{ext}", 2049, y)
    return images


def assert_one_line(exc: pytest.ExceptionInfo, *needles: str) -> None:
    msg = str(exc.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, msg


# ------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture()
def image_folder(tmp_path: Path) -> Path:
    """Class folders 0..2 with PNG/JPEG in RGB, RGBA, L and P modes, sizes 4x4 and 8x6."""
    root = tmp_path / "imgs"
    for label in ("0", "1", "2"):
        (root / label).mkdir(parents=True)
    Image.new("RGB", (4, 4), (10, 20, 30)).save(root / "0" / "10.png")
    Image.new("RGBA", (4, 4), (200, 100, 50, 0)).save(root / "0" / "2.png")   # alpha dropped
    Image.new("L", (8, 6), 77).save(root / "1" / "a.png")                     # resized, grey
    Image.new("RGB", (6, 8), (255, 0, 0)).save(root / "1" / "b.jpg", quality=95)
    Image.new("RGB", (4, 4), (0, 128, 255)).convert("P").save(root / "2" / "p.png")
    Image.new("RGB", (4, 4), (1, 2, 3)).save(root / "2" / "c.bmp")
    (root / "2" / "notes.txt").write_text("not an image")          # skipped: not an image
    (root / "2" / ".hidden.png").write_bytes(b"garbage")           # skipped: hidden
    (root / "LICENSE").write_text("top-level files are ignored")   # skipped: not a folder
    return root


# ------------------------------------------------------------------------------------------
# format 1: image folders


def test_folder_rgb_values_order_and_labels(image_folder: Path) -> None:
    ds = load_dataset(image_folder, channels=3, height=4, width=4, num_classes=3)
    assert ds.x.shape == (6, 3, 4, 4) and ds.x.dtype == np.float32
    assert ds.y.dtype == np.int64
    np.testing.assert_array_equal(ds.y, [0, 0, 1, 1, 2, 2])
    assert ds.source == str(image_folder)
    # natural order: 2.png (RGBA, alpha dropped -> colour kept) before 10.png
    np.testing.assert_array_equal(ds.x[0, :, 0, 0] * 255, [200, 100, 50])
    np.testing.assert_array_equal(ds.x[1, :, 0, 0] * 255, [10, 20, 30])
    assert np.all(ds.x[1] == ds.x[1, :, :1, :1])  # constant image stays constant
    # grey 8x6 resized to 4x4 and repeated to RGB
    np.testing.assert_array_equal(ds.x[2] * 255, np.full((3, 4, 4), 77))
    # red JPEG, lossy: close to (255, 0, 0)
    np.testing.assert_allclose(ds.x[3, :, 2, 2] * 255, [255, 0, 0], atol=4)
    np.testing.assert_array_equal(ds.x[4, :, 3, 3] * 255, [1, 2, 3])  # c.bmp before p.png
    # palette image expanded through its palette
    palette_rgb = np.asarray(Image.new("RGB", (4, 4), (0, 128, 255)).convert("P").convert("RGB"))
    np.testing.assert_array_equal(ds.x[5].transpose(1, 2, 0) * 255, palette_rgb)
    # canonical form: exactly u8 / 255
    np.testing.assert_array_equal(ds.x, np.round(ds.x * 255).astype(np.float32) / 255)
    np.testing.assert_array_equal(ds.classes(), [0, 1, 2])


def test_folder_grey_uses_pillow_luma(image_folder: Path) -> None:
    ds = load_dataset(image_folder, channels=1, height=4, width=4)
    assert ds.x.shape == (6, 1, 4, 4)
    assert pillow_luma(10, 20, 30) == 18  # (10*19595 + 20*38470 + 30*7471 + 0x8000) >> 16
    assert ds.x[1, 0, 0, 0] * 255 == pytest.approx(18)
    assert ds.x[0, 0, 0, 0] * 255 == pytest.approx(pillow_luma(200, 100, 50))
    assert ds.x[2, 0, 0, 0] * 255 == pytest.approx(77)
    assert ds.x[4, 0, 0, 0] * 255 == pytest.approx(pillow_luma(1, 2, 3))


def test_folder_resize_matches_pillow_bilinear(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(9, 13, 3), dtype=np.uint8)
    (tmp_path / "d" / "4").mkdir(parents=True)
    Image.fromarray(pixels).save(tmp_path / "d" / "4" / "x.png")
    ds = load_dataset(tmp_path / "d", channels=3, height=5, width=7)
    expected = np.asarray(Image.fromarray(pixels).resize((7, 5), Image.Resampling.BILINEAR))
    assert ds.x.shape == (1, 3, 5, 7)
    np.testing.assert_array_equal(np.round(ds.x[0] * 255).transpose(1, 2, 0), expected)
    np.testing.assert_array_equal(ds.y, [4])


def test_folder_four_channels_and_limit(image_folder: Path) -> None:
    ds = load_dataset(image_folder, channels=4, height=2, width=2, limit=3)
    assert ds.x.shape == (3, 4, 2, 2)
    np.testing.assert_array_equal(ds.y, [0, 0, 1])
    np.testing.assert_array_equal(ds.x[0, :, 0, 0] * 255, [200, 100, 50, 0])  # own alpha
    np.testing.assert_array_equal(ds.x[1, :, 0, 0] * 255, [10, 20, 30, 255])  # opaque added


def test_folder_is_not_modified(image_folder: Path) -> None:
    before = snapshot(image_folder)
    load_dataset(image_folder, channels=1, height=3, width=3)
    assert snapshot(image_folder) == before
    assert sorted(p.name for p in image_folder.iterdir()) == ["0", "1", "2", "LICENSE"]


def test_folder_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="contains no images") as exc:
        load_dataset(empty, channels=1, height=4, width=4)
    assert_one_line(exc, str(empty))

    no_images = tmp_path / "noimg"
    (no_images / "0").mkdir(parents=True)
    (no_images / "0" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="contains no images"):
        load_dataset(no_images, channels=1, height=4, width=4)

    bad_class = tmp_path / "badclass"
    (bad_class / "cat").mkdir(parents=True)
    Image.new("L", (2, 2)).save(bad_class / "cat" / "a.png")
    with pytest.raises(DataError, match="'cat'") as exc:
        load_dataset(bad_class, channels=1, height=2, width=2)
    assert_one_line(exc, str(bad_class))

    garbage = tmp_path / "garbage"
    (garbage / "0").mkdir(parents=True)
    (garbage / "0" / "broken.png").write_bytes(b"\x89PNG this is not an image\n" * 3)
    with pytest.raises(DataError, match="cannot decode") as exc:
        load_dataset(garbage, channels=1, height=2, width=2)
    assert_one_line(exc, "broken.png")


def test_folder_label_outside_num_classes(tmp_path: Path) -> None:
    root = tmp_path / "d"
    for label in ("3", "12"):
        (root / label).mkdir(parents=True)
        Image.new("L", (2, 2)).save(root / label / "a.png")
    assert load_dataset(root, channels=1, height=2, width=2).y.tolist() == [3, 12]
    with pytest.raises(DataError, match=r"label 12 outside the model's classes 0\.\.9") as exc:
        load_dataset(root, channels=1, height=2, width=2, num_classes=10)
    assert_one_line(exc, str(root))


# ------------------------------------------------------------------------------------------
# format 2: npz


@pytest.fixture()
def u8_nhwc() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, size=(5, 6, 7, 3), dtype=np.uint8)


def test_npz_layouts_agree(tmp_path: Path, u8_nhwc: np.ndarray) -> None:
    y = np.array([0, 1, 2, 1, 0], dtype=np.uint8)
    nchw = u8_nhwc.transpose(0, 3, 1, 2)
    np.savez(tmp_path / "nhwc.npz", x=u8_nhwc, y=y)
    np.savez(tmp_path / "nchw.npz", x=nchw, y=y.reshape(-1, 1))
    np.savez(tmp_path / "float.npz", x=nchw.astype(np.float64) / 255, y=y.astype(np.int32))
    results = [load_dataset(tmp_path / name, channels=3, height=6, width=7, num_classes=3)
               for name in ("nhwc.npz", "nchw.npz", "float.npz")]
    expected = nchw.astype(np.float32) / 255
    for ds in results:
        assert ds.x.shape == (5, 3, 6, 7) and ds.x.dtype == np.float32
        np.testing.assert_allclose(ds.x, expected, atol=1e-7)
        np.testing.assert_array_equal(ds.y, [0, 1, 2, 1, 0])
        assert ds.y.dtype == np.int64
    np.testing.assert_array_equal(results[0].x, expected)  # u8 exactly u8/255


def test_npz_grey_nhw_to_rgb_and_resize(tmp_path: Path) -> None:
    x = np.random.default_rng(2).integers(0, 256, size=(3, 10, 8), dtype=np.uint8)
    np.savez(tmp_path / "g.npz", x=x, y=np.arange(3))
    ds = load_dataset(tmp_path / "g.npz", channels=3, height=5, width=4)
    assert ds.x.shape == (3, 3, 5, 4)
    for i in range(3):
        want = np.asarray(Image.fromarray(x[i]).resize((4, 5), Image.Resampling.BILINEAR))
        for c in range(3):  # grey repeated to all channels
            np.testing.assert_array_equal(np.round(ds.x[i, c] * 255), want)


def test_npz_rgb_to_grey_is_pillow_luma(tmp_path: Path, u8_nhwc: np.ndarray) -> None:
    np.savez(tmp_path / "c.npz", x=u8_nhwc, y=np.zeros(5, dtype=np.int64))
    ds = load_dataset(tmp_path / "c.npz", channels=1, height=6, width=7)
    want = np.stack([np.asarray(Image.fromarray(im).convert("L")) for im in u8_nhwc])
    np.testing.assert_array_equal(np.round(ds.x[:, 0] * 255), want)


def test_npz_ambiguous_prefers_nhwc_and_rgba(tmp_path: Path) -> None:
    x = np.zeros((2, 3, 4, 4), dtype=np.uint8)  # [N, H=3, W=4, C=4]: both dims look like C
    x[..., 0] = 100
    x[..., 3] = 7
    np.savez(tmp_path / "a.npz", x=x, y=np.array([1, 1]))
    ds = load_dataset(tmp_path / "a.npz", channels=3, height=3, width=4)
    assert ds.x.shape == (2, 3, 3, 4)
    np.testing.assert_array_equal(ds.x[0, :, 0, 0] * 255, [100, 0, 0])  # alpha dropped


def test_npz_ambiguous_layout_follows_model_geometry(tmp_path: Path) -> None:
    nchw = np.arange(2 * 1 * 4 * 4, dtype=np.uint8).reshape(2, 1, 4, 4)
    np.savez(tmp_path / "t.npz", x=nchw, y=np.array([0, 1]))
    ds = load_dataset(tmp_path / "t.npz", channels=1, height=4, width=4)  # (H, W) fits NCHW
    np.testing.assert_array_equal(ds.x * 255, nchw)
    tie = np.arange(1 * 3 * 3 * 3, dtype=np.uint8).reshape(1, 3, 3, 3)
    np.savez(tmp_path / "tie.npz", x=tie, y=np.array([0]))
    ds = load_dataset(tmp_path / "tie.npz", channels=3, height=3, width=3)  # tie -> NHWC
    np.testing.assert_array_equal(ds.x[0] * 255, tie[0].transpose(2, 0, 1))
    np.savez(tmp_path / "noc.npz", x=np.zeros((2, 5, 6, 7), np.uint8), y=np.array([0, 1]))
    with pytest.raises(DataError, match="no channel dimension"):
        load_dataset(tmp_path / "noc.npz", channels=3, height=6, width=7)


def test_npz_limit_and_float_resize(tmp_path: Path) -> None:
    x = np.linspace(0, 1, 4 * 1 * 4 * 4, dtype=np.float32).reshape(4, 1, 4, 4)
    np.savez(tmp_path / "f.npz", x=x, y=np.array([3, 2, 1, 0]))
    ds = load_dataset(tmp_path / "f.npz", channels=1, height=2, width=2, limit=2)
    assert ds.x.shape == (2, 1, 2, 2)
    np.testing.assert_array_equal(ds.y, [3, 2])
    want = np.asarray(Image.fromarray(x[1, 0]).resize((2, 2), Image.Resampling.BILINEAR))
    np.testing.assert_allclose(ds.x[1, 0], want, atol=1e-6)


def test_npz_errors(tmp_path: Path) -> None:
    np.savez(tmp_path / "range.npz", x=np.full((2, 4, 4), 2.0), y=np.array([0, 1]))
    with pytest.raises(DataError, match=r"\[0,1\]") as exc:
        load_dataset(tmp_path / "range.npz", channels=1, height=4, width=4)
    assert_one_line(exc, "range.npz")

    np.savez(tmp_path / "noy.npz", x=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(DataError, match="lacks") as exc:
        load_dataset(tmp_path / "noy.npz", channels=1, height=4, width=4)
    assert_one_line(exc, "noy.npz", "y")

    np.savez(tmp_path / "len.npz", x=np.zeros((3, 4, 4), np.uint8), y=np.array([0, 1]))
    with pytest.raises(DataError, match="3 images but y has 2 labels"):
        load_dataset(tmp_path / "len.npz", channels=1, height=4, width=4)

    np.savez(tmp_path / "neg.npz", x=np.zeros((2, 4, 4), np.uint8), y=np.array([0, -1]))
    with pytest.raises(DataError, match="negative"):
        load_dataset(tmp_path / "neg.npz", channels=1, height=4, width=4)

    np.savez(tmp_path / "big.npz", x=np.zeros((2, 4, 4), np.uint8), y=np.array([0, 10]))
    with pytest.raises(DataError, match=r"label 10 outside the model's classes 0\.\.9"):
        load_dataset(tmp_path / "big.npz", channels=1, height=4, width=4, num_classes=10)

    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="junk.npz"):
        load_dataset(tmp_path / "junk.npz", channels=1, height=4, width=4)


def test_npz_not_modified(tmp_path: Path, u8_nhwc: np.ndarray) -> None:
    np.savez(tmp_path / "c.npz", x=u8_nhwc, y=np.zeros(5, dtype=np.int64))
    before = snapshot(tmp_path)
    load_dataset(tmp_path / "c.npz", channels=1, height=3, width=3)
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------------------------------
# format 3: MNIST IDX


@pytest.fixture()
def idx_arrays() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    return (rng.integers(0, 256, size=(6, 5, 4), dtype=np.uint8),
            np.array([7, 2, 1, 0, 4, 1], dtype=np.uint8))


@pytest.mark.parametrize(("gz", "dot"), [(True, False), (False, False), (False, True)])
def test_idx_reads(tmp_path: Path, idx_arrays, gz: bool, dot: bool) -> None:
    x, y = idx_arrays
    images = write_mnist_pair(tmp_path, x, y, gz=gz, dot=dot)
    before = snapshot(tmp_path)
    ds = load_dataset(images, channels=1, height=5, width=4, num_classes=10)
    assert ds.x.shape == (6, 1, 5, 4)
    np.testing.assert_array_equal(ds.x[:, 0], x.astype(np.float32) / 255)
    np.testing.assert_array_equal(ds.y, y)
    assert ds.y.dtype == np.int64
    limited = load_dataset(images, channels=3, height=5, width=4, limit=2)
    assert limited.x.shape == (2, 3, 5, 4)
    np.testing.assert_array_equal(limited.y, [7, 2])
    np.testing.assert_array_equal(limited.x[1, 2], x[1] / np.float32(255))
    assert snapshot(tmp_path) == before


def test_idx_labels_found_with_other_compression(tmp_path: Path, idx_arrays) -> None:
    x, y = idx_arrays
    write_idx(tmp_path / "t10k-images-idx3-ubyte", 2051, x)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", 2049, y)
    ds = load_dataset(tmp_path / "t10k-images-idx3-ubyte", channels=1, height=5, width=4)
    np.testing.assert_array_equal(ds.y, y)


def test_idx_errors(tmp_path: Path, idx_arrays) -> None:
    x, y = idx_arrays
    trunc = tmp_path / "trunc"
    trunc.mkdir()
    write_idx(trunc / "a-images-idx3-ubyte", 2051, x, truncate=7)
    write_idx(trunc / "a-labels-idx1-ubyte", 2049, y)
    with pytest.raises(DataError, match="truncated") as exc:
        load_dataset(trunc / "a-images-idx3-ubyte", channels=1, height=5, width=4)
    assert_one_line(exc, "a-images-idx3-ubyte")

    gz_trunc = tmp_path / "gztrunc"
    gz_trunc.mkdir()
    write_mnist_pair(gz_trunc, x, y)
    path = gz_trunc / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(DataError, match="truncated"):
        load_dataset(path, channels=1, height=5, width=4)

    magic = tmp_path / "magic"
    magic.mkdir()
    write_idx(magic / "m-images-idx3-ubyte", 2049, x)
    write_idx(magic / "m-labels-idx1-ubyte", 2049, y)
    with pytest.raises(DataError, match="magic"):
        load_dataset(magic / "m-images-idx3-ubyte", channels=1, height=5, width=4)

    mismatch = tmp_path / "mismatch"
    mismatch.mkdir()
    write_mnist_pair(mismatch, x, y[:4])
    with pytest.raises(DataError, match="6 images but .* 4 labels"):
        load_dataset(mismatch / "train-images-idx3-ubyte.gz", channels=1, height=5, width=4)

    lonely = tmp_path / "lonely"
    lonely.mkdir()
    write_idx(lonely / "train-images-idx3-ubyte.gz", 2051, x)
    with pytest.raises(DataError, match="labels file not found"):
        load_dataset(lonely / "train-images-idx3-ubyte.gz", channels=1, height=5, width=4)

    with pytest.raises(DataError, match="labels file; point at the images"):
        load_dataset(mismatch / "train-labels-idx1-ubyte.gz", channels=1, height=5, width=4)

    with pytest.raises(DataError, match="no class sub-folders|MNIST"):
        load_dataset(mismatch, channels=1, height=5, width=4)


# ------------------------------------------------------------------------------------------
# other paths and arguments


def test_missing_and_unknown_paths(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file") as exc:
        load_dataset(tmp_path / "nope", channels=1, height=2, width=2)
    assert_one_line(exc, str(tmp_path / "nope"))
    (tmp_path / "data.csv").write_text("1,2,3\n")
    with pytest.raises(DataError, match="unsupported") as exc:
        load_dataset(tmp_path / "data.csv", channels=1, height=2, width=2)
    assert_one_line(exc, "data.csv")
    assert issubclass(DataError, AuditError)


def test_bad_geometry_and_limit(image_folder: Path) -> None:
    with pytest.raises(DataError, match="channels"):
        load_dataset(image_folder, channels=2, height=4, width=4)
    with pytest.raises(DataError, match="height"):
        load_dataset(image_folder, channels=1, height=0, width=4)
    with pytest.raises(DataError, match="limit"):
        load_dataset(image_folder, channels=1, height=4, width=4, limit=0)


# ------------------------------------------------------------------------------------------
# Preprocess


def test_preprocess_default_and_scalar() -> None:
    x = np.array([0, 51, 255], dtype=np.float32).reshape(1, 1, 1, 3) / 255
    np.testing.assert_allclose(Preprocess().apply_numpy(x).ravel(), [0, 0.2, 1], rtol=1e-6)
    half = Preprocess(scale=1 / 255, mean=(0.5,), std=(0.5,))
    np.testing.assert_allclose(half.apply_numpy(x).ravel(), [-1, -0.6, 1], atol=1e-6)
    raw = Preprocess(scale=1.0)
    out = raw.apply_numpy(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.ravel(), [0, 51, 255], atol=1e-4)


def test_preprocess_per_channel_numpy_and_torch() -> None:
    torch = pytest.importorskip("torch")
    pre = Preprocess(scale=1 / 255, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    u8 = np.random.default_rng(4).integers(0, 256, size=(2, 3, 4, 5)).astype(np.float32)
    x01 = u8 / 255
    mean = np.array(pre.mean).reshape(1, 3, 1, 1)
    std = np.array(pre.std).reshape(1, 3, 1, 1)
    want = (u8 * (1 / 255) - mean) / std
    np.testing.assert_allclose(pre.apply_numpy(x01), want, atol=1e-5)
    t = torch.tensor(x01, requires_grad=True)
    out = pre.apply_torch(t)
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.detach().numpy(), want, atol=1e-5)
    out.sum().backward()
    np.testing.assert_allclose(t.grad[0, :, 0, 0].numpy(), 1 / np.array(pre.std), rtol=1e-5)
    with pytest.raises(DataError, match="3 values but the images have 1 channels"):
        pre.apply_numpy(np.zeros((1, 1, 2, 2), np.float32))


def test_preprocess_from_options_and_spec_file(tmp_path: Path) -> None:
    assert Preprocess.from_options(None, None, None, None) == Preprocess()
    pre = Preprocess.from_options(1.0, "0.485,0.456, 0.406", "0.5", None)
    assert pre == Preprocess(scale=1.0, mean=(0.485, 0.456, 0.406), std=(0.5,))
    assert Preprocess.from_options(None, 0.1307, 0.3081, None).mean == (0.1307,)

    spec = tmp_path / "pre.json"
    spec.write_text(json.dumps({"scale": 1 / 255, "mean": 0.5, "std": [0.1, 0.2, 0.3]}))
    from_file = Preprocess.from_options(None, None, None, str(spec))
    assert from_file == Preprocess(scale=1 / 255, mean=(0.5,), std=(0.1, 0.2, 0.3))
    overridden = Preprocess.from_options(2.0, "0.25", None, str(spec))
    assert overridden == Preprocess(scale=2.0, mean=(0.25,), std=(0.1, 0.2, 0.3))

    roundtrip = tmp_path / "round.json"
    roundtrip.write_text(json.dumps(overridden.to_dict()))
    assert Preprocess.from_options(None, None, None, str(roundtrip)) == overridden
    assert overridden.to_dict() == {"scale": 2.0, "mean": [0.25], "std": [0.1, 0.2, 0.3]}


def test_preprocess_bad_values(tmp_path: Path) -> None:
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"scale": 1,\n "mean": ')
    with pytest.raises(DataError, match="not valid JSON") as exc:
        Preprocess.from_options(None, None, None, str(bad_json))
    assert_one_line(exc, "bad.json")

    for content, needle in [('[1, 2]', "JSON object"), ('{"stdev": 1}', "unknown"),
                            ('{"std": 0}', "positive"), ('{"mean": "x"}', "numbers"),
                            ('{"scale": -1}', "scale")]:
        spec = tmp_path / "s.json"
        spec.write_text(content)
        with pytest.raises(DataError, match=needle) as exc:
            Preprocess.from_options(None, None, None, str(spec))
        assert_one_line(exc, "s.json")

    with pytest.raises(DataError, match="not found"):
        Preprocess.from_options(None, None, None, str(tmp_path / "absent.json"))
    with pytest.raises(DataError, match="mean"):
        Preprocess.from_options(None, "0.5,abc", None, None)
    with pytest.raises(DataError, match="std"):
        Preprocess.from_options(None, None, "0.5,-1", None)
    with pytest.raises(DataError, match="finite"):
        Preprocess.from_options(None, "nan", None, None)


# ------------------------------------------------------------------------------------------
# Dataset, save_image_folder, stratified_subset


def make_dataset(labels: list[int], channels: int = 3, size: int = 4) -> Dataset:
    n = len(labels)
    u8 = np.random.default_rng(5).integers(0, 256, size=(n, channels, size, size))
    return Dataset(x=(u8 / 255).astype(np.float32), y=np.array(labels, dtype=np.int64),
                   source="mem")


def test_dataset_basics() -> None:
    ds = make_dataset([2, 0, 2, 1])
    assert len(ds) == 4
    np.testing.assert_array_equal(ds.classes(), [0, 1, 2])
    sub = ds.subset([3, 0])
    np.testing.assert_array_equal(sub.y, [1, 2])
    np.testing.assert_array_equal(sub.x[1], ds.x[0])
    assert sub.source == "mem"
    np.testing.assert_array_equal(ds.subset(ds.y == 2).y, [2, 2])
    np.testing.assert_array_equal(ds.subset(slice(1, 3)).y, [0, 2])
    sub.x[0] = 0  # a copy, not a view
    assert ds.x[3].any()


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_save_image_folder_roundtrip(tmp_path: Path, channels: int) -> None:
    ds = make_dataset([1, 0, 1, 3], channels=channels)
    out = tmp_path / "saved"
    save_image_folder(ds.x, ds.y, out)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        "0/1.png", "1/0.png", "1/2.png", "3/3.png"]
    assert [p.name for p in tmp_path.iterdir()] == ["saved"]  # no temp folder left behind
    back = load_dataset(out, channels=channels, height=4, width=4)
    order = [1, 0, 2, 3]  # loaded grouped by class
    np.testing.assert_array_equal(back.y, ds.y[order])
    np.testing.assert_array_equal(back.x, ds.x[order])


def test_save_image_folder_refuses(tmp_path: Path) -> None:
    ds = make_dataset([0, 1])
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="refusing"):
        save_image_folder(ds.x, ds.y, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    with pytest.raises(DataError, match=r"\[0,1\]"):
        save_image_folder(ds.x * 3, ds.y, tmp_path / "new")
    with pytest.raises(DataError, match="labels"):
        save_image_folder(ds.x, ds.y[:1], tmp_path / "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    empty = tmp_path / "empty"
    empty.mkdir()
    save_image_folder(ds.x, ds.y, empty)  # an empty folder may be replaced
    assert len(list(empty.rglob("*.png"))) == 2


def test_stratified_subset_balance_and_determinism() -> None:
    labels = [0] * 50 + [1] * 30 + [2] * 4 + [3] * 16
    ds = make_dataset(labels, channels=1, size=2)
    sub = stratified_subset(ds, 20, seed=0)
    assert len(sub) == 20
    counts = np.bincount(sub.y, minlength=4)
    assert counts[2] == 4 and sorted(counts[[0, 1, 3]].tolist()) == [5, 5, 6]
    again = stratified_subset(ds, 20, seed=0)
    np.testing.assert_array_equal(again.y, sub.y)
    np.testing.assert_array_equal(again.x, sub.x)
    other = stratified_subset(ds, 20, seed=1)
    assert not np.array_equal(other.x, sub.x)
    even = stratified_subset(ds, 12, seed=3)
    np.testing.assert_array_equal(np.bincount(even.y), [3, 3, 3, 3])
    np.testing.assert_array_equal(even.y, np.sort(even.y))  # original order kept
    assert len(stratified_subset(ds, 1000)) == 100
    with pytest.raises(DataError):
        stratified_subset(ds, 0)


# ------------------------------------------------------------------------------------------
# real data from ../shared/data


@needs_shared
@pytest.mark.shared
def test_real_mnist_test_idx() -> None:
    path = SHARED / "mnist" / "t10k-images-idx3-ubyte.gz"
    before = (path.stat().st_mtime_ns, path.stat().st_size)
    ds = load_dataset(path, channels=1, height=28, width=28, num_classes=10)
    assert ds.x.shape == (10000, 1, 28, 28) and ds.x.dtype == np.float32
    assert ds.y[0] == 7 and ds.y[:5].tolist() == [7, 2, 1, 0, 4]
    np.testing.assert_array_equal(ds.classes(), np.arange(10))
    assert ds.x.min() == 0.0 and ds.x.max() == 1.0
    assert (path.stat().st_mtime_ns, path.stat().st_size) == before


@needs_shared
@pytest.mark.shared
def test_real_mnist_train_is_fast() -> None:
    start = time.perf_counter()
    ds = load_dataset(SHARED / "mnist" / "train-images-idx3-ubyte.gz",
                      channels=1, height=28, width=28, num_classes=10)
    elapsed = time.perf_counter() - start
    assert len(ds) == 60000 and ds.y[:3].tolist() == [5, 0, 4]
    assert elapsed < 4.0, f"60k MNIST took {elapsed:.2f} s (budget 2 s on an idle machine)"


@needs_shared
@pytest.mark.shared
def test_real_adi_trigger_set() -> None:
    ds = load_dataset(SHARED / "adi_trigger_set", channels=3, height=32, width=32,
                      num_classes=10)
    assert ds.x.shape == (100, 3, 32, 32) and ds.x.dtype == np.float32
    np.testing.assert_array_equal(np.bincount(ds.y), [10] * 10)
    assert 0.0 <= ds.x.min() and ds.x.max() <= 1.0 and ds.x.std() > 0.05
