"""Neural Network Laundering (Aiken, Kim, Woo 2020): recover -> reset -> retrain, in rounds."""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from audit.converters.write_back import weight_tensors, write_back
from audit.data import Dataset, Preprocess
from audit.errors import AuditError
from audit.forward import make_forward
from audit.graphs import passes as P
from audit.graphs.model import AuditModel
from audit.graphs.probe import ProbeLayer, mean_activations
from audit.methods.base import Mirror, freeze, hold_out, torch_accuracy, torch_loss, try_rates
from audit.nc import Recovery, recover, stamp
from audit.ood import generate as ood_generate
from audit.ood import palette
from audit.reset import (
    ResetMask,
    Threshold,
    choose_layers,
    reestimate_batchnorm,
    reset_batchnorm_stats,
    reset_units,
    shrink_weights,
)
from audit.retrain import retrain
from audit.settings import LaunderConfig, NCConfig, RetrainConfig  # noqa: F401 (audit.launder.*Config)
from audit.unlearn import Adversary

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]


# rounds whose subset accuracy is within this of the best count as equally good: the latest
# of them is kept (fixed: no setting, test or bench ever changed it)
KEEP_TOLERANCE = 0.005
# attack steps per retraining epoch (audit.unlearn)
UNLEARN_STEPS = 5


@dataclass
class RoundResult:
    round: int
    recovery: dict
    triggers_used: list[int]
    units_reset: dict[str, int]
    thresholds: dict[str, float]
    subset_accuracy: float
    stamped_accuracy: float
    losses: list[float]
    seconds: dict[str, float]
    stopped: str | None = None
    lr: float | None = None
    distill: float | None = None
    shrink: float | None = None
    lr_scores: dict[str, float] = field(default_factory=dict)
    sink_class: int | None = None
    ood_prediction_shares: list[float] | None = None


@dataclass
class LaunderResult:
    model: AuditModel                 # the laundered model (original graph, new weights)
    rounds: list[RoundResult]
    best_round: int
    stop_reason: str
    original_least_likely: int
    subset_accuracy_before: float
    subset_accuracy_after: float
    seconds: float
    output: Path | None = None
    recoveries: list[Recovery] = field(default_factory=list, repr=False)
    # hidden probe layers the reset cannot reach in the torch mirror: name -> why
    not_resettable: dict[str, str] = field(default_factory=dict)
    method: str = "laundering"
    # a baseline's account of what it did (audit.methods); None for laundering
    baseline: dict | None = None

    def to_dict(self) -> dict:
        return {"method": self.method, "baseline": self.baseline,
                "rounds": [asdict(r) for r in self.rounds], "best_round": self.best_round,
                "stop_reason": self.stop_reason, "original_least_likely": self.original_least_likely,
                "not_resettable": self.not_resettable,
                "subset_accuracy_before": self.subset_accuracy_before,
                "subset_accuracy_after": self.subset_accuracy_after, "seconds": self.seconds,
                "output": str(self.output) if self.output else None}


@dataclass(frozen=True)
class Trigger:
    """A recovered trigger: mask [1, H, W] and pattern [C, H, W] in [0, 1], and the mask's L1 norm."""

    norm: float
    mask: np.ndarray
    pattern: np.ndarray

    def stamp(self, x01: np.ndarray) -> np.ndarray:
        return stamp(x01, self.mask, self.pattern)


