"""fine-prune (Liu et al. 2018, "Fine-Pruning"): the last conv layer's channels pruned in
increasing order of their mean activation on the clean subset (measured by onnxruntime on the
original graph), then fine-tuning with the pruned channels held at zero."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np

from audit.errors import AuditError
from audit.graphs.probe import mean_activations
from audit.methods.base import Mirror
from audit.reset import reset_units


def pruned_layer(m: Mirror):
    """The last hidden Conv layer the reset can reach; on a model without one, the last
    hidden dense layer (said in the report)."""
    hidden = [layer for layer in m.layers
              if not layer.is_output and layer.name not in m.not_resettable]
    convs = [layer for layer in hidden if layer.op == "Conv"]
    if convs:
        return convs[-1]
    if hidden:
        return hidden[-1]
    raise AuditError("fine-prune: the model has no hidden Conv or dense layer that can be "
                     "pruned" + "".join(f"; {k}: {v}" for k, v in m.not_resettable.items()))


def run(m: Mirror, progress=None) -> dict:
    share = m.cfg.baseline.prune_share
    layer = pruned_layer(m)
    means = mean_activations(m.am, m.subset.x, m.preprocess, [layer])[layer.name]
    n = int(round(share * layer.units))
    units = np.argsort(means, kind="stable")[:n]
    reset_units(m.tm, layer, units, m.keep)
    tuned = m.fine_tune(m.subset.x, m.subset.y, seed=m.cfg.seed + 1, progress=progress)
    note = None if layer.op == "Conv" else \
        "the model has no conv layer: its last hidden dense layer was pruned instead"
    return {"prune_share": share, "layer": layer.name, "layer_op": layer.op,
            "units": layer.units, "units_pruned": int(n),
            "pruned_mean_activation_max": float(means[units].max()) if n else None,
            "note": note, "fine_tune": asdict(tuned)}
