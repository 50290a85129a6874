"""Algorithm 1 of the laundering paper: find units that fire for the trigger and reset them."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from audit.converters.to_torch import module_device
from audit.errors import AuditError
from audit.graphs.probe import ProbeLayer

NONZERO_AT_ZERO = {"Sigmoid", "Softplus", "HardSigmoid"}


@dataclass(frozen=True)
class Threshold:
    """`abs:V` (or plain V): A_diff > V.  `z:K`: A_diff > mean + K*std of the layer's A_diff.
    `top:F`: the fraction F of the layer's units with the largest positive A_diff."""

    kind: str
    value: float

    @classmethod
    def parse(cls, text: str | float) -> Threshold:
        s = str(text).strip().lower()
        m = re.fullmatch(r"(?:(abs|z|top):)?\s*([-+]?\d*\.?\d+(?:e[-+]?\d+)?)", s)
        if not m:
            raise AuditError(f"bad threshold {text!r}: use a number, abs:V, z:K or top:F")
        kind = m.group(1) or "abs"
        value = float(m.group(2))
        if kind == "top" and not 0 < value <= 1:
            raise AuditError(f"bad threshold {text!r}: top:F needs 0 < F <= 1")
        return cls(kind, value)

    def cutoff(self, adiff: np.ndarray, floor: float | None = None) -> float:
        """The A_diff a unit must exceed; never below floor when one is given."""
        if self.kind == "abs":
            cut = self.value
        elif self.kind == "z":
            cut = float(adiff.mean() + self.value * adiff.std())
        else:
            k = max(1, int(round(self.value * adiff.size)))
            cut = float(np.sort(adiff)[-k]) - 1e-12
        return cut if floor is None else max(cut, floor)

    def select(self, adiff: np.ndarray, floor: float | None = None) -> np.ndarray:
        """Indices of units whose A_diff exceeds the cutoff (at least floor) and is positive."""
        return np.flatnonzero((adiff > self.cutoff(adiff, floor)) & (adiff > 0))

    def __str__(self) -> str:
        return f"{self.kind}:{self.value:g}"