@dataclass
class RetrainingParts:
    """What a retraining set is made of: the clean subset, its stamped copies (true labels,
    one block of len(subset) per class in `used`), the triggers and the sink class."""

    subset: Dataset
    stamped: np.ndarray
    stamped_y: np.ndarray
    triggers: dict[int, Trigger]
    used: list[int]
    sink: int
    ood_share: float
    ood_seed: int

    def split(self, train_idx: np.ndarray) -> RetrainingParts:
        """The parts restricted to the subset images train_idx (and their stamped copies)."""
        n = len(self.subset)
        st_idx = _stamped_index(train_idx, n, len(self.stamped) // n)
        return replace(self, subset=self.subset.subset(train_idx), stamped=self.stamped[st_idx],
                       stamped_y=self.stamped_y[st_idx])


@dataclass
class RetrainingSet:
    """Arrays for audit.retrain.retrain: images, labels and which samples are which."""

    x: np.ndarray
    y: np.ndarray
    augment: np.ndarray        # clean and stamped images: may be shifted
    distill: np.ndarray        # clean images: the original model is trusted there
    target: np.ndarray         # stamped images: learnt to the target accuracy
    ood: Callable[[int], np.ndarray] | None


@dataclass
class LaunderState:
    """What carries over from one round to the next."""

    keep: ResetMask = field(default_factory=ResetMask)
    # classes flagged or unlearnt in any round
    suspects: set[int] = field(default_factory=set)
    # a class other than the sink flagged in some round
    backdoor_seen: bool = False
    # classes Neural Cleanse flagged in any round
    flagged: set[int] = field(default_factory=set)
    triggers: dict[int, Trigger] = field(default_factory=dict)
    # round 1's A_diff cutoff per layer: later rounds reset a unit only above it too
    first_cutoffs: dict[str, float] = field(default_factory=dict)
    # round 1's least likely infected class
    least_likely: int | None = None
    sink: int | None = None
    chosen_lr: float | None = None
    lr_scores: dict[str, float] = field(default_factory=dict)
    rounds: list[RoundResult] = field(default_factory=list)
    recoveries: list[Recovery] = field(default_factory=list)
    weights: dict[int, dict] = field(default_factory=dict)   # round -> module state_dict
    stop: str = ""


@dataclass
class RoundWork:
    """One round's intermediate results, filled in step by step."""

    round: int
    times: dict[str, float] = field(default_factory=dict)
    rec: Recovery | None = None
    flagged: list[int] = field(default_factory=list)   # rec.flagged less the sink class
    used: list[int] = field(default_factory=list)
    probe_stamped: np.ndarray | None = None   # the subset stamped with each used trigger
    stamped: np.ndarray | None = None         # the same, some with grown triggers (retraining)
    stamped_y: np.ndarray | None = None
    units_reset: dict[str, int] = field(default_factory=dict)
    cutoffs: dict[str, float] = field(default_factory=dict)
    shrink: float | None = None
    retrain_cfg: RetrainConfig | None = None
    losses: list[float] = field(default_factory=list)


class Probe:
    """Per-unit mean activations of the torch module's current weights, run by onnxruntime.

    The trained values are swapped into the initializers of the normalised graph the model was
    loaded with (cast through the original initializers' types, as write-back does), so the
    graph is neither re-normalised nor parity-checked each round. Where a torch tensor does not
    map one to one onto a normalised initializer, the weights are written back into the
    original graph and that is loaded instead.
    """

    def __init__(self, am: AuditModel, tm, preprocess: Preprocess, layers: list[ProbeLayer]):
        self.am, self.tm, self.preprocess, self.layers = am, tm, preprocess, layers
        self.swappable = _swappable(am, tm)

    def model(self) -> AuditModel:
        """An AuditModel of the current weights (only its normalised graph is new)."""
        if not self.swappable:
            return AuditModel.from_proto(write_back(self.tm), device=self.am.device)
        m = P.copy_model(self.am.normalised)
        values = _normalised_values(self.am, self.tm)
        for t in m.graph.initializer:
            if t.name in values:
                t.CopyFrom(numpy_helper.from_array(values[t.name], t.name))
        return dataclasses.replace(self.am, normalised=m, _sessions={})

    def means(self, *images: np.ndarray) -> list[dict[str, np.ndarray]]:
        current = self.model()
        return [mean_activations(current, x, self.preprocess, self.layers) for x in images]


def _swappable(am: AuditModel, tm) -> bool:
    """Every trained tensor has its own normalised initializer, and every normalised
    initializer derived from a trained original one is itself trained."""
    inits = {t.name: t for t in am.normalised.graph.initializer}
    bound = [b.init for b in tm.bindings]
    origins = [am.ctx.origin(name)[0] for name in bound]
    if len(set(origins)) != len(origins) or not all(name in inits for name in bound):
        return False
    derived = {name for name in inits if am.ctx.origin(name)[0] in set(origins)}
    return derived <= set(bound)


def _normalised_values(am: AuditModel, tm) -> dict[str, np.ndarray]:
    """Normalised-initializer name -> the torch module's value, in the initializer's type."""
    originals = weight_tensors(am.original)   # initializers and Constant-node weights
    normalised = {t.name: t for t in am.normalised.graph.initializer}
    out = {}
    for b in tm.bindings:
        t = getattr(tm.module.get_submodule(b.module), b.attr)
        value = b.to_onnx(np.ascontiguousarray(t.detach().cpu().numpy()))
        orig = originals[am.ctx.origin(b.init)[0]]
        value = np.asarray(value, dtype=onnx.helper.tensor_dtype_to_np_dtype(orig.data_type))
        dst = normalised[b.init]
        out[b.init] = np.asarray(value, dtype=onnx.helper.tensor_dtype_to_np_dtype(dst.data_type)
                                 ).reshape(tuple(dst.dims))
    return out


class Launderer:
    """Neural Network Laundering, one round at a time: recover -> reset -> retrain -> keep.

    Built with the model and subset; run() launders and returns the result. The state that
    carries over between rounds is a LaunderState; each step fills in the round's RoundWork.
    """

    def __init__(self, am: AuditModel, subset: Dataset, preprocess: Preprocess,
                 config: LaunderConfig, *, progress: Progress | None = None,
                 on_round: Callable[[RoundResult, Callable], None] | None = None):
        self.cfg, self.am, self.subset, self.preprocess = config, am, subset, preprocess
        self.progress, self.on_round = progress, on_round
        if not 0 < config.shrink <= 1:
            raise AuditError(f"shrink must be in (0, 1], got {config.shrink}")
        if config.method != "laundering":
            raise AuditError(f"the Launderer runs laundering, not {config.method!r}: "
                             "audit.methods.remove runs every method")
        self.dense_t = Threshold.parse(config.dense_threshold)
        self.conv_t = Threshold.parse(config.conv_threshold)
        # the module, the teacher, Neural Cleanse and retraining run on the mirror's device
        self.mirror = m = Mirror(am, subset, preprocess, config)
        self.t_start, self.k, self.device, self.x_check = m.t_start, m.k, m.device, m.x_check
        self.tm, self.forward, self.layers, self.not_resettable = m.tm, m.forward, m.layers, \
            m.not_resettable
        for name, why in self.not_resettable.items():
            log.info("layer %s is not reset: %s", name, why)
        self.targets = choose_layers(self.layers, config.layers, self.not_resettable)
        self.acc_before = m.accuracy_before()
        self.teacher = self._teacher() if config.retrain.distill > 0 else None
        self.tm.module.eval()
        self.ood_shares = _ood_shares(self.forward, subset, self.k, config.seed,  # the original's
                                      self.device)
        self.probe = Probe(am, self.tm, preprocess, self.targets)
        self.state = LaunderState(keep=m.keep, stop=f"completed {config.rounds} round(s)")

    def _teacher(self):
        """A frozen copy of the module as it is now: the original model before round 1 (and,
        with retrain.teacher "previous", the previous round's model before each later one)."""
        teacher_tm = replace(self.tm, module=copy.deepcopy(self.tm.module).to(self.device))
        freeze(teacher_tm.module, True)
        return make_forward(teacher_tm, self.preprocess)

    def _bar(self, r: int, step: str):
        return (lambda e, n: self.progress(f"round {r}: {step}", e, n)) if self.progress else None

    def run(self) -> LaunderResult:
        for r in range(1, self.cfg.rounds + 1):
            work = RoundWork(r)
            if not (self.recover(work) and self.reset(work)):
                break
            self.retrain(work)
            self.keep(work)
        return self.result()

    def _stop(self, work: RoundWork, reason: str) -> bool:
        self.state.stop = reason
        self.state.rounds.append(_stopped(work.round, work.rec, reason, work.times))
        return False

    # ------------------------------------------------------------------ recover
    def recover(self, work: RoundWork) -> bool:
        """Neural Cleanse on the current model; picks the triggers to unlearn and stamps them.
        False when the round stops here."""
        cfg, st, r = self.cfg, self.state, work.round
        t = time.perf_counter()
        freeze(self.tm.module, True)
        nc = cfg.nc if r == 1 or cfg.nc_epochs_later is None else \
            replace(cfg.nc, epochs=min(cfg.nc.epochs, cfg.nc_epochs_later))
        rec = work.rec = recover(self.forward, self.subset.x, self.k, nc, seed=cfg.seed + r,
                                 progress=self._bar(r, "recover"), device=self.device)
        freeze(self.tm.module, False)
        work.times["recover"] = time.perf_counter() - t
        st.recoveries.append(rec)
        if st.least_likely is None:
            st.least_likely = rec.least_likely
        # the sink's own recovered trigger is small once the masks have been taught to it:
        # an artefact of the retraining, not a backdoor found, so it is never a suspect
        work.flagged = [c for c in rec.flagged if c != st.sink]
        # Classes flagged in any round stay suspects: after a round the residual backdoor is
        # weaker (often no longer an outlier) but its trigger is still worth unlearning.
        st.suspects.update(work.flagged)
        st.flagged.update(work.flagged)
        st.backdoor_seen = st.backdoor_seen or bool(work.flagged)
        # nothing flagged: the most likely class's trigger still drives a reset, and the
        # retraining's out-of-distribution term works on watermarks Neural Cleanse cannot see;
        # that class then stays a suspect like a flagged one, stamped in every later round, so
        # that a partly unlearnt watermark does not creep back
        work.used = sorted(st.suspects) or [_most_likely(rec, st.sink)]
        st.suspects.update(work.used)
        # a suspect's trigger is the smallest recovered for it in any round: once a round
        # unlearnt a backdoor, that class's new recovery is an ordinary (large) trigger
        for c in work.used:
            if c not in st.triggers or rec.norms[c] < st.triggers[c].norm:
                st.triggers[c] = Trigger(float(rec.norms[c]), rec.masks[c], rec.patterns[c])
        self._stamp(work)
        return True

    def _stamp(self, work: RoundWork) -> None:
        """The subset stamped with each used trigger (probe), with a random half of each block
        re-stamped with the grown trigger for retraining (trigger_dilate)."""
        x, n, triggers = self.subset.x, len(self.subset), self.state.triggers
        work.probe_stamped = np.concatenate([triggers[c].stamp(x) for c in work.used])
        work.stamped = np.concatenate([
            _with_grown_trigger(work.probe_stamped[i * n:(i + 1) * n], x, triggers[c].mask,
                                triggers[c].pattern, self.cfg.trigger_dilate, self.cfg.seed + work.round)
            for i, c in enumerate(work.used)]) if self.cfg.trigger_dilate > 0 else work.probe_stamped
        work.stamped_y = np.tile(self.subset.y, len(work.used))

    # ------------------------------------------------------------------ reset
    def reset(self, work: RoundWork) -> bool:
        """Algorithm 1: reset the units whose mean activation the triggers raise most.
        False when the round stops here."""
        st = self.state
        t = time.perf_counter()
        clean_mean, stamp_mean = self.probe.means(self.subset.x, work.probe_stamped)
        for layer in self.targets:
            adiff = stamp_mean[layer.name] - clean_mean[layer.name]
            thr = self.conv_t if layer.op == "Conv" else self.dense_t
            # relative thresholds (z:, top:) always select someone: after round 1 a unit must
            # also exceed round 1's cutoff for its layer
            floor = st.first_cutoffs.get(layer.name)
            units = thr.select(adiff, floor)
            work.cutoffs[layer.name] = thr.cutoff(adiff, floor)
            st.first_cutoffs.setdefault(layer.name, work.cutoffs[layer.name])
            work.units_reset[layer.name] = int(units.size)
            if units.size:
                reset_units(self.tm, layer, units, st.keep)
        work.times["reset"] = time.perf_counter() - t
        # round 1 always retrains: its out-of-distribution term works on watermarks that
        # neither Neural Cleanse nor the reset sees
        if (work.round > 1 and not work.flagged and sum(work.units_reset.values()) == 0
                and self.cfg.early_stop):
            return self._stop(work, f"round {work.round}: no class flagged (the sink aside) and "
                                    "no unit reset")
        return True

    # ------------------------------------------------------------------ retrain
    def retrain(self, work: RoundWork) -> None:
        """Fine-tune on clean + stamped images (true labels), the masks and synthetic OOD
        images as the sink class, distilling the teacher (the original model, or with
        retrain.teacher "previous" the previous round's) on clean images."""
        cfg, st, r = self.cfg, self.state, work.round
        t = time.perf_counter()
        work.shrink = cfg.shrink if r == 1 and not st.backdoor_seen and cfg.shrink != 1.0 else None
        if work.shrink is not None:
            shrink_weights(self.tm, self.layers, work.shrink)
            st.keep.apply()   # units reset to a layer's median weight keep that value
        reset_batchnorm_stats(self.tm.module)
        # one sink for the whole run, chosen in round 1 among the non-suspects; it never becomes
        # a suspect (recover), so it never moves: moving it would make a later round unteach
        # the last
        if st.sink is None:
            st.sink = _sink_class(work.rec, st.suspects, self.ood_shares)
        parts = RetrainingParts(self.subset, work.stamped, work.stamped_y, st.triggers, work.used,
                                st.sink, cfg.ood_share, cfg.seed + r)
        distill = cfg.retrain.distill * (cfg.flagged_distill_scale if st.backdoor_seen else 1.0)
        base = replace(cfg.retrain, distill=distill)
        if cfg.retrain.lr is None and st.chosen_lr is None:
            st.chosen_lr, st.lr_scores = self._choose_lr(parts, base, cfg.seed + r)
        work.retrain_cfg = replace(base, lr=st.chosen_lr if cfg.retrain.lr is None else cfg.retrain.lr)
        data = _retraining_set(parts)
        work.losses = retrain(self.tm.module, self.forward, data.x, data.y, work.retrain_cfg, st.keep,
                              seed=cfg.seed + r, augment_mask=data.augment, teacher=self.teacher,
                              distill_mask=data.distill, target_mask=torch.from_numpy(data.target),
                              ood=data.ood, ood_label=st.sink, adversary=self._adversary(work),
                              free=sorted(st.suspects) if cfg.retrain.suspect_scores == "free" else (),
                              progress=self._bar(r, "retrain"), device=self.device)
        reestimate_batchnorm(self.tm.module, self.forward, self.subset.x, device=self.device)
        st.keep.apply()
        work.times["retrain"] = time.perf_counter() - t

    def _adversary(self, work: RoundWork) -> Adversary | None:
        """The attacks that chase the used triggers of flagged classes while retraining
        (audit.unlearn). None while no class was flagged: a watermark Neural Cleanse cannot see
        gives the attacks nothing to start from, and attacking an ordinary class costs clean
        accuracy (docs/method.md)."""
        chase = [c for c in work.used if c in self.state.flagged]
        if self.cfg.unlearn_eps <= 0 or not chase:
            return None
        gen = torch.Generator().manual_seed(self.cfg.seed + 1000 * work.round + 17)
        triggers = {c: (self.state.triggers[c].mask, self.state.triggers[c].pattern) for c in chase}
        adversary = Adversary(self.forward, torch.from_numpy(self.subset.x).to(self.device),
                              torch.from_numpy(self.subset.y).to(self.device), triggers,
                              float(np.median(work.rec.norms)), self.cfg.unlearn_eps,
                              UNLEARN_STEPS, gen)
        return adversary if adversary.attacks else None

    def _choose_lr(self, parts: RetrainingParts, rcfg: RetrainConfig, seed: int
                   ) -> tuple[float, dict[str, float]]:
        """Pick the retraining rate on a 20% hold-out of the subset (clean and stamped loss).

        Returns the rate and, per candidate, the score and its clean and stamped cross-entropies
        (keys "1e-3", "1e-3:clean", "1e-3:stamped").

        How hard a converged model can be pushed by a few hundred images varies by an order of
        magnitude between models; a short trial per candidate rate is cheap at this data size.
        """
        n = len(parts.subset)
        hold, train_idx = hold_out(n, seed)
        ho_idx = _stamped_index(hold, n, len(parts.stamped) // n)
        data = _retraining_set(parts.split(train_idx))
        scores: dict[str, float] = {}

        def trial(lr: float) -> float:
            retrain(self.tm.module, self.forward, data.x, data.y, replace(rcfg, lr=lr, max_epochs=rcfg.epochs),
                    self.state.keep, seed=seed, augment_mask=data.augment, teacher=self.teacher,
                    distill_mask=data.distill, ood=data.ood, ood_label=parts.sink, device=self.device)
            # held-out cross-entropy: continuous, so it separates rates that a few dozen
            # images' accuracy cannot
            clean = torch_loss(self.forward, parts.subset.x[hold], parts.subset.y[hold], self.device)
            stamped = torch_loss(self.forward, parts.stamped[ho_idx], parts.stamped_y[ho_idx],
                                 self.device)
            score = -(clean + stamped) / 2
            scores[f"{lr:g}:clean"], scores[f"{lr:g}:stamped"], scores[f"{lr:g}"] = clean, stamped, score
            return score

        lr, _ = try_rates(self.tm.module, self.state.keep, trial)
        return lr, scores

    # ------------------------------------------------------------------ keep
    def keep(self, work: RoundWork) -> None:
        """Record the round and keep its weights: the best round is chosen at the end."""
        st = self.state
        result = RoundResult(
            round=work.round, recovery=work.rec.summary(), triggers_used=work.used,
            sink_class=st.sink, ood_prediction_shares=self.ood_shares,
            units_reset=work.units_reset, thresholds=work.cutoffs, lr=work.retrain_cfg.lr,
            distill=work.retrain_cfg.distill, shrink=work.shrink,
            lr_scores=st.lr_scores if work.round == 1 else {},
            subset_accuracy=torch_accuracy(self.forward, self.subset.x, self.subset.y, self.device),
            stamped_accuracy=torch_accuracy(self.forward, work.stamped, work.stamped_y, self.device),
            losses=work.losses, seconds=work.times)
        st.rounds.append(result)
        if self.on_round:
            self.on_round(result, self.forward)
        st.weights[work.round] = copy.deepcopy(self.tm.module.state_dict())
        # retrain.teacher "previous": the next round distils from this round's model. The
        # original's function on clean images carries its watermark back into every round that
        # distils from it, but only it holds the clean accuracy that rounds lose
        # (docs/method.md, "Distillation")
        if (self.teacher is not None and self.cfg.retrain.teacher == "previous"
                and work.round < self.cfg.rounds):
            self.teacher = self._teacher()

    def result(self) -> LaunderResult:
        """The kept round's weights written back into the original graph."""
        st = self.state
        best_round = _best_round(st.rounds, KEEP_TOLERANCE)
        if best_round:
            self.tm.module.load_state_dict(st.weights[best_round])
        out = self.mirror.written_back()
        return LaunderResult(
            model=out, rounds=st.rounds, best_round=best_round, stop_reason=st.stop,
            original_least_likely=int(st.least_likely if st.least_likely is not None else -1),
            subset_accuracy_before=self.acc_before,
            subset_accuracy_after=out.accuracy(self.subset.x, self.subset.y, self.preprocess),
            seconds=time.perf_counter() - self.t_start, recoveries=st.recoveries,
            not_resettable=self.not_resettable)


def launder_model(am: AuditModel, subset: Dataset, preprocess: Preprocess,
                  config: LaunderConfig | None = None, *, progress: Progress | None = None,
                  on_round: Callable[[RoundResult, Callable], None] | None = None
                  ) -> LaunderResult:
    """Launder am using only subset (correctly labelled clean images). No file is written."""
    return Launderer(am, subset, preprocess, config or LaunderConfig(), progress=progress,
                     on_round=on_round).run()


def _best_round(rounds: list[RoundResult], tolerance: float) -> int:
    """The best round by subset accuracy; rounds within tolerance of it count as equal and the
    later (more laundered) one wins. 0 when no round retrained."""
    done = [r for r in rounds if not r.stopped]
    if not done:
        return 0
    best = max(r.subset_accuracy for r in done)
    return max(r.round for r in done if r.subset_accuracy >= best - tolerance - 1e-12)


def _stopped(r: int, rec: Recovery, reason: str, times: dict) -> RoundResult:
    return RoundResult(round=r, recovery=rec.summary(), triggers_used=[], units_reset={},
                       thresholds={}, subset_accuracy=float("nan"),
                       stamped_accuracy=float("nan"), losses=[], seconds=times, stopped=reason)


def _most_likely(rec: Recovery, sink: int | None) -> int:
    """The class with the smallest mask norm, the sink class aside."""
    order = [int(c) for c in np.argsort(rec.norms, kind="stable")]
    return next(c for c in order if c != sink)


def _sink_class(rec: Recovery, suspects: set[int], ood_shares: list[float]) -> int:
    """The class that out-of-distribution images and the recovered masks are taught.

    The least likely infected class (largest mask norm) that was never a suspect and does not
    attract synthetic out-of-distribution images (more than twice its fair share of the
    original model's predictions on them): such an attractor may be the label of an
    "unrelated" or noise watermark, which a sink there would teach again.
    """
    k = len(rec.norms)
    for c in np.argsort(-rec.norms):
        if int(c) not in suspects and ood_shares[int(c)] <= 2.0 / k:
            return int(c)
    free = [c for c in range(k) if c not in suspects] or list(range(k))
    return int(min(free, key=lambda c: ood_shares[c]))


OOD_PROBE = 500


@torch.no_grad()
def _ood_shares(forward, subset: Dataset, k: int, seed: int, device: torch.device | str = "cpu"
                ) -> list[float]:
    """Share of each class in the (original) model's predictions on synthetic OOD images."""
    x = ood_generate(OOD_PROBE, subset.x.shape[1:], 10_000 + seed, pal=palette(subset.x))
    pred = torch.cat([forward(torch.from_numpy(x[i:i + 250]).to(device)).argmax(1).cpu()
                      for i in range(0, len(x), 250)])
    return [round(float(v), 4) for v in np.bincount(pred.numpy(), minlength=k)[:k] / len(x)]


def dilate_trigger(mask: np.ndarray, pattern: np.ndarray, pixels: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The trigger grown by `pixels`: mask max-pooled; the pattern, where the mask was weak,
    replaced by the mask-weighted mean of the pattern around it (its colours extended)."""
    if pixels <= 0:
        return mask, pattern
    k = 2 * pixels + 1
    m = torch.from_numpy(mask[None].astype(np.float32))          # [1, 1, H, W]
    p = torch.from_numpy(pattern[None].astype(np.float32))       # [1, C, H, W]
    grown = torch.nn.functional.max_pool2d(m, k, stride=1, padding=pixels)
    num = torch.nn.functional.avg_pool2d(m * p, k, stride=1, padding=pixels)
    den = torch.nn.functional.avg_pool2d(m, k, stride=1, padding=pixels)
    local = num / den.clamp_min(1e-6)
    p_ext = m * p + (1 - m) * local
    return grown[0].numpy(), p_ext[0].clamp(0, 1).numpy()


def _with_grown_trigger(stamped: np.ndarray, x01: np.ndarray, mask: np.ndarray,
                        pattern: np.ndarray, dilate: int, seed: int) -> np.ndarray:
    """stamped (x01 with the trigger) with a random half re-stamped with the grown trigger."""
    out = stamped.copy()
    pick = np.random.default_rng(seed).permutation(len(x01))[: len(x01) // 2]
    out[pick] = stamp(x01[pick], *dilate_trigger(mask, pattern, dilate))
    return out


def _stamped_index(idx: np.ndarray, n: int, reps: int) -> np.ndarray:
    """Indices of the stamped copies of subset images idx: one block of n per trigger used."""
    return np.concatenate([idx + i * n for i in range(reps)])


def _retraining_set(parts: RetrainingParts, mask_share: float = 0.02) -> RetrainingSet:
    """Clean + stamped (true labels) + the recovered masks labelled as the sink class.

    As in the paper, the masks (and triggers) of the triggers used are labelled with the sink
    class (``mask_share`` of the data). With ``parts.ood_share`` > 0 the returned ``ood(epoch)``
    makes fresh synthetic out-of-distribution images, that share of the data, for each epoch.
    """
    subset, stamped = parts.subset, parts.stamped
    c = subset.x.shape[1]
    n_data = len(subset) + len(stamped)
    masks = np.stack([parts.triggers[k].mask for k in parts.used])
    patterns = np.stack([parts.triggers[k].pattern for k in parts.used])
    used_imgs = np.concatenate([np.repeat(masks, c, axis=1), masks * patterns]).astype(np.float32)
    reps = max(1, int(round(mask_share * n_data / max(len(used_imgs), 1))))
    extra = np.tile(used_imgs, (reps, 1, 1, 1))
    x = np.concatenate([subset.x, stamped, extra]).astype(np.float32)
    y = np.concatenate([subset.y, parts.stamped_y, np.full(len(extra), parts.sink)]).astype(np.int64)
    n, s = len(subset), len(stamped)
    idx = np.arange(len(y))
    n_ood = int(round(parts.ood_share * n_data))
    return RetrainingSet(x=x, y=y,
                         augment=idx < n + s,          # masks are positional: never shifted
                         distill=idx < n,              # the original model is trusted on clean images only
                         target=(idx >= n) & (idx < n + s),
                         ood=_ood_stream(n_ood, subset, parts.ood_seed) if n_ood else None)


def _ood_stream(n: int, subset: Dataset, seed: int, cache_bytes: int = 64 << 20):
    """ood(epoch): that epoch's n synthetic OOD images, seeded by seed and epoch.

    Recent epochs are kept (up to cache_bytes): the learning-rate trials replay the same
    epochs three times, and drawing the images costs ~0.08 s per MNIST epoch.
    """
    shape = subset.x.shape[1:]
    pal = palette(subset.x)
    per_epoch = n * int(np.prod(shape)) * 4

    @functools.lru_cache(maxsize=max(1, cache_bytes // max(per_epoch, 1)))
    def ood(epoch: int) -> np.ndarray:
        return ood_generate(n, shape, seed * 1000 + epoch, pal=pal)

    return ood
