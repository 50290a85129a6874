"""Report files: atomic JSON and PNG pictures of recovered triggers."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

SCHEMA_VERSION = 1


def write_json(path: str | os.PathLike, obj) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=p.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, default=json_default)
            f.write("\n")
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


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
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    a = np.clip(np.asarray(img_chw), 0, 1)
    a = (a * 255 + 0.5).astype(np.uint8)
    im = Image.fromarray(a[0], "L") if a.shape[0] == 1 else Image.fromarray(a[:3].transpose(1, 2, 0))
    factor = max(1, -(-min_side // max(im.size)))
    if factor > 1:
        im = im.resize((im.size[0] * factor, im.size[1] * factor), Image.NEAREST)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=p.parent)
    os.close(fd)
    im.save(tmp, format="PNG")
    os.replace(tmp, p)
    return p


def write_recovery_pngs(folder: str | os.PathLike, rec, example: np.ndarray | None) -> list[str]:
    """mask_K.png, pattern_K.png, trigger_K.png (mask*pattern) and stamped_K.png per class."""
    out = []
    folder = Path(folder)
    for k in range(len(rec.masks)):
        m, pat = rec.masks[k], rec.patterns[k]
        out.append(str(write_png(folder / f"mask_{k}.png", m)))
        out.append(str(write_png(folder / f"pattern_{k}.png", pat)))
        out.append(str(write_png(folder / f"trigger_{k}.png", m * pat)))
        if example is not None:
            out.append(str(write_png(folder / f"stamped_{k}.png", rec.stamp(example[None], k)[0])))
    return out
