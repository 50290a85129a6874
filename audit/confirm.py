"""Confirming a Neural Cleanse flag before a detector raises it.

Neural Cleanse flags a class whose recovered mask is an outlier on the small side. On a clean
model that happens by chance: one optimisation run lands in an unusually small minimum, or
finds a perturbation that works on the images it was fitted to and nowhere else. A backdoor's
trigger is neither: it is small from every start and it works on any image. A flagged class is
therefore confirmed only when

* **it stays small**: ``RESTARTS`` more recoveries of that class from other seeds, on the same
  images, all give masks that keep the class an outlier when its norm is replaced by the
  largest of them (the anomaly index of the other classes' norms is unchanged), and
* **it transfers**: each of those triggers flips at least ``TRANSFER_MIN`` of held-out clean
  images of other classes, images that none of the recoveries was fitted to.

``detect`` records every candidate with both checks; only confirmed classes are flagged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from audit.nc import ANOMALY_THRESHOLD, Recovery, anomaly_index, recover, stamp
from audit.settings import NCConfig

#: further recoveries of a flagged class, from other seeds
RESTARTS = 2
#: the least share of held-out images of other classes each trigger must flip
TRANSFER_MIN = 0.8
#: held-out images kept out of the recovery for the transfer check (at most)
HELD_OUT_MAX = 500
#: and at least, below which the images are split instead
HELD_OUT_MIN = 20
#: seed offset of restart r (1-based) from the detection seed
SEED_STEP = 7919


@dataclass
class Confirmation:
    """What the confirmation found for one candidate class."""

    cls: int
    confirmed: bool
    restart_norms: list[float]
    restart_index: float          # the class's anomaly index with its largest restart norm
    transfer: list[float]         # share of held-out images flipped, first recovery then restarts
    held_out: int                 # held-out images of other classes
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def confirm(forward, fit_x: np.ndarray, held: tuple[np.ndarray, np.ndarray], rec: Recovery,
            candidates: list[int], config: NCConfig, *, seed: int, threshold: float = ANOMALY_THRESHOLD,
            device: str | torch.device = "cpu") -> list[Confirmation]:
    """Check each candidate class of rec (recovered on fit_x) for stability and transfer.
    held is (images, labels) of clean images the recovery never saw."""
    held_x, held_y = held
    k = len(rec.norms)
    out = []
    for c in candidates:
        restarts = [recover(forward, fit_x, k, config, seed=seed + SEED_STEP * (r + 1),
                            classes=[c], device=device) for r in range(RESTARTS)]
        norms = [float(r.norms[c]) for r in restarts]
        worst = np.array(rec.norms, dtype=np.float64)
        worst[c] = max([float(rec.norms[c]), *norms])
        idx, flagged = anomaly_index(worst, config.anomaly_scale, threshold)
        others = held_y != c
        triggers = [(rec.masks[c], rec.patterns[c])] + [(r.masks[c], r.patterns[c]) for r in restarts]
        transfer = [_flip_rate(forward, held_x[others], c, m, p, device) for m, p in triggers]
        reasons = []
        if c not in flagged:
            reasons.append(f"a restart's mask norm {worst[c]:.3g} leaves the class no outlier "
                           f"(index {idx[c]:.2f})")
        if not others.any():
            reasons.append("no held-out image of another class")
        elif min(transfer) < TRANSFER_MIN:
            reasons.append(f"a trigger flips {min(transfer):.0%} of held-out images "
                           f"(< {TRANSFER_MIN:.0%})")
        out.append(Confirmation(cls=int(c), confirmed=not reasons, restart_norms=norms,
                                restart_index=float(idx[c]), transfer=transfer,
                                held_out=int(others.sum()), reasons=reasons))
    return out


@torch.no_grad()
def _flip_rate(forward, x01: np.ndarray, target: int, mask: np.ndarray, pattern: np.ndarray,
               device, batch: int = 256) -> float:
    if len(x01) == 0:
        return 0.0
    hits = 0
    for i in range(0, len(x01), batch):
        xb = torch.from_numpy(stamp(x01[i:i + batch], mask, pattern)).to(device)
        hits += int((forward(xb).argmax(1) == target).sum())
    return hits / len(x01)
