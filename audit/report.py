"""Report files: atomic JSON and PNG pictures of recovered triggers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from audit.paths import atomic_write

SCHEMA_VERSION = 1


def write_json(path: str | os.PathLike, obj) -> Path:
    text = json.dumps(obj, indent=2, default=json_default) + "\n"
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def json_default(o):
    """numpy scalars/arrays and paths as plain JSON values."""
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def write_png(path: str | os.PathLike, img_chw: np.ndarray, min_side: int = 96) -> Path:
    """Save a CHW [0,1] image, enlarged with nearest-neighbour so small triggers stay visible."""
    a = np.clip(np.asarray(img_chw), 0, 1)
    a = (a * 255 + 0.5).astype(np.uint8)
    im = Image.fromarray(a[0], "L") if a.shape[0] == 1 else Image.fromarray(a[:3].transpose(1, 2, 0))
    factor = max(1, -(-min_side // max(im.size)))
    if factor > 1:
        im = im.resize((im.size[0] * factor, im.size[1] * factor), Image.NEAREST)
    return atomic_write(path, lambda fh: im.save(fh, format="PNG"))


def write_recovery_pngs(folder: str | os.PathLike, rec, example: np.ndarray | None,
                        classes=None) -> list[str]:
    """mask_K.png, pattern_K.png, trigger_K.png (mask*pattern) and stamped_K.png per class
    (every class, or those given)."""
    out = []
    folder = Path(folder)
    for k in range(len(rec.masks)) if classes is None else classes:
        m, pat = rec.masks[k], rec.patterns[k]
        out.append(str(write_png(folder / f"mask_{k}.png", m)))
        out.append(str(write_png(folder / f"pattern_{k}.png", pat)))
        out.append(str(write_png(folder / f"trigger_{k}.png", m * pat)))
        if example is not None:
            out.append(str(write_png(folder / f"stamped_{k}.png", rec.stamp(example[None], k)[0])))
    return out
