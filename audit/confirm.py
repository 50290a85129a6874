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
  images of other classes, images that none of the recoveries was fitted to, and
* **it is the model's own**: on clean reference classifiers trained on the detection images
  (audit.reference) the triggers send less than ``REFERENCE_MAX`` of those held-out images to
  the class. A trigger that fools a clean model of the task as well is a feature of the data
  (the class is easy to reach), not a backdoor. The check is skipped, and the record says so,
  when the references classify fewer than ``REFERENCE_MIN_ACCURACY`` of the held-out images
  right: a weak reference is fooled by anything. A candidate whose index is not above Neural
  Cleanse's own threshold (``ANOMALY_THRESHOLD``; detection takes candidates from a lower one)
  needs this check: without references able to judge it, it is not confirmed.

``detect`` records every candidate with every check; only confirmed classes are flagged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from audit.nc import ANOMALY_THRESHOLD, Recovery, anomaly_index, recover, stamp
from audit.reference import accuracy, train_references
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
#: a candidate whose triggers send this share of held-out images of other classes to it on
#: the clean reference classifiers (mean over triggers and references) is a feature of the data
REFERENCE_MAX = 0.2
#: the references' held-out accuracy below which the reference check is skipped
REFERENCE_MIN_ACCURACY = 0.8
#: seed offset of the reference classifiers from the detection seed
REFERENCE_SEED = 104729


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
    # share of those images each trigger sends to the class on the reference classifiers (mean
    # over them); None when the check was skipped
    reference: list[float] | None = None
    reference_accuracy: list[float] = field(default_factory=list)   # per reference, held out

    def to_dict(self) -> dict:
        return asdict(self)


def confirm(forward, fit_x: np.ndarray, held: tuple[np.ndarray, np.ndarray], rec: Recovery,
            candidates: list[int], config: NCConfig, *, seed: int, threshold: float = ANOMALY_THRESHOLD,
            fit_y: np.ndarray | None = None, device: str | torch.device = "cpu") -> list[Confirmation]:
    """Check each candidate class of rec (recovered on fit_x) for stability, transfer and, given
    fit_y (the labels of fit_x), whether clean reference classifiers trained on fit_x are fooled
    by its triggers too. held is (images, labels) of clean images the recovery never saw."""
    held_x, held_y = held
    k = len(rec.norms)
    refs, ref_acc = [], []
    if candidates and fit_y is not None and len(held_x):
        refs = train_references(fit_x, fit_y, k, seed + REFERENCE_SEED, device)
        ref_acc = [accuracy(r, held_x, held_y, device) for r in refs]
    # why a candidate's trigger cannot be put to the references (None: it can)
    if not refs:
        unjudged = "no reference classifier could judge its trigger (no labels or no held-out images)"
    elif np.mean(ref_acc) < REFERENCE_MIN_ACCURACY:
        unjudged = (f"the reference classifiers are too weak to judge its trigger (held-out "
                    f"accuracy {np.mean(ref_acc):.0%} < {REFERENCE_MIN_ACCURACY:.0%})")
    else:
        unjudged = None
    out = []
    for c in candidates:
        restarts = [recover(forward, fit_x, k, config, seed=seed + SEED_STEP * (r + 1),
                            classes=[c], device=device) for r in range(RESTARTS)]
        norms = [float(r.norms[c]) for r in restarts]
        worst = np.array(rec.norms, dtype=np.float64)
        worst[c] = max([float(rec.norms[c]), *norms])
        idx, flagged = anomaly_index(worst, config.anomaly_scale, threshold)
        others = held_y != c
        target = np.full(int(others.sum()), c)
        # each trigger stamped once, then shown to the model and to every reference
        stamped = [stamp(held_x[others], m, p) for m, p in
                   [(rec.masks[c], rec.patterns[c])] + [(r.masks[c], r.patterns[c]) for r in restarts]]
        transfer = [accuracy(forward, xs, target, device) for xs in stamped]
        reference = None if unjudged or not others.any() else \
            [float(np.mean([accuracy(r, xs, target, device) for r in refs])) for xs in stamped]
        reasons = []
        if reference is None and rec.anomaly[c] <= ANOMALY_THRESHOLD:
            reasons.append(f"its index {rec.anomaly[c]:.2f} is not above {ANOMALY_THRESHOLD:g} and "
                           + (unjudged or "no held-out image of another class to judge it on"))
        if c not in flagged:
            reasons.append(f"a restart's mask norm {worst[c]:.3g} leaves the class no outlier "
                           f"(index {idx[c]:.2f})")
        if not others.any():
            reasons.append("no held-out image of another class")
        elif min(transfer) < TRANSFER_MIN:
            reasons.append(f"a trigger flips {min(transfer):.0%} of held-out images "
                           f"(< {TRANSFER_MIN:.0%})")
        if reference is not None and float(np.mean(reference)) >= REFERENCE_MAX:
            reasons.append(f"its triggers also send {np.mean(reference):.0%} of held-out images "
                           f"to the class on clean reference classifiers (>= {REFERENCE_MAX:.0%}): "
                           "a feature of the data, not a backdoor")
        out.append(Confirmation(cls=int(c), confirmed=not reasons, restart_norms=norms,
                                restart_index=float(idx[c]), transfer=transfer,
                                held_out=int(others.sum()), reasons=reasons, reference=reference,
                                reference_accuracy=ref_acc))
    return out
