"""prune: global magnitude pruning of the Conv/Gemm weights (Zhang et al. 2018 tested 90%),
then fine-tuning on the clean subset with the pruned weights held at zero."""

from __future__ import annotations

from dataclasses import asdict

import torch
from torch import nn

from audit.errors import AuditError
from audit.methods.base import Mirror

WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
LIMITS = ("magnitude pruning does not look for a trigger: a watermark stored in large weights "
          "survives it (Zhang et al. 2018 kept theirs at 90%)")


def prunable_weights(m: Mirror) -> dict[str, torch.Tensor]:
    """module path -> weight of every Conv/Linear module whose weight is written back to the
    ONNX graph (the output layer included)."""
    out = {}
    for b in m.tm.bindings:
        mod = m.module.get_submodule(b.module)
        if b.attr == "weight" and isinstance(mod, WEIGHTED):
            out[b.module] = mod.weight
    return out


@torch.no_grad()
def magnitude_masks(weights: dict[str, torch.Tensor], share: float) -> dict[str, torch.Tensor]:
    """Per tensor, the elements among the `share` of all elements with the smallest |w|."""
    flat = torch.cat([w.detach().abs().flatten().cpu() for w in weights.values()])
    n = int(round(share * flat.numel()))
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    chosen[torch.argsort(flat, stable=True)[:n]] = True
    masks, start = {}, 0
    for name, w in weights.items():
        masks[name] = chosen[start:start + w.numel()].view_as(w)
        start += w.numel()
    return masks


def run(m: Mirror, progress=None) -> dict:
    share = m.cfg.baseline.prune_share
    weights = prunable_weights(m)
    if not weights:
        raise AuditError("prune: the model has no trainable Conv/Gemm weight written back to "
                         "its graph")
    masks = magnitude_masks(weights, share)
    for name, w in weights.items():
        m.keep.add_mask(w, masks[name], 0.0)
    tuned = m.fine_tune(m.subset.x, m.subset.y, seed=m.cfg.seed + 1, progress=progress)
    total = sum(w.numel() for w in weights.values())
    pruned = sum(int(mask.sum()) for mask in masks.values())
    return {"prune_share": share, "weights": total, "weights_pruned": pruned,
            "pruned_per_layer": {k: round(float(v.float().mean()), 4) for k, v in masks.items()},
            "note": LIMITS, "fine_tune": asdict(tuned)}
