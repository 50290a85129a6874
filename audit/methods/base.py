"""What every removal method starts from and ends with: the torch mirror of the model, its
probe layers, a mask of weights held fixed, fine-tuning on the clean subset, and the weights
written back into the original graph."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from audit.converters.to_torch import to_torch
from audit.converters.write_back import check_written, write_back
from audit.data import Dataset, Preprocess
from audit.errors import DataError
from audit.forward import make_forward
from audit.graphs import runtime
from audit.graphs.model import AuditModel
from audit.graphs.probe import find_probe_layers
from audit.reset import ResetMask, not_resettable, reestimate_batchnorm
from audit.retrain import retrain
from audit.settings import LaunderConfig, RetrainConfig

LR_CANDIDATES = (1e-3, 3e-4, 1e-4)
# scores within LR_TIE (relative) of the best are a tie, won by the fastest rate: a fifth of a
# small subset cannot separate them, and the faster rate moves the model further from the
# watermarked original
LR_TIE = 0.05


def check_subset(ds: Dataset, num_classes: int) -> None:
    classes = ds.classes()
    if len(classes) < 2:
        raise DataError(f"{ds.source}: the laundering subset needs at least 2 classes, "
                        f"found {len(classes)}")
    if classes.max() >= num_classes:
        raise DataError(f"{ds.source}: label {int(classes.max())} outside the model's classes "
                        f"0..{num_classes - 1}")


class Mirror:
    """The model's torch mirror on the configured device, ready to be changed and written back.

    `keep` holds the weights a method fixed (reset units, pruned weights) at their value through
    any later training.
    """

    def __init__(self, am: AuditModel, subset: Dataset, preprocess: Preprocess,
                 config: LaunderConfig):
        self.t_start = time.perf_counter()
        self.am, self.subset, self.preprocess, self.cfg = am, subset, preprocess, config
        self.k = am.info.num_classes
        check_subset(subset, self.k)
        torch.manual_seed(config.seed)
        # torch's side of --device: the module and every batch run there; random numbers are
        # still drawn on the CPU, so CPU runs do not change
        self.device = runtime.torch_device(config.device)
        self.x_check = am.model_input(subset.x[:128], preprocess)
        self.tm = to_torch(am, self.x_check, device=self.device)
        self.forward = make_forward(self.tm, preprocess)
        self.layers = find_probe_layers(self.tm.graph, am.original)
        self.not_resettable = not_resettable(self.tm, self.layers)
        self.keep = ResetMask()

    @property
    def module(self) -> torch.nn.Module:
        return self.tm.module

    def accuracy_before(self) -> float:
        return self.am.accuracy(self.subset.x, self.subset.y, self.preprocess)

    def written_back(self) -> AuditModel:
        """The module's current weights in the original graph, checked against onnxruntime
        (on the CPU, where the weights are brought back)."""
        self.tm.module.to("cpu")
        laundered = write_back(self.tm)
        check_written(laundered, self.tm, self.x_check)
        return AuditModel.from_proto(laundered, device=self.am.device)

    def fine_tune(self, x01: np.ndarray, y: np.ndarray, *, seed: int, progress=None) -> FineTuned:
        """Fine-tune every trainable weight on (x01, y) with the laundering retraining's
        optimiser and epochs (cfg.retrain), hard labels only: no distillation, no
        out-of-distribution term. The rate, where cfg.retrain.lr is auto, is chosen as
        laundering chooses it, on a 20% hold-out (clean cross-entropy). BatchNorm statistics
        are re-estimated on the clean subset after. progress(label, done, total) as
        audit.progress.Bars."""
        rcfg = replace(self.cfg.retrain, distill=0.0)
        scores: dict[str, float] = {}
        lr = rcfg.lr
        if lr is None:
            lr, scores = self._choose_lr(x01, y, rcfg, seed)
        rcfg = replace(rcfg, lr=lr)
        bar = (lambda e, n: progress("fine-tune", e, n)) if progress else None
        losses = retrain(self.module, self.forward, x01, y, rcfg, self.keep, seed=seed,
                         progress=bar, device=self.device)
        reestimate_batchnorm(self.module, self.forward, self.subset.x, device=self.device)
        self.keep.apply()
        return FineTuned(lr=lr, lr_scores=scores, losses=[round(v, 5) for v in losses],
                         epochs=rcfg.epochs)

    def _choose_lr(self, x01: np.ndarray, y: np.ndarray, rcfg: RetrainConfig, seed: int
                   ) -> tuple[float, dict[str, float]]:
        hold, train_idx = hold_out(len(y), seed)

        def trial(lr: float) -> float:
            retrain(self.module, self.forward, x01[train_idx], y[train_idx], replace(rcfg, lr=lr),
                    self.keep, seed=seed, device=self.device)
            return -torch_loss(self.forward, x01[hold], y[hold], self.device)

        lr, scores = try_rates(self.module, self.keep, trial)
        return lr, {f"{k:g}": v for k, v in scores.items()}


def hold_out(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(held-out, training) indices of n samples: a seeded 20% (at least 2) held out."""
    order = np.random.default_rng(seed).permutation(n)
    return order[: max(2, n // 5)], order[max(2, n // 5):]


def try_rates(module: torch.nn.Module, keep: ResetMask, trial) -> tuple[float, dict[float, float]]:
    """The retraining rate whose trial(lr) scores best (higher is better; ties to the faster),
    and each tried rate's score. Each trial starts from the module's current weights, which it
    has again afterwards. Rates go fastest first; the held-out loss is unimodal in the rate, so
    once a slower rate scored worse than the one before it, slower ones are not tried."""
    start = copy.deepcopy(module.state_dict())
    scores: dict[float, float] = {}
    for lr in LR_CANDIDATES:
        tried = list(scores.values())
        if len(tried) >= 2 and tried[-1] < tried[-2]:
            break
        module.load_state_dict(start)
        keep.apply()
        scores[lr] = trial(lr)
    module.load_state_dict(start)
    keep.apply()
    return fastest_of_best(scores), scores


@dataclass
class FineTuned:
    """What a fine-tuning pass used and how its loss went."""

    lr: float
    lr_scores: dict[str, float] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)
    epochs: int = 0


def fastest_of_best(score: dict[float, float], tie: float = LR_TIE) -> float:
    """The fastest rate whose score (higher is better) is within tie (relative) of the best."""
    top = max(score.values())
    return max(lr for lr, v in score.items() if v >= top - tie * abs(top))


@torch.no_grad()
def torch_loss(forward, x01: np.ndarray, y: np.ndarray, device: torch.device | str = "cpu") -> float:
    logits = forward(torch.from_numpy(x01).to(device))
    return float(torch.nn.functional.cross_entropy(logits, torch.from_numpy(y.astype(np.int64)).to(device)))


@torch.no_grad()
def torch_accuracy(forward, x01: np.ndarray, y: np.ndarray, device: torch.device | str = "cpu",
                   batch_size: int = 256) -> float:
    correct = 0
    for i in range(0, len(x01), batch_size):
        pred = forward(torch.from_numpy(x01[i:i + batch_size]).to(device)).argmax(1).cpu().numpy()
        correct += int((pred == y[i:i + batch_size]).sum())
    return correct / max(len(y), 1)


def freeze(module: torch.nn.Module, frozen: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(not frozen)
    module.eval()
