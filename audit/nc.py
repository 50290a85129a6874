"""Neural Cleanse trigger recovery, optimised for all classes at once.

For every class t a mask m_t (one channel, [0,1]) and a pattern p_t ([0,1], image channels)
are optimised so that (1 - m_t) * x + m_t * p_t is classified as t, minimising
CE + lambda_t * |m_t|_1. lambda_t follows Neural Cleanse's schedule (Wang et al. 2019,
bolunwang/backdoor; its constants are audit.settings.NCSchedule's): start at ``init_cost``;
after ``patience`` epochs with attack success >= threshold multiply by ``cost_up``, after
``patience`` epochs below it divide by ``cost_down``; stop a class ``early_stop_patience``
epochs after its best norm stopped improving, once lambda has moved both ways. All classes
share one batched forward pass (K x B images), in chunks of ``class_chunk`` classes for large
K.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from audit.settings import ANOMALY_THRESHOLD, NC_SCHEDULE, NCConfig, NCSchedule

log = logging.getLogger(__name__)
MAD_CONSTANT = 1.4826
# masks and patterns are tanh-squashed parameters, as in Neural Cleanse (the sigmoid
# alternative was never used)
PARAM = "tanh"


@dataclass
class Recovery:
    masks: np.ndarray           # [K, 1, H, W] in [0, 1]
    patterns: np.ndarray        # [K, C, H, W] in [0, 1]
    norms: np.ndarray           # [K] L1 norm of each mask
    attack_success: np.ndarray  # [K] success of the kept trigger on the data
    anomaly: np.ndarray         # [K] MAD anomaly index (|norm - median| / (1.4826 MAD)), on
                                # config["anomaly_scale"]
    anomaly_l1: np.ndarray      # [K] Neural Cleanse's index on the L1 norms themselves
    flagged: list[int]          # classes with index > 2 and norm below the median
    most_likely: int            # smallest norm
    least_likely: int           # largest norm
    epochs_run: int
    seconds: float
    config: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {"norms": self.norms.tolist(), "anomaly_index": self.anomaly.tolist(),
                "anomaly_scale": self.config.get("anomaly_scale", "l1"),
                "anomaly_index_l1": self.anomaly_l1.tolist(),
                "attack_success": self.attack_success.tolist(), "flagged": self.flagged,
                "most_likely_infected": self.most_likely, "least_likely": self.least_likely,
                "epochs_run": self.epochs_run, "seconds": round(self.seconds, 3)}

    def stamp(self, x01: np.ndarray, k: int) -> np.ndarray:
        return stamp(x01, self.masks[k], self.patterns[k])


def stamp(x01: np.ndarray, mask: np.ndarray, pattern: np.ndarray) -> np.ndarray:
    """(1 - m) * x + m * p: images x01 [N,C,H,W] with the trigger (mask [1,H,W], pattern)."""
    return ((1 - mask) * x01 + mask * pattern).astype(np.float32)


def anomaly_index(norms: np.ndarray, scale: str = "l1", threshold: float = ANOMALY_THRESHOLD
                  ) -> tuple[np.ndarray, list[int]]:
    """MAD outlier score of each norm; flagged = index > threshold (2) on the small side.

    scale "l1" is Neural Cleanse's index on the mask L1 norms; "log" takes the same index of
    their logarithms, so that it measures ratios: a trigger 3x smaller than every other class's
    is as anomalous when those are 50-150 pixels as when they are 80-100, where on the L1 scale
    their spread hides it (README, detection).
    """
    norms = np.asarray(norms, dtype=np.float64)
    if scale == "log":
        values = np.log(np.maximum(norms, 1e-12))
    elif scale == "l1":
        values = norms
    else:
        raise ValueError(f"unknown anomaly scale {scale!r}; use l1 or log")
    med = float(np.median(values))
    mad = MAD_CONSTANT * float(np.median(np.abs(values - med)))
    idx = np.abs(values - med) / max(mad, 1e-12)
    flagged = [int(k) for k in np.argsort(values) if idx[k] > threshold and values[k] < med]
    return idx, flagged


def _squash(t: torch.Tensor, param: str) -> torch.Tensor:
    return torch.tanh(t) / 2 + 0.5 if param == "tanh" else torch.sigmoid(t)


def recover(forward: Callable[[torch.Tensor], torch.Tensor], x01: np.ndarray, num_classes: int,
            config: NCConfig | None = None, *, seed: int = 0, classes: list[int] | None = None,
            progress: Callable[[int, int], None] | None = None,
            device: str | torch.device = "cpu") -> Recovery:
    """Recover a trigger per class. forward maps NCHW [0,1] images to logits (differentiable).

    The images, masks, patterns, their optimiser and every batch live on device (where the
    model forward runs); random numbers are drawn on the CPU and moved there, so the CPU
    results do not depend on it. The recovery comes back as numpy arrays.
    """
    cfg = config or NCConfig()
    device = torch.device(device)
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    classes = list(range(num_classes)) if classes is None else list(classes)
    n, c, h, w = x01.shape
    data = torch.from_numpy(x01).to(device)
    best_masks = np.zeros((num_classes, 1, h, w), np.float32)
    best_patterns = np.zeros((num_classes, c, h, w), np.float32)
    best_norms = np.full(num_classes, np.inf)
    best_success = np.zeros(num_classes)
    epochs_run = 0
    step = cfg.class_chunk or (32 if device.type == "cuda" else 4)
    for start in range(0, len(classes), step):
        chunk = classes[start:start + step]
        out = _recover_chunk(forward, data, chunk, cfg, gen, progress, device)
        for i, k in enumerate(chunk):
            best_masks[k], best_patterns[k] = out["mask"][i], out["pattern"][i]
            best_norms[k], best_success[k] = out["norm"][i], out["success"][i]
        epochs_run = max(epochs_run, out["epochs"])
    norms = best_norms[classes]
    idx_sub, flagged_sub = anomaly_index(norms, cfg.anomaly_scale)
    anomaly = np.zeros(num_classes)
    anomaly[classes] = idx_sub
    anomaly_l1 = anomaly
    if cfg.anomaly_scale != "l1":
        anomaly_l1 = np.zeros(num_classes)
        anomaly_l1[classes] = anomaly_index(norms)[0]
    flagged = [classes[i] for i in flagged_sub]
    order = np.argsort(norms)
    return Recovery(masks=best_masks, patterns=best_patterns, norms=best_norms,
                    attack_success=best_success, anomaly=anomaly, anomaly_l1=anomaly_l1,
                    flagged=flagged,
                    most_likely=classes[int(order[0])], least_likely=classes[int(order[-1])],
                    epochs_run=epochs_run, seconds=time.perf_counter() - t0, config=cfg.to_dict())


class CostSchedule:
    """Neural Cleanse's per-class schedule of the L1 weight lambda, and its early stop.

    After ``patience`` epochs with attack success >= ``attack_threshold`` lambda is multiplied
    by ``cost_up``; after ``patience`` epochs below it, divided by ``cost_down``. A class stops
    ``early_stop_patience`` epochs after its best norm last improved by 1 - early_stop_threshold,
    once lambda has moved both ways. A lambda of 0 that keeps succeeding for ``patience``
    epochs is restarted at ``init_cost``. The constants are ``schedule``'s; ``early_stop``
    is NCConfig's.
    """

    def __init__(self, k: int, early_stop: bool = True,
                 schedule: NCSchedule = NC_SCHEDULE) -> None:
        self.schedule, self.early_stop = schedule, early_stop
        self.cost = np.full(k, schedule.init_cost)
        self.up_cnt = np.zeros(k, int)
        self.down_cnt = np.zeros(k, int)
        self.up_flag = np.zeros(k, bool)
        self.down_flag = np.zeros(k, bool)
        self.set_cnt = np.zeros(k, int)
        self.best_norm = np.full(k, np.inf)
        self.es_best = np.full(k, np.inf)
        self.es_cnt = np.zeros(k, int)
        self.done = np.zeros(k, bool)

    def observe(self, j: int, success: float, norm: float) -> bool:
        """Class j's attack success and mask norm after an epoch; True when its trigger is the
        best so far (successful and the smallest)."""
        improved = success >= self.schedule.attack_threshold and norm < self.best_norm[j]
        if improved:
            self.best_norm[j] = norm
        if self.early_stop and np.isfinite(self.best_norm[j]):
            self._early_stop(j)
        self._move_cost(j, success)
        return bool(improved)

    def _early_stop(self, j: int) -> None:
        cfg = self.schedule
        if self.best_norm[j] >= cfg.early_stop_threshold * self.es_best[j]:
            self.es_cnt[j] += 1
        else:
            self.es_cnt[j] = 0
        self.es_best[j] = min(self.best_norm[j], self.es_best[j])
        if self.up_flag[j] and self.down_flag[j] and self.es_cnt[j] >= cfg.early_stop_patience:
            self.done[j] = True

    def _move_cost(self, j: int, success: float) -> None:
        cfg = self.schedule
        ok = success >= cfg.attack_threshold
        if self.cost[j] == 0 and ok:
            self.set_cnt[j] += 1
            if self.set_cnt[j] >= cfg.patience:
                self.cost[j] = cfg.init_cost
                self.up_cnt[j] = self.down_cnt[j] = 0
                self.up_flag[j] = self.down_flag[j] = False
        else:
            self.set_cnt[j] = 0
        if ok:
            self.up_cnt[j] += 1
            self.down_cnt[j] = 0
        else:
            self.up_cnt[j] = 0
            self.down_cnt[j] += 1
        if self.up_cnt[j] >= cfg.patience:
            self.up_cnt[j] = 0
            self.cost[j] *= cfg.cost_up
            self.up_flag[j] = True
        elif self.down_cnt[j] >= cfg.patience:
            self.down_cnt[j] = 0
            self.cost[j] /= cfg.cost_down
            self.down_flag[j] = True


class _ChunkTriggers:
    """The raw mask and pattern parameters of a chunk of classes and their optimiser."""

    def __init__(self, forward, data: torch.Tensor, chunk: list[int], cfg: NCConfig,
                 gen: torch.Generator, device: torch.device) -> None:
        k = len(chunk)
        n, c, h, w = data.shape
        self.forward, self.data, self.cfg, self.gen, self.device = forward, data, cfg, gen, device
        # NC initialises the raw parameters randomly; atanh of U(0,1) squashed values
        init_m = torch.rand((k, 1, h, w), generator=gen) * 0.98 + 0.01
        init_p = torch.rand((k, c, h, w), generator=gen) * 0.98 + 0.01
        self.mask_raw = torch.atanh((init_m - 0.5) * 2).to(device).requires_grad_(True)
        self.pat_raw = torch.atanh((init_p - 0.5) * 2).to(device).requires_grad_(True)
        self.opt = torch.optim.Adam([self.mask_raw, self.pat_raw], lr=cfg.lr,
                                    betas=NC_SCHEDULE.betas)
        self.target = torch.tensor(chunk).to(device)
        self.bs = min(cfg.batch_size, n)
        self.steps = max(1, min(cfg.steps_per_epoch, math.ceil(n / self.bs)))

    def epoch(self, active: np.ndarray, cost: np.ndarray) -> np.ndarray:
        """One epoch of the active classes; their mean attack success (0 for the others)."""
        n, c, h, w = self.data.shape
        bs, device, param = self.bs, self.device, PARAM
        act_t = torch.from_numpy(active).to(device)
        succ_sum = np.zeros(len(self.target))
        for _ in range(self.steps):
            idx = torch.randint(0, n, (bs,), generator=self.gen).to(device)
            x = self.data[idx]                                       # [B, C, H, W]
            m = _squash(self.mask_raw[act_t], param)                  # [A, 1, H, W]
            p = _squash(self.pat_raw[act_t], param)                   # [A, C, H, W]
            stamped = (1 - m[:, None]) * x[None] + (m * p)[:, None]   # [A, B, C, H, W]
            logits = self.forward(stamped.reshape(-1, c, h, w))
            labels = self.target[act_t].repeat_interleave(bs)
            ce = F.cross_entropy(logits, labels, reduction="none").view(len(active), bs).mean(1)
            l1 = m.sum(dim=(1, 2, 3))
            lam = torch.as_tensor(cost[active], dtype=l1.dtype).to(device)
            loss = (ce + lam * l1).sum()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            with torch.no_grad():
                hit = (logits.argmax(1) == labels).float().view(len(active), bs).mean(1)
            succ_sum[active] += hit.cpu().numpy()
        return succ_sum / self.steps

    @torch.no_grad()
    def current(self) -> tuple[np.ndarray, np.ndarray]:
        """Masks [k, 1, H, W] and patterns [k, C, H, W] in [0, 1]."""
        return (_squash(self.mask_raw, PARAM).cpu().numpy(),
                _squash(self.pat_raw, PARAM).cpu().numpy())


def _recover_chunk(forward, data: torch.Tensor, chunk: list[int], cfg: NCConfig,
                   gen: torch.Generator, progress, device: torch.device) -> dict:
    k = len(chunk)
    n, c, h, w = data.shape
    trig = _ChunkTriggers(forward, data, chunk, cfg, gen, device)
    sched = CostSchedule(k, cfg.early_stop)
    best_mask = np.zeros((k, 1, h, w), np.float32)
    best_pat = np.zeros((k, c, h, w), np.float32)
    best_succ = np.zeros(k)
    last_mask = last_pat = None
    last_succ = np.zeros(k)
    epoch = 0
    for epoch in range(1, cfg.epochs + 1):
        active = np.flatnonzero(~sched.done)
        if active.size == 0:
            break
        succ = trig.epoch(active, sched.cost)
        last_mask, last_pat = trig.current()
        for j in active:
            last_succ[j] = succ[j]
            if sched.observe(j, succ[j], float(last_mask[j].sum())):
                best_succ[j] = succ[j]
                best_mask[j], best_pat[j] = last_mask[j], last_pat[j]
        if progress:
            progress(epoch, cfg.epochs)
    best_norm = sched.best_norm
    # classes that never reached the success threshold keep their last trigger
    for j in range(k):
        if not np.isfinite(best_norm[j]):
            best_mask[j], best_pat[j] = last_mask[j], last_pat[j]
            best_norm[j] = float(last_mask[j].sum())
            best_succ[j] = last_succ[j]
    return {"mask": best_mask, "pattern": best_pat, "norm": best_norm, "success": best_succ,
            "epochs": epoch}
