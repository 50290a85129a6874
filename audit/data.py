"""Data-set loading, geometry conversion and pixel preprocessing.

Canonical in-memory form everywhere in the project: images are a float32 numpy array
``[N, C, H, W]`` holding intensities in [0, 1] (``u8 / 255``), labels an int64 array ``[N]``.
What the model actually consumes is produced from that by a :class:`Preprocess`
(``(u8 * scale - mean[c]) / std[c]``).

:func:`load_dataset` accepts, by what the path is:

1. a folder of class sub-folders named ``0..K-1`` holding images Pillow can decode
   (PNG, JPEG, BMP, ...; any size and mode). Like torchvision's ``ImageFolder``: files are
   found recursively inside each class folder (linked folders are followed, each real folder
   once, never into the data-set root or another class folder), files without an image
   extension are skipped, hidden files and folders are skipped, non-folder entries at the
   top level (a LICENSE, a labels list) are ignored, the EXIF orientation is not applied,
   and an alpha channel is *dropped* (RGBA -> RGB keeps the colour values, it does not
   composite on a background); palette images are expanded through their palette. Order:
   classes by number, files by natural name order (``2.png`` before ``10.png``).
2. an ``.npz`` (a zip archive, never unpickled) with arrays ``x`` and ``y``; ``x`` is
   ``[N,H,W]``, ``[N,H,W,C]`` or ``[N,C,H,W]`` (C in 1, 3, 4); uint8 (or other integer)
   values are 0..255 pixels, float values are intensities in [0, 1].
3. MNIST IDX files: the path names the ``*-images-idx3-ubyte[.gz]`` (or
   ``*-images.idx3-ubyte[.gz]``) file; its labels file is found beside it by name.

Every image is then brought to the model's geometry: channels first (grey -> RGB by repeating,
RGB -> grey by the ITU-R 601 luma Pillow's ``"L"`` conversion uses, alpha dropped or added
opaque), then a bilinear Pillow resize to ``(height, width)`` when the size differs.
Every failure is an :class:`audit.errors.DataError` with a one-line message naming the path.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import re
import shutil
import tempfile
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from audit.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "Dataset",
    "Preprocess",
    "load_dataset",
    "save_image_folder",
    "stratified_subset",
]

#: File extensions read from class folders (torchvision's list plus GIF).
IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".webp"}
)
#: Channel counts a model input may have.
SUPPORTED_CHANNELS = (1, 3, 4)
#: Float intensities may exceed [0, 1] by this much (rounding) before it is an error.
FLOAT_TOLERANCE = 1e-4

_MODE_FOR_CHANNELS = {1: "L", 3: "RGB", 4: "RGBA"}
_IDX_IMAGES_MAGIC = 2051
_IDX_LABELS_MAGIC = 2049
_IDX_NAME_PAIRS = (("images-idx3", "labels-idx1"), ("images.idx3", "labels.idx1"))


# --------------------------------------------------------------------------------------------
# errors


def _one_line(text: str) -> str:
    """Collapse any line breaks so a message always prints as one line."""
    return " ".join(str(text).split())


def _error(path: str | os.PathLike[str] | None, message: str) -> DataError:
    """A DataError ``"<path>: <message>"`` on one line."""
    prefix = f"{os.fspath(path)}: " if path is not None else ""
    return DataError(_one_line(prefix + message))


# --------------------------------------------------------------------------------------------
# preprocessing


def _as_float_tuple(value: Any, what: str) -> tuple[float, ...]:
    """A number or a non-empty sequence of numbers as a tuple of finite floats."""
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise _error(None, f"preprocessing {what} is empty; give one value or one per channel")
    out = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, float, np.integer, np.floating)):
            raise _error(None, f"preprocessing {what} must be numbers, got {item!r}")
        if not math.isfinite(float(item)):
            raise _error(None, f"preprocessing {what} must be finite, got {item!r}")
        out.append(float(item))
    return tuple(out)


def _parse_number_list(text: str | float | tuple | list, what: str) -> tuple[float, ...]:
    """Parse a CLI value ``"0.5"`` / ``"0.485,0.456,0.406"`` (or a plain number, or numbers)."""
    if isinstance(text, (int, float, list, tuple)) and not isinstance(text, bool):
        return _as_float_tuple(text, what)
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise _error(
            None, f"cannot read preprocessing {what} {text!r}: expected a number or "
            "comma-separated numbers such as 0.485,0.456,0.406"
        ) from None
    return _as_float_tuple(values, what)


def _read_spec_file(spec_file: str) -> dict[str, Any]:
    """Read and check a JSON preprocessing spec ``{"scale":..., "mean":..., "std":...}``."""
    if os.path.exists(spec_file) and not os.path.isfile(spec_file):
        raise _error(spec_file, "preprocessing spec is not a regular file")
    try:
        with open(spec_file, encoding="utf-8") as fh:
            spec = json.load(fh)
    except FileNotFoundError:
        raise _error(spec_file, "preprocessing spec file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _error(spec_file, f"cannot read preprocessing spec file ({exc})") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, too many digits, too deep
        raise _error(spec_file, f"preprocessing spec is not valid JSON ({exc})") from None
    if not isinstance(spec, dict):
        raise _error(spec_file, 'preprocessing spec must be a JSON object like '
                     '{"scale": 0.00392156862745098, "mean": [0.5], "std": [0.5]}')
    unknown = sorted(set(spec) - {"scale", "mean", "std"})
    if unknown:
        raise _error(spec_file, f"unknown preprocessing spec keys {unknown}; "
                     "allowed: scale, mean, std")
    return spec


@dataclass(frozen=True)
class Preprocess:
    """Pixel preprocessing ``model_value = (u8 * scale - mean[c]) / std[c]``.

    ``mean`` and ``std`` hold one value (all channels) or one value per channel. Inputs are
    the canonical [0, 1] intensities, so ``u8 = x01 * 255``.
    """

    scale: float = 1 / 255
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        scale = _as_float_tuple(self.scale, "scale")
        if len(scale) != 1 or scale[0] <= 0:
            raise _error(None, f"preprocessing scale must be one positive number, "
                         f"got {self.scale!r}")
        mean = _as_float_tuple(self.mean, "mean")
        std = _as_float_tuple(self.std, "std")
        if any(s <= 0 for s in std):
            raise _error(None, f"preprocessing std must be positive, got {list(std)}")
        limit = float(np.finfo(np.float32).max) / 4
        if any(abs(255.0 * scale[0] / s) > limit for s in std) or \
                any(abs(m / s) > limit for m in mean for s in std):
            raise _error(None, "preprocessing scale, mean and std give model inputs beyond float32's "
                         f"range (scale {scale[0]:g}, mean {list(mean)}, std {list(std)})")
        object.__setattr__(self, "scale", scale[0])
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @classmethod
    def from_options(cls, scale: float | None, mean: str | float | tuple | None,
                     std: str | float | tuple | None, spec_file: str | None) -> Preprocess:
        """Build from CLI options; explicit options override the JSON ``spec_file``.

        ``mean``/``std`` may be ``"0.5"`` or ``"0.485,0.456,0.406"``; the spec file holds
        ``{"scale": number, "mean": number | [numbers], "std": number | [numbers]}`` (any
        subset of the keys). Unset values keep the defaults (1/255, 0, 1).
        """
        values: dict[str, Any] = {}
        if spec_file is not None:
            values = dict(_read_spec_file(spec_file))
            try:
                cls(**values)  # validate the file on its own so errors name it
            except DataError as exc:
                raise _error(spec_file, str(exc)) from None
        if scale is not None:
            values["scale"] = scale
        if mean is not None:
            values["mean"] = _parse_number_list(mean, "mean")
        if std is not None:
            values["std"] = _parse_number_list(std, "std")
        return cls(**values)

    def _per_channel(self, channels: int) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std as float64 arrays of length ``channels``."""
        out = []
        for name, vals in (("mean", self.mean), ("std", self.std)):
            if len(vals) not in (1, channels):
                raise _error(None, f"preprocessing {name} has {len(vals)} values but the "
                             f"images have {channels} channels")
            out.append(np.broadcast_to(np.asarray(vals, dtype=np.float64), (channels,)))
        return out[0], out[1]

    def apply_numpy(self, x01: np.ndarray) -> np.ndarray:
        """NCHW [0, 1] intensities -> NCHW float32 model values."""
        x01 = np.asarray(x01)
        if x01.ndim != 4:
            raise _error(None, f"preprocessing expects NCHW images, got shape {x01.shape}")
        mean, std = self._per_channel(x01.shape[1])
        gain = (255.0 * self.scale / std).astype(np.float32).reshape(1, -1, 1, 1)
        offset = (mean / std).astype(np.float32).reshape(1, -1, 1, 1)
        return (x01.astype(np.float32, copy=False) * gain - offset).astype(np.float32)

    def apply_torch(self, x01: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`apply_numpy` on a torch tensor; differentiable, keeps device/dtype."""
        if x01.dim() != 4:
            raise _error(None, f"preprocessing expects NCHW images, got shape "
                         f"{tuple(x01.shape)}")
        mean, std = self._per_channel(int(x01.shape[1]))
        gain = x01.new_tensor(255.0 * self.scale / std).reshape(1, -1, 1, 1)
        offset = x01.new_tensor(mean / std).reshape(1, -1, 1, 1)
        return x01 * gain - offset

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ``{"scale", "mean", "std"}`` (readable back as a spec file)."""
        return {"scale": self.scale, "mean": list(self.mean), "std": list(self.std)}


# --------------------------------------------------------------------------------------------
# data set container


@dataclass
class Dataset:
    """Images ``x`` float32 ``[N,C,H,W]`` in [0, 1], labels ``y`` int64 ``[N]``."""

    x: np.ndarray
    y: np.ndarray
    source: str

    def __post_init__(self) -> None:
        if self.x.ndim != 4 or self.y.ndim != 1 or len(self.x) != len(self.y):
            raise _error(self.source, f"inconsistent data set arrays x{self.x.shape} "
                         f"y{self.y.shape}")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, idx: Sequence[int] | np.ndarray | slice) -> Dataset:
        """A new data set of the selected samples (index array, boolean mask or slice)."""
        if not isinstance(idx, slice):
            idx = np.asarray(idx)
            if idx.ndim == 0:
                idx = idx.reshape(1)
            if idx.dtype != bool:
                idx = idx.astype(np.int64)
        return Dataset(x=np.ascontiguousarray(self.x[idx]),
                       y=np.ascontiguousarray(self.y[idx]), source=self.source)

    def classes(self) -> np.ndarray:
        """Sorted unique labels present."""
        return np.unique(self.y)


