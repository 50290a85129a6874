"""nc-unlearn (Wang et al. 2019, Neural Cleanse's mitigation by unlearning): Neural Cleanse
recovers a trigger per class; the subset, with a share of its images stamped with the triggers
of the flagged classes and their true labels, fine-tunes every layer. Nothing is reset."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np

from audit.methods.base import Mirror, freeze
from audit.nc import recover


def run(m: Mirror, progress=None) -> dict:
    cfg = m.cfg
    freeze(m.module, True)
    rec = recover(m.forward, m.subset.x, m.k, cfg.nc, seed=cfg.seed + 1, device=m.device,
                  progress=(lambda e, n: progress("recover", e, n)) if progress else None)
    freeze(m.module, False)
    x = m.subset.x.copy()
    stamped = 0
    if rec.flagged:
        rng = np.random.default_rng(cfg.seed + 2)
        pick = rng.permutation(len(x))[: int(round(cfg.baseline.unlearn_share * len(x)))]
        for i, chunk in enumerate(np.array_split(pick, len(rec.flagged))):
            x[chunk] = rec.stamp(x[chunk], rec.flagged[i])
        stamped = len(pick)
    tuned = m.fine_tune(x, m.subset.y, seed=cfg.seed + 1, progress=progress)
    note = None if rec.flagged else \
        "Neural Cleanse flagged no class: the subset was fine-tuned without stamped images"
    return {"recovery": rec.summary(), "unlearn_share": cfg.baseline.unlearn_share,
            "images_stamped": stamped, "note": note, "fine_tune": asdict(tuned)}
