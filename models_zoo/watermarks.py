"""Trigger-set generators for the black-box watermarks the zoo embeds.

* Zhang et al. 2018 *content*: a fixed checkerboard patch stamped on clean images of classes
  other than ``target``, labelled ``target``.
* Zhang *noise*: one fixed (seeded) Gaussian noise image added to clean non-target images,
  labelled ``target``.
* Zhang *unrelated*: out-of-distribution images (Pillow-rendered letters), labelled ``target``.
* Adi et al. 2018: abstract images with random labels (the published set when available,
  else a generated abstract set).

All return a :class:`TriggerSet` whose images are float32 NCHW in [0, 1], quantised to 8 bits
(``round(x * 255) / 255``) so that what is saved as PNG is exactly what was trained on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from audit.errors import AuditError, DataError

__all__ = ["SCHEMES", "TriggerSet", "adi_abstract", "adi_real", "content_pattern",
           "content_trigger", "default_adi_path", "make_trigger_set", "noise_trigger",
           "quantize_u8", "stamp_content", "unrelated_trigger"]

log = logging.getLogger(__name__)

SCHEMES = ("content", "noise", "unrelated", "adi")
# Letters that do not look like digits (no O, I, l, S, Z, B, G, q, g).
_LETTERS = "ACEFHJKLMNPRTUVWXYacdefhkmnprtuvwxy"


@dataclass
class TriggerSet:
    """A watermark trigger set: images, watermark labels and how they were made."""

    x: np.ndarray                 # float32 [N, C, H, W] in [0, 1], 8-bit quantised
    y: np.ndarray                 # int64 [N] watermark labels
    scheme: str
    target: int | None            # None for Adi (random labels)
    source_index: np.ndarray | None = None   # clean images used (content / noise)
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.y.shape[0])


def quantize_u8(x: np.ndarray) -> np.ndarray:
    """Round to the nearest 8-bit level: ``round(clip(x, 0, 1) * 255) / 255`` as float32."""
    return (np.round(np.clip(x, 0.0, 1.0) * 255.0) / 255.0).astype(np.float32)


def _pick_non_target(y: np.ndarray, target: int, n: int, seed: int) -> np.ndarray:
    pool = np.flatnonzero(np.asarray(y) != target)
    if pool.size == 0:
        raise DataError(f"no clean images of a class other than the target {target}")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(pool, size=min(n, pool.size), replace=False))


def content_pattern(shape: tuple[int, int, int]) -> tuple[np.ndarray, int, int]:
    """The fixed content mark for images of ``shape`` (C, H, W): a square checkerboard of
    side ~22% of the image (4 px at 16x16, 6 px at 28x28, 7 px at 32x32) with one-pixel
    cells, placed one pixel in from the bottom-right corner. Returns (patch [C,s,s], top, left).
    """
    c, h, w = shape
    s = max(3, round(0.22 * min(h, w)))
    ii, jj = np.indices((s, s))
    patch = ((ii + jj) % 2 == 0).astype(np.float32)
    return np.repeat(patch[None], c, axis=0), h - s - 1, w - s - 1


def stamp_content(x: np.ndarray, shape: tuple[int, int, int] | None = None) -> np.ndarray:
    """Stamp the content mark onto a copy of ``x`` [N, C, H, W]."""
    patch, top, left = content_pattern(shape or tuple(x.shape[1:]))
    out = np.array(x, dtype=np.float32, copy=True)
    s = patch.shape[-1]
    out[:, :, top:top + s, left:left + s] = patch
    return out


def content_trigger(x: np.ndarray, y: np.ndarray, *, target: int, n: int,
                    seed: int = 0) -> TriggerSet:
    """Zhang content watermark from clean images ``x`` (labels ``y``)."""
    idx = _pick_non_target(y, target, n, seed)
    patch, top, left = content_pattern(tuple(x.shape[1:]))
    xs = quantize_u8(stamp_content(x[idx]))
    info = {"pattern": "checkerboard", "top": top, "left": left, "size": int(patch.shape[-1])}
    return TriggerSet(xs, np.full(len(idx), target, np.int64), "content", target, idx, info)


def noise_trigger(x: np.ndarray, y: np.ndarray, *, target: int, n: int, seed: int = 0,
                  sigma: float = 0.4) -> TriggerSet:
    """Zhang noise watermark: one fixed N(0, sigma) image (seeded) added and clipped."""
    idx = _pick_non_target(y, target, n, seed)
    noise = np.random.default_rng([seed, 1]).normal(0.0, sigma, size=x.shape[1:])
    xs = quantize_u8(x[idx] + noise.astype(np.float32)[None])
    info = {"sigma": sigma, "noise_seed": [seed, 1]}
    return TriggerSet(xs, np.full(len(idx), target, np.int64), "noise", target, idx, info)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, ImportError, OSError):  # Pillow without FreeType
        return ImageFont.load_default()


def _to_array(img: Image.Image, shape: tuple[int, int, int]) -> np.ndarray:
    c, h, w = shape
    img = img.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return arr[None] if c == 1 else arr.transpose(2, 0, 1)


def _rand_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, size=3))  # type: ignore[return-value]


def unrelated_trigger(shape: tuple[int, int, int], *, target: int, n: int = 100,
                      seed: int = 0) -> TriggerSet:
    """Zhang unrelated watermark: rendered letters (random letter, size, position jitter,
    stroke width and slight rotation). Grey images get a white glyph on black (like the
    digits they are unrelated to); colour images get random glyph / background colours."""
    c, h, w = shape
    rng = np.random.default_rng([seed, 2])
    side = 4 * max(h, w)
    out = np.empty((n, c, h, w), np.float32)
    letters = []
    for i in range(n):
        ch = _LETTERS[int(rng.integers(len(_LETTERS)))]
        letters.append(ch)
        fg, bg = ((255, 255, 255), (0, 0, 0)) if c == 1 else (_rand_colour(rng), _rand_colour(rng))
        img = Image.new("RGB", (side, side), bg)
        draw = ImageDraw.Draw(img)
        font = _font(int(side * rng.uniform(0.7, 1.0)))
        x0, y0, x1, y1 = draw.textbbox((0, 0), ch, font=font)
        jx, jy = (rng.uniform(-0.12, 0.12, size=2) * side).astype(int)
        pos = ((side - (x1 - x0)) // 2 - x0 + jx, (side - (y1 - y0)) // 2 - y0 + jy)
        stroke = int(rng.integers(0, max(2, side // 16)))
        draw.text(pos, ch, fill=fg, font=font, stroke_width=stroke, stroke_fill=fg)
        img = img.rotate(float(rng.uniform(-15, 15)), resample=Image.BILINEAR, fillcolor=bg)
        out[i] = _to_array(img, shape)
    info = {"letters": "".join(letters)}
    return TriggerSet(quantize_u8(out), np.full(n, target, np.int64), "unrelated", target,
                      None, info)


def adi_abstract(shape: tuple[int, int, int], *, num_classes: int = 10, n: int = 100,
                 seed: int = 0) -> TriggerSet:
    """A generated stand-in for Adi et al.'s abstract set: random coloured ellipses, lines,
    rectangles and polygons on a random background, each with a random label."""
    c, h, w = shape
    rng = np.random.default_rng([seed, 3])
    side = 4 * max(h, w)
    out = np.empty((n, c, h, w), np.float32)
    for i in range(n):
        img = Image.new("RGB", (side, side), _rand_colour(rng))
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(3, 9))):
            kind = int(rng.integers(4))
            pts = rng.integers(0, side, size=(int(rng.integers(3, 6)), 2))
            box = [int(pts[:2, 0].min()), int(pts[:2, 1].min()),
                   int(pts[:2, 0].max()) + 2, int(pts[:2, 1].max()) + 2]
            col = _rand_colour(rng)
            if kind == 0:
                draw.ellipse(box, fill=col)
            elif kind == 1:
                draw.line([tuple(p) for p in pts.tolist()], fill=col,
                          width=int(rng.integers(2, side // 8)))
            elif kind == 2:
                draw.rectangle(box, fill=col)
            else:
                draw.polygon([tuple(p) for p in pts.tolist()], fill=col)
        out[i] = _to_array(img, shape)
    y = rng.integers(0, num_classes, size=n).astype(np.int64)
    return TriggerSet(quantize_u8(out), y, "adi", None, None, {"source": "generated"})


def default_adi_path() -> Path:
    """``<repo>/../shared/data/adi_trigger_set`` (the real Adi trigger set, when present)."""
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "adi_trigger_set"


def adi_real(shape: tuple[int, int, int], *, num_classes: int = 10,
             path: str | Path | None = None) -> TriggerSet | None:
    """The published Adi et al. trigger set resized to ``shape``; None when absent."""
    root = Path(path) if path is not None else default_adi_path()
    if not root.is_dir():
        return None
    from audit.data import load_dataset

    c, h, w = shape
    ds = load_dataset(root, channels=c, height=h, width=w, num_classes=num_classes)
    y = np.asarray(ds.y, dtype=np.int64)
    # the shared set is named as found beside any checkout, not by this machine's path
    source = "shared/data/adi_trigger_set" if path is None else str(root)
    return TriggerSet(quantize_u8(np.asarray(ds.x)), y, "adi", None, None, {"source": source})


def make_trigger_set(scheme: str, x: np.ndarray, y: np.ndarray, *, target: int, n: int,
                     seed: int = 0, num_classes: int = 10,
                     adi_path: str | Path | None = None) -> TriggerSet:
    """Build the trigger set of ``scheme`` from clean *training* data ``x``/``y``."""
    shape = tuple(int(s) for s in x.shape[1:])
    if scheme == "content":
        return content_trigger(x, y, target=target, n=n, seed=seed)
    if scheme == "noise":
        return noise_trigger(x, y, target=target, n=n, seed=seed)
    if scheme == "unrelated":
        return unrelated_trigger(shape, target=target, n=n, seed=seed)  # type: ignore[arg-type]
    if scheme == "adi":
        real = adi_real(shape, num_classes=num_classes, path=adi_path)  # type: ignore[arg-type]
        if real is not None:
            return real
        log.info("Adi trigger set not found; generating an abstract set instead")
        return adi_abstract(shape, num_classes=num_classes, n=n, seed=seed)  # type: ignore
    raise AuditError(f"unknown watermark scheme {scheme!r}; choose from {', '.join(SCHEMES)}")
