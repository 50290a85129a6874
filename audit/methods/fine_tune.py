"""fine-tune: every layer retrained on the clean subset, nothing else (the simplest baseline)."""

from __future__ import annotations

from dataclasses import asdict

from audit.methods.base import Mirror

LIMITS = ("fine-tuning does not look for a trigger: a watermark the clean subset never shows "
          "may survive it (Adi et al. 2018; Zhang et al. 2018)")


def run(m: Mirror, progress=None) -> dict:
    tuned = m.fine_tune(m.subset.x, m.subset.y, seed=m.cfg.seed + 1, progress=progress)
    return {"fine_tune": asdict(tuned), "note": LIMITS}
