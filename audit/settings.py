"""Every setting of laundering and detection, with its default and help, written once.

The frozen dataclasses here are the single source of truth: the CLI builds its options from
them (audit.config.config_option), `audit launder --config FILE.toml` sets their fields
(audit.config.load_config), and report.json records them (LaunderConfig.to_dict). Each field's
metadata holds its `help` text and, where it has one, its range (`min`, `max`, `min_open`,
`max_open`), its `choices`, and the word (`none`) that stands for None in a TOML file.

This module imports neither torch nor click, so that the CLI can read it cheaply.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

#: the anomaly index's scale, per purpose: `audit detect` (and api.detect) report it on the
#: logarithms of the mask norms (ratios), laundering flags on Neural Cleanse's own L1 scale
DETECT_ANOMALY_SCALE = "log"
LAUNDER_ANOMALY_SCALE = "l1"
ANOMALY_SCALES = ("l1", "log")
#: a class is a candidate (Neural Cleanse: flagged) when its anomaly index exceeds this and its
#: mask norm is below the median
ANOMALY_THRESHOLD = 2.0
#: detection's candidate threshold when candidates are confirmed (audit.confirm): a class
#: between it and ANOMALY_THRESHOLD is flagged only once clean reference classifiers have judged
#: its trigger to be the model's own (chosen on the wide zoo's dev split and the zoo,
#: docs/method.md)
DETECT_THRESHOLD = 1.75


def detect_threshold(threshold: float | None, confirm: bool) -> float:
    """The candidate threshold detection uses: the one given, else DETECT_THRESHOLD with
    confirmation and Neural Cleanse's ANOMALY_THRESHOLD without."""
    if threshold is not None:
        return float(threshold)
    return DETECT_THRESHOLD if confirm else ANOMALY_THRESHOLD


