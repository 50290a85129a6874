"""Retraining on the small clean subset, keeping reset units at their reset value."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from audit.converters.to_torch import module_device
from audit.reset import ResetMask
from audit.settings import RetrainConfig
from audit.unlearn import Adversary

# fixed (no setting, test or bench ever changed them):
# after `epochs`, retraining goes on (up to max_epochs) until the stamped images reach this
TARGET_ACCURACY = 0.99
# softmax temperature of the distillation term
KD_TEMPERATURE = 4.0
# weight of the out-of-distribution (sink class) term
OOD_WEIGHT = 1.0
# attacked subset images (audit.unlearn) per batch, as a share of the batch
ADVERSARIAL_SHARE = 0.5


def _shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    # drawn on the CPU (the generator's stream), used where x is
    rows = (dy[:, None] + torch.arange(h)[None]).clamp(0, h + 2 * max_shift - 1).to(x.device)
    cols = (dx[:, None] + torch.arange(w)[None]).clamp(0, w + 2 * max_shift - 1).to(x.device)
    idx_n = torch.arange(n)[:, None, None].to(x.device)
    out = padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def _kd(logits: torch.Tensor, teacher_logits: torch.Tensor, t: float,
        free: torch.Tensor | None = None) -> torch.Tensor:
    """Distillation loss; the classes marked in free (bool, [n, K]) are left out of both
    softened distributions for that sample."""
    if free is not None:
        logits = logits.masked_fill(free, -1e4)
        teacher_logits = teacher_logits.masked_fill(free, -1e4)
    target = F.softmax(teacher_logits / t, dim=1)
    return F.kl_div(F.log_softmax(logits / t, dim=1), target, reduction="batchmean") * t * t


def free_scores(labels: tuple[torch.Tensor, torch.Tensor], suspects: Sequence[int], k: int
                ) -> torch.Tensor | None:
    """[n, k] bool: the suspect classes' scores left out of the distillation on a sample none
    of whose two labels (a clean image: its label twice; a mixup blend: its two images'
    labels) is that class. None without suspects.

    On a watermarked teacher a suspect target's score carries the mark: images that share part
    of it (shifted digits, blends) score higher on it than a clean model would give them, and
    distilling those scores teaches the mark again however well the stamped images unteach it.
    Left out, the class's score on such images follows only the hard labels.
    """
    if not suspects:
        return None
    free = torch.zeros(len(labels[0]), k, dtype=torch.bool, device=labels[0].device)
    for c in suspects:
        free[(labels[0] != c) & (labels[1] != c), c] = True
    return free


@dataclass
class _Batches:
    """The retraining data as tensors, and how each sample is treated."""

    x: torch.Tensor
    y: torch.Tensor
    augment: torch.Tensor      # bool: may be shifted
    soft: torch.Tensor         # bool: distilled from the teacher
    shift: int
    use_kd: bool
    free: tuple[int, ...] = ()   # classes whose scores are left out of the distillation (free_scores)


def retrain(module: torch.nn.Module, forward, x01: np.ndarray, y: np.ndarray, cfg: RetrainConfig,
            keep: ResetMask, *, seed: int = 0, augment_mask: np.ndarray | None = None,
            teacher=None, distill_mask: np.ndarray | None = None,
            target_mask: np.ndarray | None = None,
            ood: Callable[[int], np.ndarray] | None = None, ood_label: int | None = None,
            adversary: Adversary | None = None, free: Sequence[int] = (), progress=None,
            device: str | torch.device | None = None) -> list[float]:
    """Fine-tune module (through forward) on (x01, y). Returns the mean loss per epoch.

    augment_mask marks the samples that may be shifted (clean and stamped images; the
    recovered masks are positional and stay as they are). With cfg.distill > 0 the samples in
    distill_mask (clean images) also learn the teacher's softened scores, and so do mixup
    blends of them (cfg.mixup): a few hundred hard labels alone pull a converged model off its
    clean behaviour. ood(epoch) gives that epoch's out-of-distribution images, learnt as
    ood_label alongside the batches. With target_mask (the stamped images), training continues
    past cfg.epochs until those are classified with TARGET_ACCURACY, or cfg.max_epochs.
    With cfg.ema > 0 the module ends with the running average of its weights (the average is
    also what the target accuracy is checked on). With an adversary (audit.unlearn), each epoch
    first re-optimises its attacks on the current weights, and every batch also learns
    ADVERSARIAL_SHARE of its size in attacked subset images with their true labels. The
    scores of the classes in free are left out of the distillation on images of other classes
    (free_scores).

    The batches, the OOD images and the masks go to device (None: where the module's parameters
    are), which is where module and teacher run; random numbers (order, shifts, mixup) are
    drawn on the CPU and moved, so CPU results do not depend on it.
    """
    device = torch.device(device) if device is not None else module_device(module)
    gen = torch.Generator().manual_seed(seed)
    opt = _optimizer([p for p in module.parameters() if p.requires_grad], cfg)
    n = len(y)
    data = _Batches(
        x=torch.from_numpy(x01).to(device), y=torch.from_numpy(y.astype(np.int64)).to(device),
        augment=(torch.from_numpy(augment_mask) if augment_mask is not None
                 else torch.ones(n, dtype=torch.bool)).to(device),
        soft=(torch.from_numpy(distill_mask) if distill_mask is not None
              else torch.ones(n, dtype=torch.bool)).to(device),
        shift=cfg.shift_for(*x01.shape[2:]), use_kd=teacher is not None and cfg.distill > 0,
        free=tuple(int(c) for c in free))
    if target_mask is not None:
        target_mask = torch.as_tensor(target_mask).to(device)
    n_batches = max(1, -(-n // cfg.batch_size))
    ema = _Ema(module, cfg.ema) if cfg.ema > 0 else None
    losses = []
    module.train()
    total_epochs = max(cfg.epochs, cfg.max_epochs) if target_mask is not None else cfg.epochs
    for epoch in range(total_epochs):
        if epoch >= cfg.epochs and _accuracy(module, forward, data.x[target_mask], data.y[target_mask],
                                             ema) >= TARGET_ACCURACY:
            break
        perm = torch.randperm(n, generator=gen)
        xo = torch.from_numpy(ood(epoch)).to(device) if ood is not None and OOD_WEIGHT > 0 else None
        if adversary is not None:
            adversary.refresh(module)
        step = _Step(forward=forward, data=data, cfg=cfg, gen=gen, teacher=teacher, ood_label=ood_label,
                     opt=opt, keep=keep, ema=ema, device=device, adversary=adversary)
        losses.append(_epoch(step, perm, xo, n_batches))
        if progress:
            progress(min(epoch + 1, cfg.epochs), cfg.epochs)
    if ema is not None:
        ema.copy_to()
        keep.apply()
    module.eval()
    return losses


@dataclass
class _Step:
    """What one optimisation step of retrain() uses."""

    forward: Callable
    data: _Batches
    cfg: RetrainConfig
    gen: torch.Generator
    teacher: object
    ood_label: int | None
    opt: torch.optim.Optimizer
    keep: ResetMask
    ema: _Ema | None
    device: torch.device
    adversary: Adversary | None = None


def _epoch(step: _Step, perm: torch.Tensor, xo: torch.Tensor | None, n_batches: int) -> float:
    """One pass over the batches of perm (drawn on the CPU; each batch's indices go to the
    device) with this epoch's OOD images xo; the mean loss."""
    per_batch = -(-len(xo) // n_batches) if xo is not None else 0
    total, count = 0.0, 0
    for b, i in enumerate(range(0, len(perm), step.cfg.batch_size)):
        idx = perm[i:i + step.cfg.batch_size].to(step.device)
        if len(idx) < 2:
            continue
        ob = xo[b * per_batch:(b + 1) * per_batch] if xo is not None else step.data.x[:0]
        adv = step.adversary.batch(max(1, round(ADVERSARIAL_SHARE * len(idx)))) if step.adversary is not None else None
        loss = _batch_loss(step.forward, step.data, idx, ob, step.cfg, step.gen, step.teacher, step.ood_label,
                           adv)
        step.opt.zero_grad(set_to_none=True)
        loss.backward()
        step.opt.step()
        step.keep.apply()
        if step.ema is not None:
            step.ema.update()
        total += float(loss.detach()) * len(idx)
        count += len(idx)
    return total / max(count, 1)


def _optimizer(params: list[torch.nn.Parameter], cfg: RetrainConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=cfg.lr)   # the only optimiser ever used, no weight decay


def _batch_loss(forward, data: _Batches, idx: torch.Tensor, ob: torch.Tensor, cfg: RetrainConfig,
                gen: torch.Generator, teacher, ood_label: int | None,
                adv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Cross-entropy on the batch idx and the attacked images adv (true labels), plus
    distillation on its clean images and their mixup blends, plus the OOD images ob learnt as
    ood_label; one forward pass over all of them."""
    xb, yb = data.x[idx], data.y[idx]
    if data.shift:
        a = data.augment[idx]
        if a.any():
            xb = xb.clone()
            xb[a] = _shift(xb[a], data.shift, gen)
    d = data.soft[idx] if data.use_kd else torch.zeros(len(idx), dtype=torch.bool).to(xb.device)
    clean, clean_y = xb[d], yb[d]
    mixed, mixed_y = clean[:0], (clean_y[:0], clean_y[:0])
    if data.use_kd and cfg.mixup > 0 and len(clean) >= 2:
        m = int(round(cfg.mixup * len(clean)))
        lam = torch.rand(m, 1, 1, 1, generator=gen).to(clean.device)
        i1 = torch.randint(0, len(clean), (m,), generator=gen).to(clean.device)
        i2 = torch.randint(0, len(clean), (m,), generator=gen).to(clean.device)
        mixed = lam * clean[i1] + (1 - lam) * clean[i2]
        mixed_y = (clean_y[i1], clean_y[i2])
    if adv is not None:
        xb, yb = torch.cat([xb, adv[0]]), torch.cat([yb, adv[1]])
        d = torch.cat([d, torch.zeros(len(adv[1]), dtype=torch.bool, device=d.device)])
    nb = len(yb)
    logits_all = forward(torch.cat([xb, mixed, ob]))
    logits, mixed_logits = logits_all[:nb], logits_all[nb:nb + len(mixed)]
    loss = F.cross_entropy(logits, yb)
    if len(clean):
        kd_x = torch.cat([clean, mixed])
        with torch.no_grad():
            t_logits = teacher(kd_x)
        free = free_scores((torch.cat([clean_y, mixed_y[0]]), torch.cat([clean_y, mixed_y[1]])),
                           data.free, t_logits.shape[1])
        loss = loss + cfg.distill * _kd(torch.cat([logits[d], mixed_logits]), t_logits, KD_TEMPERATURE,
                                        free)
    if len(ob):
        target = torch.full((len(ob),), int(ood_label), dtype=torch.long).to(logits_all.device)
        loss = loss + OOD_WEIGHT * F.cross_entropy(logits_all[-len(ob):], target)
    return loss


class _Ema:
    """Exponential moving average of a module's floating-point parameters and buffers."""

    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.live = [t for t in list(module.parameters()) + list(module.buffers())
                     if t.dtype.is_floating_point]
        self.avg = [t.detach().clone() for t in self.live]

    @torch.no_grad()
    def update(self) -> None:
        for a, t in zip(self.avg, self.live):
            a.lerp_(t.detach(), 1 - self.decay)

    @torch.no_grad()
    def copy_to(self) -> None:
        for a, t in zip(self.avg, self.live):
            t.copy_(a)

    @contextlib.contextmanager
    def swapped(self):
        """The live tensors hold the average inside the block, their own values after."""
        saved = [t.detach().clone() for t in self.live]
        self.copy_to()
        try:
            yield
        finally:
            with torch.no_grad():
                for s, t in zip(saved, self.live):
                    t.copy_(s)


@torch.no_grad()
def _accuracy(module, forward, x: torch.Tensor, y: torch.Tensor, ema: _Ema | None = None,
              batch_size: int = 256) -> float:
    was = module.training
    module.eval()
    with ema.swapped() if ema is not None else contextlib.nullcontext():
        correct = sum(int((forward(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
                      for i in range(0, len(y), batch_size))
    module.train(was)
    return correct / max(len(y), 1)
