"""Synthetic out-of-distribution images for laundering.

A black-box launderer never sees the watermark's trigger set. "Unrelated" watermarks (Zhang et
al. 2018: letters, another data set's images) and abstract ones (Adi et al. 2018) are made of
images unlike the task's data, memorised with a chosen label; the noise watermark maps noise
to its label. The paper labels the recovered masks with the least likely class so that such
inputs lose their watermark label. This module widens that set with generated families that
cover the usual watermark carriers:

- printed characters (letters and symbols, random font size, stroke, position, rotation),
- strokes, ellipses and polygons ("scribbles"),
- smooth random fields (a coarse random grid upsampled: abstract, photo-like shading),
- uniform and Gaussian noise images.

Images are canonical NCHW float32 in [0, 1]. Grey images are drawn in the clean data's own
"ink" and "paper" (its bright and background levels, see `palette`), so that they differ from
it in shape only; colour images get random colours.
Everything is seeded: the same seed gives the same images.
"""

from __future__ import annotations

import functools
import string

import numpy as np
from PIL import Image, ImageDraw, ImageFont

CHARACTERS = string.ascii_letters + "#$%&*+/<=>?@[]{}~^"
# family -> share of the generated images
FAMILIES = {"characters": 0.4, "scribbles": 0.25, "fields": 0.15, "noise": 0.2}


@functools.cache
def _font(size: int):
    """Pillow's default font at size, loaded once per size (a few dozen sizes are used)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, ImportError, OSError):   # Pillow < 10.1 or no FreeType: one size
        return ImageFont.load_default()


@functools.lru_cache(maxsize=4096)
def _text_box(size: int, ch: str, mode: str) -> tuple[float, float, float, float]:
    """The bounding box of ch drawn at (0, 0) in _font(size)."""
    d = ImageDraw.Draw(Image.new(mode, (1, 1)))
    return d.textbbox((0, 0), ch, font=_font(size))


Palette = tuple[float, float]   # (ink, paper) grey levels in [0, 1]


def palette(x01: np.ndarray) -> Palette:
    """The clean images' ink and paper: median border pixel (paper) and the pixel level
    farthest from it that 1% of the pixels reach (ink)."""
    border = np.concatenate([x01[:, :, 0].ravel(), x01[:, :, -1].ravel(),
                             x01[:, :, :, 0].ravel(), x01[:, :, :, -1].ravel()])
    paper = float(np.median(border))
    hi, lo = float(np.quantile(x01, 0.99)), float(np.quantile(x01, 0.01))
    ink = hi if hi - paper >= paper - lo else lo
    if abs(ink - paper) < 0.25:   # low-contrast data: fall back to the far end of the range
        ink = 1.0 if paper < 0.5 else 0.0
    return ink, paper


def _colours(rng: np.random.Generator, c: int, pal: Palette) -> tuple:
    if c == 1:
        ink, paper = pal
        fg = ink + (paper - ink) * rng.uniform(0.0, 0.4)   # full ink down to 60% contrast
        return int(round(255 * fg)), int(round(255 * paper))
    fg = tuple(int(v) for v in rng.integers(0, 256, 3))
    bg = tuple(int(v) for v in rng.integers(0, 256, 3))
    return fg, bg


def _to_array(im: Image.Image, c: int) -> np.ndarray:
    a = np.asarray(im, np.float32) / 255.0
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)[:c]


def _render(n: int, c: int, h: int, w: int, seed: int, pal: Palette, scale: int, paint) -> np.ndarray:
    """n images: each a (scale x) canvas in one ink on one paper, painted by paint(im, draw,
    rng, fg, bg) (which may return a replacement image), then brought down to h x w."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, c, h, w), np.float32)
    mode = "L" if c == 1 else "RGB"
    for i in range(n):
        fg, bg = _colours(rng, c, pal)
        im = Image.new(mode, (scale * w, scale * h), bg)
        im = paint(im, ImageDraw.Draw(im), rng, fg, bg) or im
        if scale != 1:
            im = im.resize((w, h), Image.BILINEAR)
        out[i] = _to_array(im, c)
    return out


