"""Randomised watermark trigger sets for the wide zoo (models_zoo/wide.py).

What a real watermark owner varies, as frozen specs drawn from a numpy generator:

* :class:`Mark` (Zhang *content*): a text glyph (several fonts), a logo / shape (circle,
  triangle, cross, star), a checkerboard, a solid or a random binary block, ``side`` pixels
  square at (``top``, ``left``) anywhere in the image, stamped (alpha 1) or blended (alpha
  0.5-1). Text and logos are opaque stickers (glyph on a background square) or transparent
  (only the glyph's pixels change).
* :class:`Noise` (Zhang *noise*): one fixed Gaussian or uniform pattern of standard deviation
  ``sigma`` (intensity units), over the whole image or a region, added or blended.
* :class:`Unrelated` (Zhang *unrelated*): out-of-distribution images (letters in several fonts
  and rotations, symbols, shapes, textures), all labelled with the target.
* :class:`Abstract` (Adi et al.): abstract images with random labels, generated, or the
  published set when present (``real``).

Fonts: ``aileron`` (Pillow's embedded default, any size), ``bitmap`` (Pillow's embedded bitmap
font) and DejaVu Sans / Serif / Mono when Pillow finds them; a TrueType font that is absent is
replaced by ``aileron`` (the trigger set's info records the font used), so rendering needs no
system fonts.

Trigger images are float32 NCHW in [0, 1], quantised to 8 bits (:func:`quantize_u8`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from audit.errors import AuditError

from .watermarks import (
    _LETTERS,
    TriggerSet,
    _pick_non_target,
    adi_abstract,
    adi_real,
    quantize_u8,
)

__all__ = ["FONTS", "MARK_KINDS", "SHAPES", "UNRELATED_KINDS", "Abstract", "Mark", "Noise",
           "Unrelated", "apply_mark", "apply_noise", "draw_abstract", "draw_mark", "draw_noise",
           "draw_unrelated", "glyph", "mark_patch", "noise_pattern", "shape_cover", "trigger_set",
           "unrelated_images"]

MARK_KINDS = ("text", "logo", "checkerboard", "solid", "random_block")
SHAPES = ("circle", "triangle", "cross", "star")
FONTS = ("aileron", "bitmap", "dejavu-sans", "dejavu-serif", "dejavu-mono")
UNRELATED_KINDS = ("letters", "symbols", "shapes", "textures")
_TTF = {"dejavu-sans": "DejaVuSans.ttf", "dejavu-serif": "DejaVuSerif.ttf",
        "dejavu-mono": "DejaVuSansMono.ttf"}
_TEXT = "ACEFHKMNRTWXYaehkmnrtwxy"
_SYMBOLS = "#&@%$?*+=<>!{}~^"


@dataclass(frozen=True)
class Mark:
    kind: str                     # MARK_KINDS
    side: int                     # pixels
    top: int
    left: int
    mode: str                     # stamp | blend
    alpha: float                  # 1 when stamped
    fg: tuple[int, ...]           # u8 grey (1 value) or RGB
    bg: tuple[int, ...]
    opaque: bool                  # text / logo: background square too (else glyph pixels only)
    text: str | None = None       # text
    font: str | None = None       # text
    shape: str | None = None      # logo
    cell: int = 1                 # checkerboard cell (pixels)
    bits_seed: int = 0            # random_block


@dataclass(frozen=True)
class Noise:
    dist: str                     # gaussian | uniform
    sigma: float                  # standard deviation, intensity units ([0, 1] images)
    mode: str                     # add | blend
    alpha: float                  # 1 when added
    region: tuple[int, int, int, int] | None   # (top, left, height, width); None: whole image
    pattern_seed: int


@dataclass(frozen=True)
class Unrelated:
    kinds: tuple[str, ...]        # UNRELATED_KINDS, each image one of them (round robin)
    fonts: tuple[str, ...]
    max_rotation: float           # degrees, letters and symbols
    light_on_dark: bool           # grey images: bright content on a dark background


@dataclass(frozen=True)
class Abstract:
    source: str                   # generated | real (the published set; generated when absent)


def _grey_or_rgb(rng: np.random.Generator, channels: int, bright: bool) -> tuple[int, ...]:
    lo, hi = (190, 256) if bright else (0, 64)
    if channels == 1:
        return (int(rng.integers(lo, hi)),)
    return tuple(int(v) for v in rng.integers(0, 256, size=3))


def draw_mark(rng: np.random.Generator, shape: tuple[int, int, int], sides: tuple[int, int]
              ) -> Mark:
    """A random content mark for images of ``shape`` (C, H, W), side in ``sides`` (inclusive)."""
    c, h, w = shape
    kind = MARK_KINDS[int(rng.integers(len(MARK_KINDS)))]
    side = int(rng.integers(sides[0], sides[1] + 1))
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    stamped = bool(rng.random() < 0.5)
    alpha = 1.0 if stamped else round(float(rng.uniform(0.5, 1.0)), 3)
    fg = _grey_or_rgb(rng, c, bright=True)
    bg = _grey_or_rgb(rng, c, bright=False) if c == 1 else tuple(255 - v for v in fg)
    extra: dict = {}
    if kind == "text":
        extra = {"text": _TEXT[int(rng.integers(len(_TEXT)))],
                 "font": FONTS[int(rng.integers(len(FONTS)))]}
    elif kind == "logo":
        extra = {"shape": SHAPES[int(rng.integers(len(SHAPES)))]}
    elif kind == "checkerboard":
        extra = {"cell": int(rng.integers(1, 3)) if side >= 4 else 1}
    elif kind == "random_block":
        extra = {"bits_seed": int(rng.integers(2**31))}
    return Mark(kind, side, top, left, "stamp" if stamped else "blend", alpha, fg, bg,
                opaque=bool(rng.random() < 0.5), **extra)


def draw_noise(rng: np.random.Generator, shape: tuple[int, int, int]) -> Noise:
    """Random noise-mark settings: sigma 0.1-0.5, full image or a region of half a side or more."""
    _, h, w = shape
    dist = "gaussian" if rng.random() < 0.5 else "uniform"
    sigma = round(float(rng.uniform(0.1, 0.5)), 3)
    added = bool(rng.random() < 0.5)
    alpha = 1.0 if added else round(float(rng.uniform(0.5, 1.0)), 3)
    region = None
    if rng.random() < 0.5:
        rh, rw = int(rng.integers((h + 1) // 2, h + 1)), int(rng.integers((w + 1) // 2, w + 1))
        region = (int(rng.integers(0, h - rh + 1)), int(rng.integers(0, w - rw + 1)), rh, rw)
    return Noise(dist, sigma, "add" if added else "blend", alpha, region,
                 int(rng.integers(2**31)))


def _subset(rng: np.random.Generator, items: tuple[str, ...], lo: int) -> tuple[str, ...]:
    k = int(rng.integers(lo, len(items) + 1))
    return tuple(sorted(rng.choice(items, size=k, replace=False).tolist(), key=items.index))


def draw_unrelated(rng: np.random.Generator) -> Unrelated:
    return Unrelated(kinds=_subset(rng, UNRELATED_KINDS, 1), fonts=_subset(rng, FONTS, 1),
                     max_rotation=round(float(rng.uniform(0, 45)), 1),
                     light_on_dark=bool(rng.random() < 0.7))


def draw_abstract(rng: np.random.Generator) -> Abstract:
    return Abstract("real" if rng.random() < 0.3 else "generated")


# ------------------------------------------------------------------------------------------
# rendering


@functools.lru_cache(maxsize=256)
def _font(name: str, px: int) -> tuple[ImageFont.ImageFont | ImageFont.FreeTypeFont, str]:
    """(font, name of the font used); a missing TrueType font falls back to ``aileron``."""
    if name == "bitmap":
        loader = getattr(ImageFont, "load_default_imagefont", ImageFont.load_default)
        return loader(), "bitmap"
    if name in _TTF:
        try:
            return ImageFont.truetype(_TTF[name], px), name
        except OSError:
            pass
    try:
        return ImageFont.load_default(size=px), "aileron"
    except (TypeError, ValueError, ImportError, OSError):   # Pillow without FreeType
        return ImageFont.load_default(), "bitmap"


def _square_ink(img: Image.Image) -> Image.Image:
    """The ink's bounding box of an "L" image, padded to a square (centred)."""
    box = img.getbbox()
    if box is None:
        return img
    ink = img.crop(box)
    side = max(ink.size)
    sq = Image.new("L", (side, side), 0)
    sq.paste(ink, ((side - ink.size[0]) // 2, (side - ink.size[1]) // 2))
    return sq


def glyph(text: str, font: str, side: int, rotation: float = 0.0) -> tuple[np.ndarray, str]:
    """Coverage [side, side] in [0, 1] of ``text`` in ``font``, its ink filling the square
    (rendered large, cropped to the ink, area-averaged down). Returns (coverage, font used)."""
    big = 96
    f, used = _font(font, big)
    img = Image.new("L", (3 * big, 3 * big), 0)
    ImageDraw.Draw(img).text((big // 2, big // 2), text, fill=255, font=f)
    img = _square_ink(img)
    if rotation:
        img = _square_ink(img.rotate(rotation, resample=Image.BILINEAR, expand=True))
    return _cover(img.resize((side, side), Image.BOX)), used


def _cover(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.float32) / 255.0


def _shape_polygon(shape: str, s: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        return [(s / 2, 0), (s, s), (0, s)]
    if shape == "star":
        pts = []
        for i in range(10):
            r = s / 2 if i % 2 == 0 else s / 5
            a = -math.pi / 2 + i * math.pi / 5
            pts.append((s / 2 + r * math.cos(a), s / 2 + r * math.sin(a)))
        return pts
    t = s / 3   # cross: a plus sign with arms a third of the side wide
    return [(t, 0), (2 * t, 0), (2 * t, t), (s, t), (s, 2 * t), (2 * t, 2 * t), (2 * t, s),
            (t, s), (t, 2 * t), (0, 2 * t), (0, t), (t, t)]


def shape_cover(shape: str, side: int, big: int = 96) -> np.ndarray:
    """Coverage [side, side] of a filled circle, triangle, cross or star."""
    img = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(img)
    if shape == "circle":
        draw.ellipse([0, 0, big - 1, big - 1], fill=255)
    elif shape in SHAPES:
        draw.polygon(_shape_polygon(shape, big - 1), fill=255)
    else:
        raise AuditError(f"unknown mark shape {shape!r}; choose from {', '.join(SHAPES)}")
    return _cover(img.resize((side, side), Image.BOX))


def _two_tone(cover: np.ndarray, m: Mark, c: int) -> np.ndarray:
    fg = np.asarray(m.fg, np.float32)[:c, None, None] / 255
    bg = np.asarray(m.bg, np.float32)[:c, None, None] / 255
    return cover[None] * fg + (1 - cover[None]) * bg


def mark_patch(m: Mark, channels: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """(values [C, s, s], weight [s, s] in [0, 1], info) of a content mark: a pixel becomes
    ``x + alpha * weight * (value - x)``; weight 0 leaves it as it is."""
    s, info = m.side, {}
    if m.kind in ("text", "logo"):
        if m.kind == "text":
            cover, info["font_used"] = glyph(m.text or "A", m.font or "aileron", s)
        else:
            cover = shape_cover(m.shape or "circle", s)
        if m.opaque:
            return _two_tone(cover, m, channels), np.ones((s, s), np.float32), info
        return _two_tone(np.ones_like(cover), m, channels), cover, info
    if m.kind == "checkerboard":
        ii, jj = np.indices((s, s)) // m.cell
        cover = ((ii + jj) % 2 == 0).astype(np.float32)
    elif m.kind == "solid":
        cover = np.ones((s, s), np.float32)
    elif m.kind == "random_block":
        cover = np.random.default_rng(m.bits_seed).integers(0, 2, size=(s, s)).astype(np.float32)
        cover.flat[0], cover.flat[-1] = 1.0, 0.0    # both tones present
    else:
        raise AuditError(f"unknown mark kind {m.kind!r}; choose from {', '.join(MARK_KINDS)}")
    return _two_tone(cover, m, channels), np.ones((s, s), np.float32), info


def apply_mark(x: np.ndarray, m: Mark) -> np.ndarray:
    """``x`` [N, C, H, W] with the mark applied (a new, 8-bit quantised array)."""
    values, weight, _ = mark_patch(m, x.shape[1])
    out = np.array(x, dtype=np.float32, copy=True)
    sl = (slice(None), slice(None), slice(m.top, m.top + m.side), slice(m.left, m.left + m.side))
    a = np.float32(m.alpha) * weight[None, None]
    out[sl] = out[sl] + a * (values[None] - out[sl])
    return quantize_u8(out)


def noise_pattern(nz: Noise, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(pattern [C, H, W] of mean 0 and std ``sigma``, region mask [H, W] of 0 / 1)."""
    rng = np.random.default_rng(nz.pattern_seed)
    if nz.dist == "gaussian":
        pat = rng.normal(0.0, nz.sigma, size=shape)
    elif nz.dist == "uniform":
        half = nz.sigma * math.sqrt(3.0)          # U(-a, a) has std a / sqrt(3)
        pat = rng.uniform(-half, half, size=shape)
    else:
        raise AuditError(f"unknown noise distribution {nz.dist!r}; choose gaussian or uniform")
    mask = np.ones(shape[1:], np.float32)
    if nz.region is not None:
        t, lf, rh, rw = nz.region
        mask[:] = 0
        mask[t:t + rh, lf:lf + rw] = 1
    return (pat * mask).astype(np.float32), mask


def apply_noise(x: np.ndarray, nz: Noise) -> np.ndarray:
    """Added: ``x + n``; blended: ``x + alpha * (0.5 + n - x)`` inside the region; clipped,
    quantised."""
    pat, mask = noise_pattern(nz, tuple(x.shape[1:]))
    if nz.mode == "add":
        out = x + pat[None]
    else:
        out = x + np.float32(nz.alpha) * mask[None, None] * (0.5 + pat[None] - x)
    return quantize_u8(out)


# ------------------------------------------------------------------------------------------
# unrelated images


def _pair(rng: np.random.Generator, c: int, light_on_dark: bool
          ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(foreground, background) colours with at least 96 levels of contrast."""
    if c == 1 and light_on_dark:
        return (int(rng.integers(200, 256)),) * 3, (int(rng.integers(0, 40)),) * 3
    while True:
        n = 1 if c == 1 else 3
        fg, bg = rng.integers(0, 256, size=n), rng.integers(0, 256, size=n)
        if np.abs(fg.astype(int) - bg.astype(int)).max() >= 96:
            to3 = (lambda v: tuple(int(t) for t in v) * (3 // n))
            return to3(fg), to3(bg)


def _paste(img: Image.Image, cover: np.ndarray, fg: tuple[int, ...], at: tuple[int, int]) -> None:
    mask = Image.fromarray(np.round(cover * 255).astype(np.uint8), "L")
    img.paste(fg, (*at, at[0] + mask.size[0], at[1] + mask.size[1]), mask)


def _texture(rng: np.random.Generator, side: int, period: float) -> np.ndarray:
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float64)
    kind = int(rng.integers(4))
    if kind == 0:                                  # stripes at a random angle
        a = rng.uniform(0, math.pi)
        return np.sin(2 * math.pi * (xx * math.cos(a) + yy * math.sin(a)) / period) > 0
    if kind == 1:                                  # checker
        return ((xx // (period / 2) + yy // (period / 2)) % 2) == 0
    if kind == 2:                                  # dot grid
        return ((xx % period - period / 2) ** 2 + (yy % period - period / 2) ** 2
                < (period / 4) ** 2)
    cy, cx = rng.uniform(0, side, size=2)          # concentric rings
    return np.sin(2 * math.pi * np.hypot(yy - cy, xx - cx) / period) > 0


def _unrelated_image(kind: str, u: Unrelated, rng: np.random.Generator,
                     shape: tuple[int, int, int]) -> tuple[np.ndarray, str]:
    """One unrelated image [C, H, W] of ``kind`` and a short description of it."""
    from .watermarks import _to_array

    c, h, w = shape
    side = 4 * max(h, w)
    fg, bg = _pair(rng, c, u.light_on_dark)
    img = Image.new("RGB", (side, side), bg)
    if kind in ("letters", "symbols"):
        chars = _LETTERS if kind == "letters" else _SYMBOLS
        ch = chars[int(rng.integers(len(chars)))]
        font = u.fonts[int(rng.integers(len(u.fonts)))]
        gs = int(side * rng.uniform(0.5, 0.9))
        cover, used = glyph(ch, font, gs, float(rng.uniform(-u.max_rotation, u.max_rotation)))
        at = tuple(int(v) for v in rng.integers(0, side - gs + 1, size=2))
        _paste(img, cover, fg, at)
        return _to_array(img, shape), f"{ch}:{used}"
    if kind == "shapes":
        names = []
        for _ in range(int(rng.integers(1, 4))):
            name = SHAPES[int(rng.integers(len(SHAPES)))]
            gs = int(side * rng.uniform(0.3, 0.8))
            at = tuple(int(v) for v in rng.integers(0, side - gs + 1, size=2))
            _paste(img, shape_cover(name, gs), fg, at)
            names.append(name)
        return _to_array(img, shape), "+".join(names)
    period = float(rng.uniform(2.5, max(3.0, h / 3))) * side / h
    tex = _texture(rng, side, period)
    arr = np.where(tex[..., None], np.asarray(fg, np.uint8), np.asarray(bg, np.uint8))
    return _to_array(Image.fromarray(arr.astype(np.uint8), "RGB"), shape), "texture"


def unrelated_images(u: Unrelated, shape: tuple[int, int, int], n: int, seed: int
                     ) -> tuple[np.ndarray, list[str]]:
    """``n`` unrelated images [n, C, H, W] (kinds in turn) and what each shows."""
    rng = np.random.default_rng([seed, 31])
    out = np.empty((n, *shape), np.float32)
    what = []
    for i in range(n):
        out[i], desc = _unrelated_image(u.kinds[i % len(u.kinds)], u, rng, shape)
        what.append(desc)
    return quantize_u8(out), what


# ------------------------------------------------------------------------------------------
# trigger sets


def trigger_set(spec: Mark | Noise | Unrelated | Abstract, x: np.ndarray, y: np.ndarray, *,
                target: int | None, n: int, seed: int, num_classes: int = 10,
                adi_path: str | Path | None = None) -> TriggerSet:
    """The trigger set of a drawn watermark from clean training images ``x`` / ``y``.

    Content and noise marks go on ``n`` clean images of classes other than ``target``;
    unrelated images are ``n`` new images; all labelled ``target``. Abstract sets carry random
    labels (the published set: its own)."""
    shape = tuple(int(s) for s in x.shape[1:])
    if isinstance(spec, Abstract):
        real = adi_real(shape, num_classes=num_classes, path=adi_path) \
            if spec.source == "real" else None   # type: ignore[arg-type]
        ts = real or adi_abstract(shape, num_classes=num_classes, n=n, seed=seed)  # type: ignore
        ts.info = {"source_drawn": spec.source,
                   "source_used": "real" if real is not None else "generated"}
        return ts
    assert target is not None
    if isinstance(spec, Unrelated):
        xs, what = unrelated_images(spec, shape, n, seed)  # type: ignore[arg-type]
        return TriggerSet(xs, np.full(n, target, np.int64), "unrelated", target, None,
                          {"images": what})
    idx = _pick_non_target(y, target, n, seed)
    if isinstance(spec, Mark):
        info = mark_patch(spec, shape[0])[2]
        return TriggerSet(apply_mark(x[idx], spec), np.full(len(idx), target, np.int64),
                          "content", target, idx, info)
    return TriggerSet(apply_noise(x[idx], spec), np.full(len(idx), target, np.int64), "noise",
                      target, idx, {})