def setting(default=None, help: str = "", *, factory=None, **meta):
    """A dataclass field with its help text (and range, choices...) in its metadata."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})


@dataclass(frozen=True)
class NCConfig:
    """Neural Cleanse trigger recovery (audit.nc; docs/method.md)."""

    epochs: int = setting(40, "Neural Cleanse epochs (early stopping may end sooner).", min=1)
    steps_per_epoch: int = setting(8, "Neural Cleanse optimisation steps per epoch.", min=1)
    batch_size: int = setting(32, "Clean images per class per step.", min=1)
    lr: float = setting(0.1, "Adam learning rate of the masks and patterns.", min=0, min_open=True)
    early_stop: bool = setting(True, "Stop a class once its best norm stops improving (and "
                               "lambda has moved both ways).")
    # None: 4 on the CPU (measured fastest on 2 cores: larger batches leave the cache; see
    # README), 32 on CUDA
    class_chunk: int | None = setting(None, "Classes per forward pass; auto: 4 on the CPU, 32 "
                                      "on CUDA.", min=1, none="auto")
    anomaly_scale: str = setting(LAUNDER_ANOMALY_SCALE, "Scale of the anomaly index: l1 (Neural "
                                 "Cleanse's, on the mask norms) or log (on their logarithms).",
                                 choices=ANOMALY_SCALES)

    def to_dict(self) -> dict:
        """The settings, and under "schedule" the constants of NC_SCHEDULE they run with."""
        return {**asdict(self), "schedule": asdict(NC_SCHEDULE)}


@dataclass(frozen=True)
class NCSchedule:
    """Neural Cleanse's schedule of lambda and of its optimiser, fixed at the values of its
    reference implementation (Wang et al. 2019, bolunwang/backdoor): they pace each class's
    search; what laundering finds is tuned through the settings (epochs, steps, lr), not
    these. audit.nc.CostSchedule takes another instance only in tests."""

    init_cost: float = 1e-3          # lambda at the start, and after a restart from 0
    cost_up: float = 2.0             # lambda x this after `patience` successful epochs
    cost_down: float = 2.0 ** 1.5    # lambda / this after `patience` unsuccessful epochs
    patience: int = 5                # epochs before lambda moves
    attack_threshold: float = 0.99   # attack success that counts as successful
    early_stop_threshold: float = 0.99   # a norm improves below this share of the best one
    early_stop_patience: int = 25    # epochs without improvement before a class stops
    betas: tuple[float, float] = (0.5, 0.9)   # Adam's, on the masks and patterns


NC_SCHEDULE = NCSchedule()


#: retrain.suspect_scores: how the teacher's scores for the suspect classes are distilled
SUSPECT_SCORES = ("teacher", "free")
#: retrain.teacher: whom rounds 2 and later distil from
TEACHERS = ("original", "previous")


@dataclass(frozen=True)
class RetrainConfig:
    """Retraining on the small clean subset (audit.retrain)."""

    epochs: int = setting(20, "Retraining epochs per round.", min=0)
    lr: float | None = setting(None, "Retraining learning rate, or auto: chosen among 1e-3, "
                               "3e-4, 1e-4 on a 20% hold-out of the subset in round 1.",
                               min=0, min_open=True, none="auto")
    batch_size: int = setting(32, "Retraining batch size.", min=1)
    augment: bool = setting(True, "Random shifts of clean and stamped images during "
                            "retraining.")
    distill: float = setting(1.0, "Weight of distillation on clean images (0 = off).", min=0)
    teacher: str = setting("original", "Teacher of the distillation in rounds 2 and later: "
                           "the original model (keeps clean accuracy), or the previous round's "
                           "model (removes more of a watermark, at a cost in clean accuracy; "
                           "docs/method.md).", choices=TEACHERS)
    suspect_scores: str = setting("free", "The suspect classes' scores in the distillation on "
                                  "images of other classes: free (left out of the distillation: "
                                  "a watermarked teacher's scores for its target carry the mark; "
                                  "docs/method.md), or the teacher's.", choices=SUSPECT_SCORES)
    mixup: float = setting(0.5, "Share of the clean images of a batch also distilled as mixup "
                           "blends of two of them: the teacher's scores between classes carry "
                           "what a few hundred hard labels cannot.", min=0)
    max_epochs: int = setting(60, "After `epochs`, retraining goes on up to this many epochs "
                              "until the stamped images are learnt.", min=0)
    ema: float = setting(0.98, "Decay per step of an exponential moving average of the weights "
                         "(0 = off): the model kept is the average, which keeps more clean "
                         "accuracy and leaves less of an unrelated watermark.", min=0, max=1,
                         max_open=True)

    def to_dict(self) -> dict:
        return asdict(self)

    def shift_for(self, h: int, w: int) -> int:
        """Pixels of the random shifts: 7% of the smaller side (2 on MNIST/CIFAR, 1 on 8x8)."""
        return max(1, round(0.07 * min(h, w))) if self.augment else 0


#: `audit launder --method`: laundering and the removal baselines it is compared with
#: (audit.methods; docs/method.md, "Baselines")
METHODS = ("laundering", "fine-tune", "prune", "fine-prune", "nc-unlearn", "i-bau")


@dataclass(frozen=True)
class BaselineConfig:
    """The removal baselines of `--method` (audit.methods); laundering ignores them."""

    prune_share: float = setting(0.9, "prune: share of all Conv/Gemm weights zeroed (smallest "
                                 "magnitude first); fine-prune: share of the last conv layer's "
                                 "channels zeroed (least active on clean images first).",
                                 min=0, max=1, max_open=True)
    unlearn_share: float = setting(0.2, "nc-unlearn: share of the subset stamped with the "
                                   "recovered triggers of flagged classes (true labels).",
                                   min=0, max=1, min_open=True)
    ibau_rounds: int = setting(5, "i-bau: rounds of (universal perturbation, unlearning pass "
                               "over the subset).", min=1, max=100)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LaunderConfig:
    """Neural Network Laundering (audit.launder; docs/method.md)."""

    rounds: int = setting(3, "Laundering rounds (recover -> reset -> retrain).", min=1, max=20)
    early_stop: bool = setting(False, "Stop before `rounds` once a round flags no class (the "
                               "sink aside) and resets no unit. Off: every round runs, and the "
                               "later ones both remove more of a watermark and win back clean "
                               "accuracy (docs/method.md).")
    seed: int = setting(0, "Seed of every random draw.", min=0, max=2 ** 32 - 1)
    dense_threshold: str = setting("z:2.0", "DT: a number / abs:V (absolute A_diff), z:K "
                                   "(mean+K*std of the layer), top:F.")
    conv_threshold: str = setting("z:2.0", "CT, same forms as DT.")
    layers: str = setting("all", "all | second-half | comma-separated layer names (see `audit "
                          "inspect`).")
    nc: NCConfig = setting(help="Neural Cleanse settings.", factory=NCConfig)
    retrain: RetrainConfig = setting(help="Retraining settings.", factory=RetrainConfig)
    ood_share: float = setting(0.5, "Fresh synthetic out-of-distribution images (printed "
                               "characters, scribbles, smooth fields, noise) learnt as the sink "
                               "class each retraining epoch, as a share of the retraining set; "
                               "against unrelated and abstract-image watermarks. 0 = off.",
                               min=0, max=4)
    # Neural Cleanse finds the smallest trigger that flips the model, usually a core of the
    # real one. Off by default: it helps on BadNets-MNIST and hurts the 16x16 digits content
    # watermark (README)
    trigger_dilate: int = setting(0, "Half of the stamped retraining images carry the recovered "
                                  "trigger grown by this many pixels (its colours extended): a "
                                  "backdoor unlearnt on the core of its trigger alone may still "
                                  "fire.", min=0, max=8)
    # While nothing is flagged, the watermark (if any) is one Neural Cleanse cannot see and
    # only the out-of-distribution term removes it: a strong pull towards the original model
    # would keep it, so the base weight stays
    flagged_distill_scale: float = setting(3.0, "The distillation weight is multiplied by this "
                                           "once Neural Cleanse has flagged a class (its stamped "
                                           "images then guard the unlearning; see README).",
                                           min=0)
    # round 1 keeps the full schedule; None: nc.epochs
    nc_epochs_later: int | None = setting(20, "Neural Cleanse epochs in rounds 2 and later (at "
                                          "most nc.epochs): their recoveries serve the stop test "
                                          "and any residual suspect.", min=1)
    # a watermark Neural Cleanse cannot see is a set of memorised images, which distillation
    # from the original model carries over while the weights stay where they are. Not used
    # when round 1 flags a class: its stamped images unlearn that backdoor, and the shrink
    # costs clean accuracy. The flag is the launder's own (L1) index: the log index's
    # occasional false alarm on an Adi model would leave it unlaundered (README)
    shrink: float = setting(0.5, "When Neural Cleanse flags nothing in round 1, that round "
                            "retrains from the layers' weights multiplied by this, so that "
                            "memorised images it cannot see fade (abstract-image watermarks; see "
                            "README). 1 = off.", min=0, max=1, min_open=True)
    unlearn_eps: float = setting(0.4, "L-infinity budget (in [0,1] pixel units) of the universal "
                                 "perturbation that, with a growing patch trigger, chases each "
                                 "suspect's watermark while retraining (audit.unlearn). 0 = off.",
                                 min=0, max=1)
    # checked as --device is (audit.graphs.runtime), before any work
    device: str = setting("auto", "Where onnxruntime and torch run: auto, cpu or cuda.")
    method: str = setting("laundering", "Removal method: laundering, or a baseline to compare it "
                          "with: fine-tune, prune, fine-prune, nc-unlearn, i-bau (same subset, "
                          "same retraining budget; docs/method.md).", choices=METHODS)
    baseline: BaselineConfig = setting(help="Settings of the baselines.", factory=BaselineConfig)

    def to_dict(self) -> dict:
        """Every effective value: the settings, and the Neural Cleanse constants (nc.schedule)."""
        return {**asdict(self), "nc": self.nc.to_dict()}


@dataclass(frozen=True)
class DetectConfig:
    """`audit detect` (api.detect); its Neural Cleanse settings are NCConfig's."""

    seed: int = setting(0, "Seed of the sample and of the recovery.", min=0, max=2 ** 32 - 1)
    max_images: int = setting(1000, "Stratified sample of --data used for trigger recovery "
                              "(0 = all).", min=0)
    anomaly_scale: str = setting(DETECT_ANOMALY_SCALE, "Anomaly index on the log of the mask "
                                 "norms (ratios), or on the norms themselves as Neural Cleanse "
                                 "(l1); see README.", choices=ANOMALY_SCALES)

    def nc(self, **changes) -> NCConfig:
        """The Neural Cleanse settings of detection: NCConfig's, on this anomaly scale."""
        return NCConfig(anomaly_scale=self.anomaly_scale, **changes)


#: settings whose default has changed: dotted key -> the former default. A results file made
#: before the change ran with it, also where the file records no value (a run from before the
#: setting existed); the benches' regenerating commands name it (bench/results_doc.py)
FORMER_DEFAULTS: dict[str, object] = {"retrain.suspect_scores": "teacher"}

#: former settings, now constants of the method: dotted key -> the value they are fixed at.
#: A --config file may still name one with that value (an older file keeps loading); any other
#: value is refused in one line. Why each is fixed: docs/method.md, "Constants".
RETIRED: dict[str, object] = {
    **{f"nc.{k}": v for k, v in asdict(NC_SCHEDULE).items()},
    # parts of laundering that are always on (audit.launder.Launderer.recover / reset)
    "keep_smallest_trigger": True, "keep_used_triggers": True, "anchor_thresholds": True,
}
