"""Adversarial unlearning: triggers that chase what still fires, re-optimised while retraining.

Neural Cleanse returns the smallest trigger that flips the model, usually a core of the real
watermark; a dense, faint mark (Zhang's noise) it barely sees at all. Retraining on the core
alone leaves the rest of the mark working. So, for every suspect class, retraining keeps two
attacks up to date against the current weights and learns the images they make with their
true labels:

- a **patch trigger** (mask and pattern, as Neural Cleanse's) warm-started from the class's
  recovered trigger and free to grow up to ``PATCH_GROWTH`` times its mask norm (an L1
  penalty whose weight moves to hold it there): once the core is unlearnt, it moves to the
  part of the mark that still works;
- a **universal perturbation** δ with ‖δ‖∞ ≤ ``eps`` (targeted projected gradient steps on
  the subset, as universal adversarial perturbations and adversarial unlearning use): it finds
  dense marks a mask cannot express.

Each epoch of retraining first takes ``steps`` optimisation steps of both attacks on random
subset images not of the class, then mixes their images into every batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# the patch trigger's mask may grow to this many times the recovered norm before its L1
# penalty starts, and never beyond PATCH_CAP times the median norm of every class's
# recovered trigger: a mask as large as an ordinary class's is no watermark, and unlearning it
# would teach the model to ignore real digits
PATCH_GROWTH = 3.0
PATCH_CAP = 0.5
PATCH_LR = 0.1
# the L1 weight starts here and is multiplied (divided) by PATCH_COST_STEP after each step
# with the mask over (within) its budget, as Neural Cleanse moves its lambda
PATCH_COST = 1e-2
PATCH_COST_STEP = 1.5
# images per attack step
ATTACK_BATCH = 64


def _logit(v: np.ndarray) -> torch.Tensor:
    """The tanh parameter of values in [0, 1] (kept off the ends), as a leaf to optimise."""
    v = np.clip(np.asarray(v, np.float32), 0.02, 0.98)
    return torch.from_numpy(np.arctanh(2 * v - 1)).requires_grad_(True)


@dataclass
class _Attack:
    """One suspect class's attacks: patch logits (mask, pattern) and the universal δ."""

    cls: int
    mask_logit: torch.Tensor      # [1, H, W]
    pattern_logit: torch.Tensor   # [C, H, W]
    budget: float                 # the mask's L1 norm the penalty holds it to
    delta: torch.Tensor           # [C, H, W], |δ| <= eps
    opt: torch.optim.Optimizer
    pool: torch.Tensor            # indices of subset images not of cls
    cost: float = PATCH_COST      # weight of the mask's L1 norm, moved to keep it in budget

    def mask(self) -> torch.Tensor:
        return (torch.tanh(self.mask_logit) + 1) / 2

    def pattern(self) -> torch.Tensor:
        return (torch.tanh(self.pattern_logit) + 1) / 2

    def patched(self, x: torch.Tensor) -> torch.Tensor:
        m = self.mask()
        return (1 - m) * x + m * self.pattern()

    def perturbed(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.delta).clamp(0, 1)


class Adversary:
    """The attacks of every suspect class against the module behind ``forward``.

    ``triggers`` maps each suspect class to its recovered (mask [1,H,W], pattern [C,H,W]) in
    [0, 1]; ``median_norm`` is the median mask norm of the recovery over all classes; ``x``/``y``
    are the subset (torch, on the device), ``gen`` the CPU generator that draws every random
    index. A recovered mask larger than the budget is pulled down towards it.
    """

    def __init__(self, forward, x: torch.Tensor, y: torch.Tensor,
                 triggers: dict[int, tuple[np.ndarray, np.ndarray]], median_norm: float, eps: float,
                 steps: int, gen: torch.Generator):
        self.forward, self.x, self.y, self.eps, self.steps, self.gen = forward, x, y, eps, steps, gen
        self.attacks = []
        for c, (mask, pattern) in sorted(triggers.items()):
            m, p = _logit(mask).to(x.device), _logit(pattern).to(x.device)
            pool = torch.nonzero(y.cpu() != c).flatten()
            if len(pool) == 0:
                continue
            self.attacks.append(_Attack(
                cls=c, mask_logit=m, pattern_logit=p,
                budget=min(PATCH_GROWTH * float(np.abs(mask).sum()), PATCH_CAP * median_norm),
                delta=torch.zeros_like(x[0]),
                opt=torch.optim.Adam([m, p], lr=PATCH_LR, betas=(0.5, 0.9)), pool=pool))

    def refresh(self, module: torch.nn.Module) -> None:
        """``steps`` steps of both attacks of every class on the current weights (eval mode)."""
        was = module.training
        module.eval()
        params = [p for p in module.parameters() if p.requires_grad]
        for p in params:
            p.requires_grad_(False)
        try:
            for a in self.attacks:
                for _ in range(self.steps):
                    self._step(a)
        finally:
            for p in params:
                p.requires_grad_(True)
            module.train(was)

    def _step(self, a: _Attack) -> None:
        pick = a.pool[torch.randint(0, len(a.pool), (ATTACK_BATCH,), generator=self.gen)]
        xb = self.x[pick.to(self.x.device)]
        target = torch.full((len(xb),), a.cls, dtype=torch.long, device=xb.device)
        # patch: cross-entropy towards the class plus the mask's weighted L1 norm
        a.opt.zero_grad(set_to_none=True)
        mask_norm = a.mask().sum()
        (F.cross_entropy(self.forward(a.patched(xb)), target) + a.cost * mask_norm).backward()
        a.opt.step()
        a.cost = a.cost * PATCH_COST_STEP if float(mask_norm.detach()) > a.budget else \
            max(a.cost / PATCH_COST_STEP, PATCH_COST * 1e-3)
        # universal perturbation: one signed-gradient step of eps/4, projected
        delta = a.delta.clone().requires_grad_(True)
        loss = F.cross_entropy(self.forward((xb + delta).clamp(0, 1)), target)
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            a.delta = (a.delta - self.eps / 4 * grad.sign()).clamp(-self.eps, self.eps)

    def batch(self, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        """m random subset images, attacked, with their true labels."""
        idx = torch.randint(0, len(self.y), (m,), generator=self.gen).to(self.x.device)
        return self.images(idx), self.y[idx]

    @torch.no_grad()
    def images(self, idx: torch.Tensor) -> torch.Tensor:
        """Subset images idx, each attacked by one suspect class's patch or perturbation
        (drawn at random; an image of that class keeps its own label, as every other does)."""
        xb = self.x[idx]
        which = torch.randint(0, 2 * len(self.attacks), (len(idx),), generator=self.gen)
        out = xb.clone()
        for j, a in enumerate(self.attacks):
            pm = (which == 2 * j).to(xb.device)
            dm = (which == 2 * j + 1).to(xb.device)
            if pm.any():
                out[pm] = a.patched(xb[pm])
            if dm.any():
                out[dm] = a.perturbed(xb[dm])
        return out

    def fire_rates(self, x: torch.Tensor, y: torch.Tensor) -> dict[int, dict[str, float]]:
        """Per class: the share of images x not of the class that its patch and its
        perturbation send to it (``patch``, ``dense``)."""
        out = {}
        with torch.no_grad():
            for a in self.attacks:
                keep = y != a.cls
                if not keep.any():
                    continue
                xs = x[keep]
                out[a.cls] = {
                    "patch": float((self.forward(a.patched(xs)).argmax(1) == a.cls).float().mean()),
                    "dense": float((self.forward(a.perturbed(xs)).argmax(1) == a.cls).float().mean())}
        return out