def choose_layers(layers: list[ProbeLayer], spec: str, not_resettable: dict[str, str] | None = None
                  ) -> list[ProbeLayer]:
    """all | second-half | comma-separated node names; the output layer is never chosen, nor a
    layer of not_resettable (name -> why): `all` and `second-half` leave such layers out, a
    name given is an error."""
    skip = not_resettable or {}
    hidden = [layer for layer in layers if not layer.is_output]
    if spec in ("all", "second-half"):
        chosen = hidden if spec == "all" else hidden[len(hidden) // 2:]
        return [layer for layer in chosen if layer.name not in skip]
    names = [n.strip() for n in spec.split(",") if n.strip()]
    by_name = {layer.name: layer for layer in layers}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise AuditError(f"--layers: unknown layer {unknown[0]!r}; known: "
                         + ", ".join(layer.name for layer in hidden))
    if any(by_name[n].is_output for n in names):
        raise AuditError("--layers: the output layer is never reset")
    bad = [n for n in names if n in skip]
    if bad:
        raise AuditError(f"--layers: layer {bad[0]!r} cannot be reset: {skip[bad[0]]}")
    return [by_name[n] for n in names]


def reset_module(tm, layer: ProbeLayer) -> tuple[nn.Module | None, str | None]:
    """The trainable nn.Conv*/nn.Linear that holds layer's weights, one row per unit, and whose
    weight is written back to the ONNX graph; or None and why the layer cannot be reset."""
    path = tm.node_modules.get(layer.name)
    if path is None:
        return None, "the torch mirror has no module for its node"
    mod = tm.layer_module(layer.name)
    if mod is None:
        kind = type(tm.module.get_submodule(path)).__name__
        return None, (f"onnx2torch converted the {layer.op} node to {kind}, which holds its weight "
                      "as a constant, not as a trainable parameter")
    bound = {id(getattr(tm.module.get_submodule(b.module), b.attr)) for b in tm.bindings}
    if id(mod.weight) not in bound or (mod.bias is not None and id(mod.bias) not in bound):
        return None, "its torch parameters are not written back to the ONNX graph"
    if mod.weight.shape[0] != layer.units:
        return None, f"its torch weight has {mod.weight.shape[0]} rows for {layer.units} units"
    return mod, None


def not_resettable(tm, layers: list[ProbeLayer]) -> dict[str, str]:
    """Hidden layers (name -> why) whose units the reset cannot reach in the torch mirror."""
    out = {}
    for layer in layers:
        if not layer.is_output:
            why = reset_module(tm, layer)[1]
            if why:
                out[layer.name] = why
    return out


class ResetMask:
    """Keeps reset units at their reset value through retraining."""

    def __init__(self) -> None:
        self._fixed: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # tensor, mask, value

    def add(self, tensor: torch.Tensor, rows: np.ndarray, value: float) -> None:
        """Hold the rows (units) of tensor at value."""
        mask = torch.zeros_like(tensor, dtype=torch.bool)
        mask[torch.as_tensor(rows, dtype=torch.long).to(tensor.device)] = True
        self.add_mask(tensor, mask, value)

    def add_mask(self, tensor: torch.Tensor, mask: torch.Tensor, value: float) -> None:
        """Hold the elements of tensor where mask (bool, tensor's shape) is true at value."""
        self._fixed.append((tensor, mask.to(tensor.device), torch.full_like(tensor, value)))
        self.apply()

    @torch.no_grad()
    def apply(self) -> None:
        for tensor, mask, fill in self._fixed:
            tensor.data = torch.where(mask, fill, tensor.data)

    def __len__(self) -> int:
        return len(self._fixed)


def reset_units(tm, layer: ProbeLayer, units: np.ndarray, keep: ResetMask) -> None:
    """Zero (or set to the layer's median weight) the incoming weights and bias of units."""
    mod, why = reset_module(tm, layer)
    if mod is None:
        raise AuditError(f"layer {layer.name!r} cannot be reset: {why}")
    value = float(mod.weight.detach().median()) if layer.activation in NONZERO_AT_ZERO else 0.0
    keep.add(mod.weight, units, value)
    if mod.bias is not None:
        keep.add(mod.bias, units, value)
    bn = following_batchnorm(tm, layer)
    if bn is not None:  # a BN after the conv would re-add its shift: silence the channel there too
        keep.add(bn.weight, units, 0.0)
        keep.add(bn.bias, units, 0.0)


@torch.no_grad()
def shrink_weights(tm, layers: list[ProbeLayer], factor: float) -> int:
    """Multiply the weights (not the biases) of the layers' torch modules by factor.

    A shrunk warm start (Ash & Adams, "On warm-starting neural network training", 2020): the
    retraining then rebuilds what its data rehearses, and responses it never sees, such as
    memorised out-of-distribution images, fade. A BatchNorm right after a layer would
    normalise the shrink away, so its scale (gamma) is multiplied instead of nothing: the
    same as shrinking the layer's weights with its shift kept. Returns the number of tensors
    scaled.
    """
    seen: set[int] = set()
    for layer in layers:
        mod = reset_module(tm, layer)[0]
        if mod is None:
            continue
        bn = following_batchnorm(tm, layer)
        for w in (mod.weight, bn.weight if bn is not None and bn.affine else None):
            if w is not None and id(w) not in seen:
                seen.add(id(w))
                w.mul_(factor)
    return len(seen)


def following_batchnorm(tm, layer: ProbeLayer) -> nn.Module | None:
    graph = tm.graph.graph
    out = next((n.output[0] for n in graph.node if n.name == layer.name), None)
    for n in graph.node:
        if n.op_type == "BatchNormalization" and n.input and n.input[0] == out:
            mod = tm.submodule(n.name)
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                return mod
    return None


def reset_batchnorm_stats(module: nn.Module) -> int:
    count = 0
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            m.reset_running_stats()
            count += 1
    return count


@torch.no_grad()
def reestimate_batchnorm(module: nn.Module, forward, x01: np.ndarray, batch_size: int = 128, *,
                         device: str | torch.device | None = None) -> None:
    """Exact (cumulative) BN statistics over x01, computed in train mode without updates; the
    batches go to device (None: where the module's parameters are)."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    if device is None:
        device = module_device(module)
    saved = [(m, m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    was = module.training
    module.eval()  # dropout off; only the BN layers collect statistics
    for m in bns:
        m.train()
    for i in range(0, len(x01), batch_size):
        forward(torch.from_numpy(x01[i:i + batch_size]).to(device))
    module.train(was)
    for m, mom in saved:
        m.momentum = mom