def characters(n: int, c: int, h: int, w: int, seed: int, pal: Palette = (1.0, 0.0)) -> np.ndarray:
    """Printed letters and symbols (no digits), mostly one per image, near the centre; drawn at
    2x and downsampled (anti-aliased)."""

    def paint(im, d, rng, fg, bg):
        for _ in range(1 if rng.random() < 0.7 else 2):
            size = max(6, int(2 * min(h, w) * rng.uniform(0.5, 1.1)))
            font = _font(size)
            ch = CHARACTERS[int(rng.integers(len(CHARACTERS)))]
            x0, y0, x1, y1 = _text_box(size, ch, im.mode)
            pos = (float(w - (x0 + x1) / 2 + rng.normal(0, 0.15) * w),
                   float(h - (y0 + y1) / 2 + rng.normal(0, 0.15) * h))
            d.text(pos, ch, fill=fg, font=font, stroke_width=int(rng.integers(0, 4)), stroke_fill=fg)
        return im.rotate(float(rng.uniform(-30, 30)), resample=Image.BILINEAR, fillcolor=bg)

    return _render(n, c, h, w, seed, pal, 2, paint)


def scribbles(n: int, c: int, h: int, w: int, seed: int, pal: Palette = (1.0, 0.0)) -> np.ndarray:
    """Random strokes, ellipses and polygons."""

    def paint(im, d, rng, fg, bg):
        for _ in range(int(rng.integers(1, 5))):
            pts = [(float(rng.uniform(0, w)), float(rng.uniform(0, h)))
                   for _ in range(int(rng.integers(2, 5)))]
            width = max(1, int(round(min(h, w) * rng.uniform(0.04, 0.12))))
            kind = int(rng.integers(0, 3))
            if kind == 0:
                d.line(pts, fill=fg, width=width)
            elif kind == 1:
                (xa, ya), (xb, yb) = pts[0], pts[1]
                d.ellipse([min(xa, xb), min(ya, yb), max(xa, xb) + 1, max(ya, yb) + 1], outline=fg,
                          width=width)
            else:
                d.polygon(pts, fill=fg)
            if c == 3:
                fg = tuple(int(v) for v in rng.integers(0, 256, 3))

    return _render(n, c, h, w, seed, pal, 1, paint)


def noise(n: int, c: int, h: int, w: int, seed: int) -> np.ndarray:
    """Half uniform noise, half Gaussian noise around a random grey level (clipped)."""
    rng = np.random.default_rng(seed)
    u = rng.random((n, c, h, w), dtype=np.float32)
    g = rng.uniform(0.2, 0.8, (n, 1, 1, 1)) + rng.normal(0, 1, (n, c, h, w)) * rng.uniform(0.1, 0.4, (n, 1, 1, 1))
    pick = (np.arange(n) % 2 == 0)[:, None, None, None]
    return np.clip(np.where(pick, u, g), 0, 1).astype(np.float32)


def fields(n: int, c: int, h: int, w: int, seed: int) -> np.ndarray:
    """Smooth random fields: a 2x2 to 6x6 grid of random levels per channel, upsampled
    bicubically, with random contrast; grey images get one channel."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, c, h, w), np.float32)
    for i in range(n):
        g = int(rng.integers(2, 7))
        lo = float(rng.uniform(0.0, 0.7))
        hi = float(rng.uniform(lo + 0.3, 1.0))
        for ch in range(c):
            grid = rng.random((g, g)).astype(np.float32)
            im = Image.fromarray(grid, mode="F").resize((w, h), Image.BICUBIC)
            a = np.asarray(im, np.float32)
            a = (a - a.min()) / max(float(a.max() - a.min()), 1e-6)
            out[i, ch] = lo + (hi - lo) * a
    return np.clip(out, 0, 1)


def generate(n: int, shape: tuple[int, int, int], seed: int, pal: Palette = (1.0, 0.0),
             families: dict[str, float] | None = None) -> np.ndarray:
    """n images from the families in proportion to their shares, shuffled."""
    c, h, w = shape
    families = FAMILIES if families is None else families
    if n <= 0:
        return np.empty((0, c, h, w), np.float32)
    total = sum(families.values())
    parts = []
    for j, (fam, share) in enumerate(families.items()):
        per = int(np.ceil(n * share / total))
        s = seed * 7919 + j
        if fam == "characters":
            parts.append(characters(per, c, h, w, s, pal))
        elif fam == "scribbles":
            parts.append(scribbles(per, c, h, w, s, pal))
        elif fam == "fields":
            parts.append(fields(per, c, h, w, s))
        elif fam == "noise":
            parts.append(noise(per, c, h, w, s))
        else:
            raise ValueError(f"unknown image family {fam!r}; known: {', '.join(FAMILIES)}")
    x = np.concatenate(parts)
    return x[np.random.default_rng(seed).permutation(len(x))[:n]]