# --------------------------------------------------------------------------------------------
# geometry conversion (arrays)


def _check_geometry(channels: int, height: int, width: int) -> None:
    """Refuse geometries we cannot produce."""
    if channels not in SUPPORTED_CHANNELS:
        raise _error(None, f"the model expects {channels} input channels; only "
                     f"{', '.join(map(str, SUPPORTED_CHANNELS))} are supported")
    for name, value in (("height", height), ("width", width)):
        if int(value) != value or value < 1:
            raise _error(None, f"model input {name} must be a positive integer, got {value!r}")


def _convert_channels(x: np.ndarray, channels: int) -> np.ndarray:
    """NCHW uint8 or float32 with C in (1, 3, 4) -> ``channels`` channels.

    grey -> RGB repeats, colour -> grey is ITU-R 601 luma (bit-exact Pillow ``"L"`` for uint8),
    alpha is dropped, or added opaque when asked for 4 channels.
    """
    c = x.shape[1]
    if c == channels:
        return x
    opaque = 255 if x.dtype == np.uint8 else 1.0
    if channels == 1:
        r, g, b = (x[:, i:i + 1] for i in range(3))
        if x.dtype == np.uint8:  # Pillow: (R*19595 + G*38470 + B*7471 + 0x8000) >> 16
            luma = (r.astype(np.uint32) * 19595 + g.astype(np.uint32) * 38470
                    + b.astype(np.uint32) * 7471 + 0x8000) >> 16
            return luma.astype(np.uint8)
        return (r * np.float32(0.299) + g * np.float32(0.587)
                + b * np.float32(0.114)).astype(np.float32)
    rgb = np.repeat(x, 3, axis=1) if c == 1 else x[:, :3]
    if channels == 3:
        return rgb
    alpha = np.full_like(x[:, :1], opaque)
    return np.concatenate([rgb, alpha], axis=1)


def _resize_array(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear Pillow resize of NCHW uint8 (mode L) or float32 (mode F) images, per channel."""
    n, c, h, w = x.shape
    if (h, w) == (height, width):
        return x
    mode = "L" if x.dtype == np.uint8 else "F"
    out = np.empty((n, c, height, width), dtype=x.dtype)
    for i in range(n):
        for k in range(c):
            plane = Image.fromarray(np.ascontiguousarray(x[i, k]))  # uint8 -> L, float32 -> F
            out[i, k] = np.asarray(plane.resize((width, height), Image.Resampling.BILINEAR))
    if mode == "F":
        np.clip(out, 0.0, 1.0, out=out)
    return out


def _to_model_geometry(x: np.ndarray, channels: int, height: int, width: int) -> np.ndarray:
    """NCHW uint8/float32 -> float32 NCHW [0, 1] of the model's geometry."""
    if channels < x.shape[1]:
        x = _resize_array(_convert_channels(x, channels), height, width)
    else:
        x = _convert_channels(_resize_array(x, height, width), channels)
    if x.dtype == np.uint8:
        return np.divide(x, np.float32(255), dtype=np.float32)
    return np.ascontiguousarray(x, dtype=np.float32)


# --------------------------------------------------------------------------------------------
# labels


def _check_labels(y: np.ndarray, path: Path, num_classes: int | None) -> np.ndarray:
    """Integer labels ``>= 0`` (and ``< num_classes`` when given) as int64 ``[N]``."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise _error(path, f"labels must be one integer per image, got shape {y.shape}")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise _error(path, "labels must be integers, found non-integer values")
    elif y.dtype.kind not in "iu":
        raise _error(path, f"labels must be integers, got dtype {y.dtype}")
    y = y.astype(np.int64)
    negative = y[y < 0]
    if negative.size:
        raise _error(path, f"label {int(negative[0])} is negative; labels must be >= 0")
    if num_classes is not None:
        bad = y[y >= num_classes]
        if bad.size:
            raise _error(path, f"label {int(bad[0])} outside the model's classes "
                         f"0..{num_classes - 1} ({bad.size} sample(s))")
    return y


# --------------------------------------------------------------------------------------------
# format 1: image folders


def _natural_key(text: str) -> list[Any]:
    """Sort key putting ``2.png`` before ``10.png``."""
    return [(0, int(t), t) if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text)]


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _class_folders(root: Path) -> list[tuple[int, Path]]:
    """The ``(label, folder)`` pairs of a class-folder data set, by label."""
    try:
        entries = sorted(root.iterdir())
    except OSError as exc:
        raise _error(root, f"cannot list folder ({exc.strerror or exc})") from None
    folders: dict[int, Path] = {}
    loose_images = False
    for entry in entries:
        if _is_hidden(entry.name):
            continue
        if not entry.is_dir():
            loose_images |= entry.suffix.lower() in IMAGE_EXTENSIONS
            continue
        if not re.fullmatch(r"\d+", entry.name):
            raise _error(root, f"class sub-folder {entry.name!r} is not a non-negative integer; "
                         "an image-folder data set holds sub-folders named 0..K-1")
        label = int(entry.name)
        if label in folders:
            raise _error(root, f"class sub-folders {folders[label].name!r} and {entry.name!r} "
                         f"both mean label {label}")
        folders[label] = entry
    if not folders:
        hint = ("it holds images directly; put them in class sub-folders named 0..K-1"
                if loose_images else "expected class sub-folders named 0..K-1")
        raise _error(root, f"folder contains no images in class sub-folders ({hint}; for MNIST "
                     "IDX data point at the *-images-idx3-ubyte[.gz] file)")
    return sorted(folders.items())


def _image_files(folder: Path, skip: set[str] = frozenset()) -> list[Path]:
    """Image files under a class folder, recursively, hidden entries skipped, natural order.

    Linked folders are followed, each real folder once: a link back to a folder already
    walked (a loop) is skipped, and so is one to a folder in ``skip`` (real paths: the
    data-set root and the other class folders)."""
    found = []
    seen = {os.path.realpath(folder), *skip}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        keep = []
        for d in dirnames:
            real = os.path.realpath(os.path.join(dirpath, d))
            if not _is_hidden(d) and real not in seen:
                seen.add(real)
                keep.append(d)
        dirnames[:] = keep
        for name in filenames:
            if not _is_hidden(name) and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                found.append(Path(dirpath) / name)
    return sorted(found, key=lambda p: _natural_key(p.relative_to(folder).as_posix()))


def _high_depth_to_8bit(im: Image.Image) -> Image.Image:
    """16/32-bit integer and float grey images -> 8-bit ``"L"`` (Pillow would clip)."""
    arr = np.asarray(im).astype(np.float64)
    if im.mode.startswith("I;16") or (im.mode == "I" and arr.max(initial=0) > 255):
        arr = arr / 257.0
    elif im.mode == "F" and arr.max(initial=0) <= 1.0:
        arr = arr * 255.0
    return Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8))


def _normalise_mode(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> ``"L"``, ``"RGB"`` or ``"RGBA"`` (palettes expanded)."""
    if im.mode in ("L", "RGB", "RGBA"):
        return im
    if im.mode.startswith("I") or im.mode == "F":
        return _high_depth_to_8bit(im)
    if im.mode == "1":
        return im.convert("L")
    if im.mode == "P":
        return im.convert("RGBA" if "transparency" in im.info else "RGB")
    has_alpha = "A" in im.mode or im.mode.endswith("a")  # LA, PA, La, RGBa
    return im.convert("RGBA" if has_alpha else "RGB")  # CMYK, YCbCr, HSV, ...


def _resize_image(im: Image.Image, width: int, height: int) -> Image.Image:
    """Bilinear resize; RGBA band by band (Pillow would premultiply by alpha), like arrays."""
    if im.mode == "RGBA":
        bands = [band.resize((width, height), Image.Resampling.BILINEAR) for band in im.split()]
        return Image.merge("RGBA", bands)
    return im.resize((width, height), Image.Resampling.BILINEAR)


def _decode_image(path: Path, channels: int, height: int, width: int) -> np.ndarray:
    """Decode one image file to uint8 CHW of the model geometry.

    Pillow's decoders raise assorted exceptions on corrupt files, and warn about odd ones
    (an image too large to be plausible is refused): each is one DataError naming the file."""
    if not path.is_file():
        raise _error(path, "cannot decode image (not a regular file: a broken link, a pipe or a device)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return _decode_image_file(path, channels, height, width)
    except DataError:
        raise
    except Image.DecompressionBombWarning:
        raise _error(path, "cannot decode image (too many pixels to be a plausible image)") from None
    except Exception as exc:
        raise _error(path, f"cannot decode image ({_one_line(str(exc)) or type(exc).__name__})"
                     ) from None


def _decode_image_file(path: Path, channels: int, height: int, width: int) -> np.ndarray:
    with Image.open(path) as im:
        im.load()
        im = _normalise_mode(im)
        target = _MODE_FOR_CHANNELS[channels]
        if im.mode != target:
            im = im.convert(target)
        if im.size != (width, height):
            im = _resize_image(im, width, height)
        arr = np.asarray(im, dtype=np.uint8)
    return arr.reshape(height, width, channels).transpose(2, 0, 1)


def _load_image_folder(root: Path, channels: int, height: int, width: int,
                       limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Format 1: folder of class sub-folders -> (float32 NCHW, labels)."""
    classes = _class_folders(root)
    roots = {os.path.realpath(root)} | {os.path.realpath(folder) for _, folder in classes}
    items = [(f, label) for label, folder in classes for f in _image_files(folder, roots)]
    if not items:
        raise _error(root, "folder contains no images (looked for "
                     f"{', '.join(sorted(IMAGE_EXTENSIONS))} in its class sub-folders)")
    items = items[:limit] if limit is not None else items
    x = np.empty((len(items), channels, height, width), dtype=np.uint8)
    for i, (path, _) in enumerate(items):
        x[i] = _decode_image(path, channels, height, width)
    y = np.fromiter((label for _, label in items), dtype=np.int64, count=len(items))
    return np.divide(x, np.float32(255), dtype=np.float32), y


# --------------------------------------------------------------------------------------------
# format 2: npz


def _npz_to_nchw(x: np.ndarray, path: Path, geometry: tuple[int, int, int]) -> np.ndarray:
    """``[N,H,W]`` / ``[N,H,W,C]`` / ``[N,C,H,W]`` -> NCHW (same dtype).

    The channel axis is the one of size 1, 3 or 4. When both axis 1 and the last axis could
    be it (tiny images such as ``[N,3,4,4]``), the layout whose (H, W), else whose C, matches
    the model ``geometry`` (C, H, W) wins; a full tie is read as NHWC.
    """
    if x.ndim == 3:
        return x[:, None]
    if x.ndim != 4:
        raise _error(path, f"x must be [N,H,W], [N,H,W,C] or [N,C,H,W], got shape {x.shape}")
    last_is_c = x.shape[-1] in SUPPORTED_CHANNELS
    second_is_c = x.shape[1] in SUPPORTED_CHANNELS
    if last_is_c and second_is_c:
        # (H, W) fit first, then C fit; tuples compare lexicographically
        nchw = (x.shape[2:] == geometry[1:], x.shape[1] == geometry[0])
        nhwc = (x.shape[1:3] == geometry[1:], x.shape[3] == geometry[0])
        return x if nchw > nhwc else x.transpose(0, 3, 1, 2)
    if last_is_c:
        return x.transpose(0, 3, 1, 2)
    if second_is_c:
        return x
    raise _error(path, f"x has shape {x.shape}: no channel dimension of size 1, 3 or 4 "
                 "after N or at the end")


def _npz_pixels(x: np.ndarray, path: Path) -> np.ndarray:
    """Check npz pixel values; uint8 stays uint8, floats become float32 in [0, 1]."""
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind in "iu":
        if x.size and (x.min() < 0 or x.max() > 255):
            raise _error(path, f"integer pixels must be in 0..255, found {x.min()}..{x.max()}")
        return x.astype(np.uint8)
    if x.dtype.kind != "f":
        raise _error(path, f"x must hold uint8 pixels or float intensities, got dtype {x.dtype}")
    if not np.all(np.isfinite(x)):
        raise _error(path, "x holds NaN or infinite values")
    lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    if lo < -FLOAT_TOLERANCE or hi > 1.0 + FLOAT_TOLERANCE:
        raise _error(path, f"float images must be in [0,1] (found {lo:g}..{hi:g}); store "
                     "0..255 pixels as uint8")
    return np.clip(x.astype(np.float32), 0.0, 1.0)


def _load_npz(path: Path, limit: int | None,
              geometry: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Format 2: ``.npz`` with ``x`` and ``y`` -> (NCHW uint8 or float32, raw labels).

    Only numeric arrays are read: pickled objects are never loaded (allow_pickle=False)."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(6)
    except OSError as exc:
        raise _error(path, f"cannot read file ({exc.strerror or exc})") from None
    if magic.startswith(b"\x93NUMPY"):
        raise _error(path, "is a single .npy array, not an npz archive with arrays x and y")
    if not magic.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        raise _error(path, "not an npz file (an npz is a zip archive of arrays x and y)")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("x", "y") if k not in z.files]
            if missing:
                raise _error(path, f"npz lacks array(s) {', '.join(missing)} "
                             f"(has {', '.join(z.files) or 'none'}); expected x and y")
            x, y = z["x"], z["y"]
    except DataError:
        raise
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise _error(path, "npz holds Python object arrays; only numeric arrays are read "
                         "(pickled data is never loaded)") from None
        raise _error(path, f"cannot read npz ({_one_line(str(exc)) or type(exc).__name__})") from None
    except Exception as exc:  # zipfile, zlib and numpy raise assorted errors on corrupt archives
        raise _error(path, f"cannot read npz, corrupt or truncated "
                     f"({_one_line(str(exc)) or type(exc).__name__})") from None
    if x.ndim < 1 or y.ndim < 1 or len(x) != len(y):
        raise _error(path, f"x has {len(x) if x.ndim else 0} images but y has "
                     f"{len(y) if y.ndim else 0} labels")
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return _npz_pixels(_npz_to_nchw(x, path, geometry), path), y


# --------------------------------------------------------------------------------------------
# format 3: MNIST IDX


def _idx_base_name(path: Path) -> str:
    """File name without a trailing ``.gz``."""
    return path.name.removesuffix(".gz")


def _is_idx(path: Path) -> bool:
    return re.search(r"idx\d-ubyte$", _idx_base_name(path)) is not None


def _idx_labels_path(images: Path) -> Path:
    """The labels file beside an images file, by name (with or without ``.gz``)."""
    base = _idx_base_name(images)
    for image_tag, label_tag in _IDX_NAME_PAIRS:
        if image_tag in base:
            label_base = base.replace(image_tag, label_tag)
            for name in (label_base, label_base + ".gz"):
                if images.with_name(name).is_file():
                    return images.with_name(name)
            raise _error(images, f"labels file not found beside it (looked for {label_base} "
                         f"and {label_base}.gz)")
    if "labels" in base or base.endswith("idx1-ubyte"):
        raise _error(images, "this is an IDX labels file; point at the images file "
                     "(*-images-idx3-ubyte[.gz])")
    raise _error(images, "cannot tell the labels file of this IDX file: expected a name "
                 "like train-images-idx3-ubyte[.gz]")


def _read_idx(path: Path, magic: int, ndim: int, limit: int | None) -> tuple[tuple, bytes]:
    """Read an unsigned-byte IDX file's dims and (at most ``limit`` items of) its data."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            header = fh.read(4 + 4 * ndim)
            if len(header) < 4 + 4 * ndim:
                raise _error(path, "IDX file truncated inside its header")
            got_magic = int.from_bytes(header[:4], "big")
            if got_magic != magic:
                raise _error(path, f"not an IDX file of the expected kind (magic {got_magic}, "
                             f"expected {magic})")
            dims = tuple(int(d) for d in np.frombuffer(header[4:], dtype=">u4"))
            if ndim > 1 and 0 in dims[1:]:
                raise _error(path, f"IDX images of size {'x'.join(map(str, dims[1:]))}: "
                             "height and width must be positive")
            count = dims[0] if limit is None else min(dims[0], limit)
            need = count * math.prod(dims[1:])
            chunks, got = [], 0   # a header may claim any size: memory follows the bytes present
            while got < need:
                chunk = fh.read(min(need - got, 1 << 24))
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
            data = b"".join(chunks)
            if opener is gzip.open:  # the checksum is read, and checked, at the end of the stream
                while fh.read(1 << 20):
                    pass
    except DataError:
        raise
    except (OSError, EOFError, OverflowError, MemoryError, zlib.error) as exc:
        raise _error(path, f"cannot read IDX file, corrupt or truncated "
                     f"({_one_line(str(exc)) or type(exc).__name__})") from None
    if len(data) < need:
        raise _error(path, f"IDX file truncated: expected {need} data bytes, found {len(data)}")
    return (dims[0], *dims[1:]), data


def _load_idx(path: Path, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Format 3: MNIST IDX images + labels -> (NCHW uint8, labels)."""
    labels_path = _idx_labels_path(path)
    (n_images, rows, cols), pixels = _read_idx(path, _IDX_IMAGES_MAGIC, 3, limit)
    (n_labels,), label_bytes = _read_idx(labels_path, _IDX_LABELS_MAGIC, 1, limit)
    if n_images != n_labels:
        raise _error(path, f"holds {n_images} images but {labels_path.name} holds "
                     f"{n_labels} labels")
    count = len(label_bytes)
    x = np.frombuffer(pixels, dtype=np.uint8).reshape(count, 1, rows, cols)
    return x, np.frombuffer(label_bytes, dtype=np.uint8)


# --------------------------------------------------------------------------------------------
# public loading / saving / subsetting


def load_dataset(path: str | os.PathLike[str], *, channels: int, height: int, width: int,
                 num_classes: int | None = None, limit: int | None = None) -> Dataset:
    """Read a data set and convert it to the model's geometry.

    ``path`` is a class-folder data set, an ``.npz`` or an MNIST ``*-images-idx3-ubyte[.gz]``
    file (see the module docstring). Returns float32 NCHW ``[N, channels, height, width]``
    in [0, 1] with int64 labels; ``limit`` keeps the first ``limit`` samples. Input files are
    only read. Raises :class:`DataError` (one line, naming the path) on any problem.
    """
    p = Path(path)
    try:
        _check_geometry(channels, height, width)
    except DataError as exc:
        raise _error(p, str(exc)) from None
    if limit is not None and (int(limit) != limit or limit < 1):
        raise _error(p, f"limit must be a positive integer, got {limit!r}")
    if num_classes is not None and (int(num_classes) != num_classes or num_classes < 1):
        raise _error(p, f"num_classes must be a positive integer, got {num_classes!r}")
    if not p.exists():
        raise _error(p, "no such file or folder")
    if not p.is_dir() and not p.is_file():
        raise _error(p, "not a regular file or folder (a pipe or device is never read)")
    if p.is_dir():
        x, y = _load_image_folder(p, channels, height, width, limit)
    elif p.suffix.lower() == ".npz":
        raw_x, y = _load_npz(p, limit, (channels, height, width))
        if 0 in raw_x.shape[2:]:
            raise _error(p, f"images of size {raw_x.shape[2]}x{raw_x.shape[3]}: height and width "
                         "must be positive")
        x = _to_model_geometry(raw_x, channels, height, width)
    elif _is_idx(p):
        raw_x, y = _load_idx(p, limit)
        x = _to_model_geometry(raw_x, channels, height, width)
    else:
        raise _error(p, "unsupported data set: expected a folder of class sub-folders 0..K-1, "
                     "an .npz with arrays x and y, or an MNIST *-images-idx3-ubyte[.gz] file")
    if len(y) == 0:
        raise _error(p, "data set contains no images")
    return Dataset(x=x, y=_check_labels(y, p, num_classes), source=str(p))


def _images_to_u8_nhwc(ds_x: np.ndarray, out_dir: Path) -> np.ndarray:
    """Check NCHW [0, 1] images and quantise them to uint8 NHWC."""
    x = np.asarray(ds_x)
    if x.ndim != 4 or x.shape[1] not in SUPPORTED_CHANNELS:
        raise _error(out_dir, f"images must be NCHW with 1, 3 or 4 channels, got {x.shape}")
    if x.dtype == np.uint8:
        raise _error(out_dir, "images must be float intensities in [0,1], got uint8")
    x = x.astype(np.float32, copy=False)
    if x.size and (not np.all(np.isfinite(x)) or x.min() < -FLOAT_TOLERANCE
                   or x.max() > 1 + FLOAT_TOLERANCE):
        raise _error(out_dir, "images must be finite intensities in [0,1]")
    u8 = np.clip(np.round(x * np.float32(255)), 0, 255).astype(np.uint8)
    return u8.transpose(0, 2, 3, 1)


def save_image_folder(ds_x: np.ndarray, ds_y: np.ndarray, out_dir: str | os.PathLike[str]) -> None:
    """Write NCHW [0,1] images as PNGs into ``out_dir/<label>/<index>.png``.

    The folder format :func:`load_dataset` reads (lossless: loading it back gives the same
    values for images quantised to u8/255). Atomic: everything is written into a temporary
    folder beside ``out_dir`` and renamed into place; an existing non-empty ``out_dir`` is
    refused rather than merged into.
    """
    out = Path(out_dir)
    pixels = _images_to_u8_nhwc(ds_x, out)
    labels = _check_labels(np.asarray(ds_y), out, None)
    if len(labels) != len(pixels):
        raise _error(out, f"{len(pixels)} images but {len(labels)} labels")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise _error(out, "already exists and is not an empty folder; refusing to overwrite")
    parent = out.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    try:
        mode = _MODE_FOR_CHANNELS[pixels.shape[-1]]
        for label in np.unique(labels):
            (tmp / str(int(label))).mkdir()
        for index, (img, label) in enumerate(zip(pixels, labels)):
            arr = img[:, :, 0] if mode == "L" else img
            Image.fromarray(np.ascontiguousarray(arr)).save(  # mode from the shape
                tmp / str(int(label)) / f"{index}.png", format="PNG")
        os.chmod(tmp, 0o755)
        os.replace(tmp, out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _error(out, f"cannot write image folder ({exc.strerror or exc})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _class_quotas(counts: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Split ``n`` over classes as evenly as capacities allow (water filling).

    Leftovers that cannot be split evenly go to classes in a seed-determined order.
    """
    quotas = np.zeros_like(counts)
    remaining = n
    while remaining > 0:
        open_classes = np.flatnonzero(quotas < counts)
        share = remaining // len(open_classes)
        if share == 0:
            order = rng.permutation(open_classes)[:remaining]
            quotas[order] += 1
            break
        add = np.minimum(counts[open_classes] - quotas[open_classes], share)
        quotas[open_classes] += add
        remaining -= int(add.sum())
    return quotas


def stratified_subset(ds: Dataset, n: int, seed: int = 0) -> Dataset:
    """``n`` samples, as balanced over classes as possible, deterministic for a ``seed``.

    Every class gets ``n // K`` samples (a class with fewer gives all it has and the rest is
    shared by the others); samples keep their original order. ``n >= len(ds)`` returns all.
    """
    return ds.subset(stratified_indices(ds, n, seed))


def stratified_indices(ds: Dataset, n: int, seed: int = 0) -> np.ndarray:
    """The sorted indices stratified_subset(ds, n, seed) selects."""
    if int(n) != n or n < 1:
        raise _error(ds.source, f"subset size must be a positive integer, got {n!r}")
    if n >= len(ds):
        return np.arange(len(ds))
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(ds.y, return_counts=True)
    quotas = _class_quotas(counts, int(n), rng)
    chosen = [rng.permutation(np.flatnonzero(ds.y == c))[:q] for c, q in zip(classes, quotas)]
    return np.sort(np.concatenate(chosen))


def data_for(am, path: str | os.PathLike, *, limit: int | None = None, check_labels: bool = True) -> Dataset:
    """The data set at path in the geometry of model am (an AuditModel), its labels checked
    against the model's classes unless check_labels is False."""
    info = am.info
    return load_dataset(path, channels=info.channels, height=info.height, width=info.width,
                        num_classes=info.num_classes if check_labels else None, limit=limit)
