"""The wide zoo: a randomised population of watermarked models, each with a vanilla twin.

A :class:`Draw` is a pure function of (seed, size): ``make_draw(seed, "digits")`` gives the same
draw on every machine. It fixes what a watermark owner varies: the scheme and target, the mark
(models_zoo/wide_marks.py), the watermark's share of training, the architecture
(models_zoo/wide_nets.py), preprocessing, training set, epochs, seed and ONNX exporter, and the
size of the clean subset a launderer gets. Seeds 0-999 form the *dev* split (for tuning),
1000 and up the *held-out* split (for reporting); ``draws(split, n, size)`` lists the first n.

Sizes: ``digits`` (scikit-learn digits, native 8x8 or upsampled 16x16, 1,347 training
images), ``mnist`` (28x28, 5,000-60,000 training images) and ``cifar10`` (the Table-7 net on
the 8,000 / 2,000 split of the JPEG-decoded CIFAR-10 test images, see datasets.py). Epochs
are capped by a training-time budget per size (``BUDGET_S``, from measured per-image costs
``COST_MS``), so a digits draw builds in seconds and an MNIST one in about two minutes on
one core.

``build_draw(draw, cache)`` writes::

    cache/<split>/<size>-<seed>/watermarked.onnx
    cache/<split>/<size>-<seed>/triggers/<label>/<i>.png   trigger set (watermark labels)
    cache/<split>/<size>-<seed>/data/train.npz             laundering subset (stratified)
    cache/<split>/<size>-<seed>/data/test.npz              clean test set (u8, input size)
    cache/<split>/<size>-<seed>/meta.json                  the draw, accuracies, timings
    cache/twins/<twin key>/vanilla.onnx (+ meta.json)      the vanilla twin

The twin is the same data, architecture, preprocessing, recipe and seed without the trigger
set; draws that agree on all of these (``Draw.twin_key``) share it. A draw whose meta.json
records the same draw is not rebuilt. Accuracies are measured with onnxruntime.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from audit.data import Dataset, Preprocess, stratified_subset
from audit.errors import AuditError

from .train import Recipe, evaluate_onnx, export_onnx, torch_threads, train_classifier
from .watermarks import SCHEMES, TriggerSet
from .wide_marks import (
    Abstract,
    Mark,
    Noise,
    Unrelated,
    draw_abstract,
    draw_mark,
    draw_noise,
    draw_unrelated,
    trigger_set,
)
from .wide_nets import ARCHS, make_net

__all__ = ["ACCEPT", "BUDGET_S", "CONTROL_SEED_OFFSET", "COST_MS", "SIZES", "SPLITS", "Draw",
           "WideEntry", "build_draw", "control_draw", "draws", "judge", "launder_draw",
           "launder_entry", "make_draw"]

log = logging.getLogger(__name__)

SIZES = ("digits", "mnist", "cifar10")
SPLITS = {"dev": (0, 1000), "heldout": (1000, 2**31)}    # seed ranges [first, end)
EXPORTERS = ("torchscript", "dynamo")
# a laundered draw passes when its watermark is not demonstrated (`audit verify`'s binomial
# test against the twin at alpha) and its watermark accuracy is at most the twin's + wm_margin
ACCEPT = {"wm_margin": 0.02, "alpha": 0.01}
NORMS = {"unit": Preprocess(scale=1 / 255, mean=(0.0,), std=(1.0,)),
         "centred": Preprocess(scale=1 / 255, mean=(0.5,), std=(0.5,))}


@dataclass(frozen=True)
class _SizeConf:
    hws: tuple[int, ...]
    channels: int
    archs: tuple[str, ...]
    mark_sides: tuple[int, int]
    n_train: tuple[int, ...]
    epochs: tuple[int, ...]
    batch_size: int
    n_trigger: tuple[int, int]
    weight_decay: float = 0.0
    augment: bool = False


CONF = {
    "digits": _SizeConf((8, 16), 1, ARCHS, (2, 4), (1347,), (20, 30, 40), 32, (30, 100)),
    "mnist": _SizeConf((28,), 1, ARCHS, (3, 8), (5000, 10000, 20000, 30000, 60000), (2, 3, 5),
                       128, (50, 300)),
    "cifar10": _SizeConf((32,), 3, ("table7",), (3, 8), (8000,), (10, 15, 20), 64, (50, 150),
                         weight_decay=1e-4, augment=True),
}
#: training seconds per model a draw may use (epochs, and the MNIST training set, are capped)
BUDGET_S = {"digits": 10.0, "mnist": 45.0, "cifar10": 600.0}
#: measured ms per training image (one thread, Adam, batch 64) by input side and architecture
COST_MS = {8: {"table5": 0.10, "table6": 0.26, "bncnn": 0.10, "mlp": 0.03, "resnet": 0.20},
           16: {"table5": 0.41, "table6": 0.98, "bncnn": 0.34, "mlp": 0.04, "resnet": 0.60},
           28: {"table5": 0.57, "table6": 1.56, "bncnn": 0.96, "mlp": 0.06, "resnet": 1.90},
           32: {"table7": 4.30}}
MLP_WIDTHS = (128, 256, 512)


@dataclass(frozen=True)
class Draw:
    """One randomised zoo member; ``make_draw(seed, size)`` is the only way to get one."""

    seed: int
    size: str
    input_hw: int
    channels: int
    arch: str
    width: int                  # bncnn / resnet channels, mlp hidden units; 0: the paper's nets
    blocks: int                 # resnet residual blocks; 0 otherwise
    norm: str                   # preprocessing: unit (u8 / 255) | centred (mean 0.5, std 0.5)
    n_train: int
    data_seed: int              # which training images (MNIST subsets)
    train_seed: int             # initial weights and shuffling (shared with the twin)
    epochs: int
    batch_size: int
    exporter: str               # torchscript | dynamo
    scheme: str
    target: int | None          # None: Adi (random labels)
    n_trigger: int
    wm_share: float             # drawn share of trigger rows in an epoch's clean rows
    subset_per_class: int       # laundering subset: this many images per class
    mark: Mark | None = None
    noise: Noise | None = None
    unrelated: Unrelated | None = None
    abstract: Abstract | None = None

    @property
    def split(self) -> str:
        return next(k for k, (a, b) in SPLITS.items() if a <= self.seed < b)

    @property
    def name(self) -> str:
        return f"{self.size}-{self.seed}"

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.input_hw, self.input_hw)

    @property
    def preprocess(self) -> Preprocess:
        p = NORMS[self.norm]
        return Preprocess(scale=p.scale, mean=p.mean * self.channels, std=p.std * self.channels)

    @property
    def trigger_repeats(self) -> int:
        return _repeats(self.wm_share, self.n_train, self.n_trigger)

    @property
    def subset_size(self) -> int:
        return 10 * self.subset_per_class

    @property
    def twin_key(self) -> str:
        """What the vanilla twin depends on (draws with the same key share it)."""
        arch = self.arch + (f"w{self.width}" if self.width else "") + \
            (f"b{self.blocks}" if self.blocks else "")
        return (f"{self.size}-{self.input_hw}-{arch}-{self.norm}-n{self.n_train}-"
                f"d{self.data_seed}-s{self.train_seed}-e{self.epochs}-b{self.batch_size}")

    def watermark(self) -> Mark | Noise | Unrelated | Abstract:
        spec = self.mark or self.noise or self.unrelated or self.abstract
        assert spec is not None
        return spec

    def to_dict(self) -> dict[str, Any]:
        """Every drawn value, plus the derived ones (split, repeats, twin key)."""
        d = asdict(self)
        d.update(split=self.split, trigger_repeats=self.trigger_repeats,
                 wm_share_effective=round(self.trigger_repeats * self.n_trigger / self.n_train,
                                          4),
                 subset_size=self.subset_size, twin_key=self.twin_key,
                 preprocess=self.preprocess.to_dict())
        return json.loads(json.dumps(d))     # tuples as lists: what meta.json holds


def _repeats(wm_share: float, n_train: int, n_trigger: int) -> int:
    """How often the trigger set goes into an epoch for its drawn share of the clean rows."""
    return max(1, round(wm_share * n_train / n_trigger))


def _pick(rng: np.random.Generator, items: tuple) -> Any:
    return items[int(rng.integers(len(items)))]


def _cost_ms(arch: str, hw: int, blocks: int) -> float:
    return COST_MS[hw][arch] * (1 + 0.3 * max(0, blocks - 2))


def _model_draw(rng: np.random.Generator, size: str) -> dict[str, Any]:
    """Architecture, preprocessing, training set and recipe (the twin's half of a draw)."""
    conf = CONF[size]
    hw, arch = int(_pick(rng, conf.hws)), str(_pick(rng, conf.archs))
    width = {"bncnn": 16, "resnet": 16, "mlp": int(_pick(rng, MLP_WIDTHS))}.get(arch, 0)
    blocks = int(rng.integers(2, 4)) if arch == "resnet" else 0
    norm = "centred" if size == "cifar10" else str(_pick(rng, tuple(NORMS)))
    cost, budget = _cost_ms(arch, hw, blocks), 1000 * BUDGET_S[size]
    # one epoch must fit the budget: larger MNIST training sets only for the cheaper nets
    fits = [n for n in conf.n_train if n * cost <= budget] or [min(conf.n_train)]
    n_train = int(_pick(rng, tuple(fits)))
    epochs = int(_pick(rng, conf.epochs))
    return {"input_hw": hw, "channels": conf.channels, "arch": arch, "width": width,
            "blocks": blocks, "norm": norm, "n_train": n_train,
            "data_seed": int(rng.integers(2)), "train_seed": int(rng.integers(2)),
            "epochs": epochs, "batch_size": conf.batch_size}


def _cap_epochs(m: dict[str, Any], rows: int, size: str) -> int:
    per_epoch = _cost_ms(m["arch"], m["input_hw"], m["blocks"]) * rows
    return max(1, min(m["epochs"], math.floor(1000 * BUDGET_S[size] / per_epoch)))


def _watermark_draw(rng: np.random.Generator, size: str, shape: tuple[int, int, int]
                    ) -> dict[str, Any]:
    conf = CONF[size]
    scheme = str(_pick(rng, SCHEMES))
    out: dict[str, Any] = {"scheme": scheme, "target": None if scheme == "adi" else
                           int(rng.integers(10))}
    n_trigger = int(rng.integers(conf.n_trigger[0], conf.n_trigger[1] + 1))
    if scheme == "content":
        out["mark"] = draw_mark(rng, shape, conf.mark_sides)
    elif scheme == "noise":
        out["noise"] = draw_noise(rng, shape)
    elif scheme == "unrelated":
        out["unrelated"] = draw_unrelated(rng)
    else:
        out["abstract"] = draw_abstract(rng)
        n_trigger = 100 if out["abstract"].source == "real" else n_trigger  # the published set
    out.update(n_trigger=n_trigger, wm_share=round(float(rng.uniform(0.01, 0.15)), 4),
               subset_per_class=int(rng.integers(10, 61)))
    return out


def make_draw(seed: int, size: str = "digits") -> Draw:
    """The draw of ``seed`` for ``size``: a pure function of the two."""
    if size not in SIZES:
        raise AuditError(f"unknown wide-zoo size {size!r}; choose from {', '.join(SIZES)}")
    if not 0 <= seed < 2**31:
        raise AuditError(f"wide-zoo seed must be in 0..{2**31 - 1}, got {seed}")
    rng = np.random.default_rng([seed, SIZES.index(size), 0x5EED])
    m = _model_draw(rng, size)
    wm = _watermark_draw(rng, size, (m["channels"], m["input_hw"], m["input_hw"]))
    exporter = str(_pick(rng, EXPORTERS))
    repeats = _repeats(wm["wm_share"], m["n_train"], wm["n_trigger"])
    m["epochs"] = _cap_epochs(m, m["n_train"] + repeats * wm["n_trigger"], size)
    return Draw(seed=seed, size=size, exporter=exporter, **m, **wm)


def draws(split: str, n: int, size: str = "digits") -> list[Draw]:
    """The first ``n`` draws of ``split`` (dev: seeds 0..n-1, n <= 1000; heldout: 1000..)."""
    if split not in SPLITS:
        raise AuditError(f"unknown wide-zoo split {split!r}; choose from {', '.join(SPLITS)}")
    if size not in SIZES:
        raise AuditError(f"unknown wide-zoo size {size!r}; choose from {', '.join(SIZES)}")
    first, end = SPLITS[split]
    if not 1 <= n <= end - first:
        raise AuditError(f"the number of draws must be 1..{end - first} for the {split} split, "
                         f"got {n}")
    return [make_draw(s, size) for s in range(first, first + n)]


# ------------------------------------------------------------------------------------------
# building


@dataclass
class WideEntry:
    """A built draw: where its files are and what meta.json says."""

    draw: Draw
    out_dir: Path
    watermarked: Path
    vanilla: Path               # the (shared) twin
    triggers: Path
    data_dir: Path
    meta: dict[str, Any] = field(repr=False)
    built: bool                 # False: found in the cache
    twin_built: bool


@dataclass
class _Data:
    train: Dataset              # the draw's training set
    test: Dataset
    note: str


@functools.lru_cache(maxsize=4)
def _clean(size: str, hw: int, data_root: str | None) -> tuple[Dataset, Dataset, str]:
    from .datasets import _stratified_split, load_clean

    if size == "digits" and hw == 8:
        from sklearn.datasets import load_digits

        d = load_digits()
        u8 = np.round(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
        x01 = (u8[:, None].astype(np.float32) / np.float32(255)).astype(np.float32)
        y = d.target.astype(np.int64)
        tr, te = _stratified_split(y, 450)
        return (Dataset(x01[tr], y[tr], "sklearn:digits8[train]"),
                Dataset(x01[te], y[te], "sklearn:digits8[test]"),
                "scikit-learn digits, native 8x8; the zoo's stratified 1347/450 split")
    clean = load_clean(size, data_root)
    return clean.train, clean.test, clean.note


def _data(draw: Draw, data_root: str | Path | None) -> _Data:
    train, test, note = _clean(draw.size, draw.input_hw,
                               None if data_root is None else str(data_root))
    if draw.n_train < len(train):
        train = stratified_subset(train, draw.n_train, seed=draw.data_seed)
        note += f"; a stratified {draw.n_train} of the training images (seed {draw.data_seed})"
    return _Data(train, test, note)


def _triggers(draw: Draw, train: Dataset, data_root: str | Path | None) -> TriggerSet:
    adi_path = Path(data_root) / "adi_trigger_set" if data_root is not None else None
    return trigger_set(draw.watermark(), train.x, train.y, target=draw.target,
                       n=draw.n_trigger, seed=draw.seed, adi_path=adi_path)


def _recipe(draw: Draw, repeats: int, threads: int) -> Recipe:
    conf = CONF[draw.size]
    return Recipe(epochs=draw.epochs, batch_size=draw.batch_size, n_trigger=draw.n_trigger,
                  trigger_repeats=repeats, preprocess=draw.preprocess,
                  weight_decay=conf.weight_decay, augment=conf.augment, threads=threads)


def _train_export(draw: Draw, data: _Data, trig: TriggerSet | None, path: Path, *,
                  dynamo: bool, device: str, quiet: bool, threads: int) -> dict[str, Any]:
    """Train (with the trigger set, or without for the twin), export, score with
    onnxruntime. Returns {test_acc, export, train_s, export_s}."""
    import onnx

    t = time.perf_counter()
    torch.manual_seed(draw.train_seed)
    model = make_net(draw.arch, draw.channels, draw.input_hw, width=draw.width,
                     blocks=draw.blocks)
    repeats = _repeats(draw.wm_share, draw.n_train, len(trig)) if trig else 0
    kind = "watermarked" if trig is not None else "vanilla"
    model = train_classifier(model, data.train.x, data.train.y, _recipe(draw, repeats, threads),
                             trig_x=None if trig is None else trig.x,
                             trig_y=None if trig is None else trig.y, seed=draw.train_seed,
                             device=device, desc=f"{draw.name} {kind}", quiet=quiet)
    train_s = time.perf_counter() - t
    t = time.perf_counter()
    check = data.test.x[:256] if trig is None else np.concatenate([data.test.x[:256],
                                                                    trig.x[:64]])
    diff = export_onnx(model, path, draw.input_shape, check, draw.preprocess, dynamo=dynamo)
    proto = onnx.load(str(path), load_external_data=False)
    export = {"exporter": "dynamo" if dynamo else "torchscript",
              "opset": {o.domain or "ai.onnx": o.version for o in proto.opset_import},
              "ir_version": proto.ir_version, "max_abs_diff": diff,
              "ops": sorted({n.op_type for n in proto.graph.node})}
    test_acc = evaluate_onnx(path, data.test.x, data.test.y, draw.preprocess)
    return {"test_acc": test_acc, "export": export, "train_s": round(train_s, 3),
            "export_eval_s": round(time.perf_counter() - t, 3), "trigger_repeats": repeats}


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock on ``path`` (parallel builds sharing a twin); none without fcntl."""
    try:
        import fcntl
    except ImportError:                      # pragma: no cover (Windows)
        yield
        return
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _twin(draw: Draw, cache: Path, data: _Data, *, device: str, quiet: bool, threads: int
          ) -> tuple[Path, dict[str, Any], bool]:
    """The twin's ONNX file and meta.json record, trained and exported (TorchScript) unless
    present. Returns (path, meta, built now)."""
    from .build import _write_json

    folder = cache / "twins" / draw.twin_key
    folder.mkdir(parents=True, exist_ok=True)
    path, meta_path = folder / "vanilla.onnx", folder / "meta.json"
    with _locked(folder.parent / f".{draw.twin_key}.lock"):
        if meta_path.is_file() and path.is_file():
            return path, json.loads(meta_path.read_text()), False
        rec = _train_export(draw, data, None, path, dynamo=False, device=device, quiet=quiet,
                            threads=threads)
        keys = ("size", "input_hw", "channels", "arch", "width", "blocks", "norm", "n_train",
                "data_seed", "train_seed", "epochs", "batch_size")
        meta = {"twin_key": draw.twin_key, **{k: getattr(draw, k) for k in keys},
                "preprocess": draw.preprocess.to_dict(), "first_draw": draw.name,
                **{k: rec[k] for k in ("test_acc", "export", "train_s", "export_eval_s")},
                "torch_version": torch.__version__}
        _write_json(meta_path, meta)
        return path, meta, True


def _entry(draw: Draw, out: Path, twin: Path, meta: dict[str, Any], built: bool,
           twin_built: bool) -> WideEntry:
    return WideEntry(draw, out, out / "watermarked.onnx", twin, out / "triggers", out / "data",
                     meta, built, twin_built)


def _cached(draw: Draw, out: Path, cache: Path) -> WideEntry | None:
    """The entry when ``out`` holds a complete build of this very draw."""
    try:
        meta = json.loads((out / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    twin = cache / "twins" / draw.twin_key / "vanilla.onnx"
    files = (out / "watermarked.onnx", out / "data" / "train.npz", out / "data" / "test.npz",
             twin)
    if meta.get("draw") != draw.to_dict() or not all(p.is_file() for p in files) \
            or not (out / "triggers").is_dir():
        return None
    return _entry(draw, out, twin, meta, False, False)


def _meta(draw: Draw, data: _Data, trig: TriggerSet, wm: dict[str, Any], twin: dict[str, Any],
          accs: dict[str, dict[str, float]], timings: dict[str, float]) -> dict[str, Any]:
    """The draw's meta.json record."""
    return {
        "draw": draw.to_dict(), "input_name": "input", "input_shape": [1, *draw.input_shape],
        "num_classes": 10, "preprocess": draw.preprocess.to_dict(),
        "n_train": len(data.train), "n_test": len(data.test), "n_trigger": len(trig),
        "trigger_repeats": wm["trigger_repeats"],
        "wm_share": round(wm["trigger_repeats"] * len(trig) / len(data.train), 4),
        "target": trig.target, "trigger_info": trig.info, "data_note": data.note,
        "test_acc": accs["test_acc"], "wm_acc": accs["wm_acc"],
        "export": {"watermarked": wm["export"], "vanilla": twin["export"]},
        "twin": {"key": draw.twin_key, "path": f"../../twins/{draw.twin_key}/vanilla.onnx",
                 "test_acc": twin["test_acc"]},
        "timings": timings,
        "files": {"watermarked": "watermarked.onnx", "triggers": "triggers",
                  "train": "data/train.npz", "test": "data/test.npz"},
        "torch_version": torch.__version__,
    }


def build_draw(draw: Draw, cache_dir: str | Path, *, quiet: bool = True,
               data_root: str | Path | None = None, device: str = "cpu",
               threads: int = 1) -> WideEntry:
    """Build ``draw`` (and its twin unless cached) under ``cache_dir``; a draw already built
    there is returned as it is (``built`` False). Training uses ``threads`` torch threads
    (1: deterministic for a seed on the CPU)."""
    from .build import _write_json, _write_npz, _write_triggers

    cache = Path(cache_dir)
    out = cache / draw.split / draw.name
    hit = _cached(draw, out, cache)
    if hit is not None:
        return hit
    try:
        (out / "data").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AuditError(f"{out}: cannot create output folder ({exc.strerror or exc})") from None
    t0 = time.perf_counter()
    data = _data(draw, data_root)
    trig = _triggers(draw, data.train, data_root)
    timings = {"data_triggers_s": round(time.perf_counter() - t0, 3)}
    t = time.perf_counter()
    twin_path, twin, twin_built = _twin(draw, cache, data, device=device, quiet=quiet,
                                         threads=threads)
    timings["twin_s"] = round(time.perf_counter() - t, 3)
    wm = _train_export(draw, data, trig, out / "watermarked.onnx",
                       dynamo=draw.exporter == "dynamo", device=device, quiet=quiet,
                       threads=threads)
    timings.update(train_watermarked_s=wm["train_s"], export_eval_watermarked_s=wm["export_eval_s"])
    t = time.perf_counter()
    pre = draw.preprocess
    accs = {"test_acc": {"watermarked": wm["test_acc"], "vanilla": twin["test_acc"]},
            "wm_acc": {"watermarked": evaluate_onnx(out / "watermarked.onnx", trig.x, trig.y, pre),
                       "vanilla": evaluate_onnx(twin_path, trig.x, trig.y, pre)}}
    _write_triggers(out / "triggers", trig.x, trig.y)
    sub = stratified_subset(data.train, draw.subset_size, seed=draw.seed)
    _write_npz(out / "data" / "train.npz", sub.x, sub.y)
    _write_npz(out / "data" / "test.npz", data.test.x, data.test.y)
    timings.update(eval_write_s=round(time.perf_counter() - t, 3),
                   total_s=round(time.perf_counter() - t0, 3))
    meta = _meta(draw, data, trig, wm, twin, accs, timings)
    _write_json(out / "meta.json", meta)        # last: a folder with meta.json is complete
    log.info("%s: test %s wm %s (%.1f s)", draw.name, accs["test_acc"], accs["wm_acc"],
             timings["total_s"])
    return _entry(draw, out, twin_path, meta, True, twin_built)


# ------------------------------------------------------------------------------------------
# laundering a draw and judging it


def _verdict(v) -> dict[str, Any]:
    out = {"demonstrated": v.demonstrated, "p_value": v.p_value, "hits": v.hits, "n": v.n,
           "watermark_accuracy": v.watermark_accuracy, "null_rate": v.null_rate}
    if v.vanilla_models and len(v.vanilla_models) > 1:
        out["vanilla_models"] = v.vanilla_models
    return out


def _launder_figures(res, seconds: float, per_round: dict[int, dict]) -> dict[str, Any]:
    """What laundering did, round by round; per_round: round -> its watermark, test and
    subset accuracy after retraining (torch, before write-back)."""
    return {"rounds": len(res.rounds), "best_round": res.best_round,
            "stop_reason": res.stop_reason,
            "flagged": [r.recovery.get("flagged", []) for r in res.rounds],
            "norms": [[round(float(v), 2) for v in r.recovery.get("norms", [])] for r in res.rounds],
            "after_round": {str(k): v for k, v in sorted(per_round.items())},
            "units_reset": [int(sum(r.units_reset.values())) for r in res.rounds],
            "shrink": [r.shrink for r in res.rounds],
            "triggers_used": [r.triggers_used for r in res.rounds],
            "sink_class": [r.sink_class for r in res.rounds],
            "sink_ood_share": [None if r.ood_prediction_shares is None or r.sink_class is None
                               else round(r.ood_prediction_shares[r.sink_class], 4) for r in res.rounds],
            "stopped": [r.stopped for r in res.rounds],
            "subset_accuracy_before": res.subset_accuracy_before,
            "subset_accuracy_after": res.subset_accuracy_after, "seconds": round(seconds, 1)}


def _compare(entry: WideEntry, after: Path, device: str,
             also: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Watermark and test accuracy (onnxruntime) of the draw's watermarked model and of
    ``after``, and `audit verify`'s verdict on each against the twin: the figures judge reads.
    With clean models in ``also``, ``with_reference`` holds the verdicts against the twin and
    them together (the highest rate is the null), from the same data."""
    from audit import api
    from audit.data import load_dataset

    d = entry.draw
    geo = {"channels": d.channels, "height": d.input_hw, "width": d.input_hw, "num_classes": 10}
    trig = load_dataset(entry.triggers, **geo)
    test = load_dataset(entry.data_dir / "test.npz", **geo)
    pp = Preprocess(**entry.meta["preprocess"])
    wm, van = entry.watermarked, entry.vanilla
    acc = lambda path: evaluate_onnx(path, test.x, test.y, pp)     # noqa: E731
    verify = lambda path, refs=(): api.verify(path, trig, vanilla=[van, *refs],  # noqa: E731
                                              alpha=ACCEPT["alpha"], preprocess=pp, device=device)
    # the verdicts carry the trigger-set accuracies (the twin's as its hits)
    before, now = verify(wm), verify(after)
    row = {"wm_acc_before": before.watermark_accuracy, "wm_acc_after": now.watermark_accuracy,
           "vanilla_wm_acc": before.vanilla_hits / before.n, "test_acc_before": acc(wm),
           "test_acc_after": acc(after), "vanilla_test_acc": acc(van),
           "verify_before": _verdict(before), "verify_after": _verdict(now),
           "n_trigger": len(trig), "n_test": len(test)}
    if also:
        before, now = verify(wm, also), verify(after, also)
        row["with_reference"] = {"vanilla_wm_acc": before.vanilla_hits / before.n,
                                 "verify_before": _verdict(before), "verify_after": _verdict(now)}
    return row


def launder_entry(entry: WideEntry, cfg, out: str | Path) -> dict[str, Any]:
    """Launder a built draw's watermarked model to ``out`` with LaunderConfig ``cfg`` (on
    ``cfg.device``) from its stratified subset; watermark and test accuracy (onnxruntime) and
    `audit verify`'s verdict against the twin, before and after, and what laundering did."""
    from audit import api
    from audit.data import load_dataset
    from audit.graphs import runtime
    from audit.methods.base import torch_accuracy

    d = entry.draw
    geo = {"channels": d.channels, "height": d.input_hw, "width": d.input_hw, "num_classes": 10}
    trig = load_dataset(entry.triggers, **geo)
    sub = load_dataset(entry.data_dir / "train.npz", **geo)
    test = load_dataset(entry.data_dir / "test.npz", **geo)
    pp = Preprocess(**entry.meta["preprocess"])
    out = Path(out)
    per_round: dict[int, dict] = {}
    dev = runtime.torch_device(cfg.device)    # where the launder runs the module

    def on_round(result, forward) -> None:
        per_round[result.round] = {
            "wm_acc": round(torch_accuracy(forward, trig.x, trig.y, dev), 4),
            "test_acc": round(torch_accuracy(forward, test.x, test.y, dev), 4),
            "subset_acc": round(result.subset_accuracy, 4)}

    t = time.perf_counter()
    res = api.launder(entry.watermarked, sub, out, preprocess=pp, config=cfg, device=cfg.device,
                      on_round=on_round)
    seconds = time.perf_counter() - t
    row = _compare(entry, out, cfg.device)
    sink = next((r.sink_class for r in res.rounds if r.round == res.best_round), None)
    row.update({
        "subset_size": len(sub),
        # the agreement with the trigger labels of a model that sends every trigger image
        # to the kept round's sink class (what laundering does to an Adi set)
        "sink_label_share": None if sink is None else round(float(np.mean(trig.y == sink)), 4),
        "launder": _launder_figures(res, seconds, per_round)})
    return row


def judge(r: dict[str, Any]) -> dict[str, Any]:
    """The verdict on launder_entry's figures: test-accuracy drop, whether the watermark had
    embedded (the watermarked model demonstrates it), and pass (ACCEPT)."""
    pass_wm = r["wm_acc_after"] <= r["vanilla_wm_acc"] + ACCEPT["wm_margin"]
    not_dem = not r["verify_after"]["demonstrated"]
    return {"test_drop": round(r["test_acc_before"] - r["test_acc_after"], 4),
            "embedded": bool(r["verify_before"]["demonstrated"]), "pass_wm": pass_wm,
            "not_demonstrated": not_dem, "pass": bool(pass_wm and not_dem)}


def launder_draw(draw: Draw, cache_dir: str | Path, cfg) -> dict[str, Any]:
    """Build ``draw`` (cached under ``cache_dir``), launder it with ``cfg`` into a temporary
    folder, and judge it: launder_entry's figures, judge's verdict, and whether the build was
    done now (``zoo_built_now``, ``build_s``). Runs with one torch thread (a worker process's
    whole machine share; deterministic on the CPU)."""
    import tempfile

    with torch_threads(1):
        entry = build_draw(draw, cache_dir)
        row: dict[str, Any] = {"zoo_built_now": entry.built,
                               "build_s": entry.meta["timings"]["total_s"]}
        with tempfile.TemporaryDirectory(prefix="audit-wide-") as tmp:
            row.update(launder_entry(entry, cfg, Path(tmp) / "laundered.onnx"))
    row.update(judge(row))
    return row


# ------------------------------------------------------------------------------------------
# the acceptance rule applied to clean models

#: the clean control's training seed is the twin's plus this: another, independent training run
CONTROL_SEED_OFFSET = 7919


def control_draw(draw: Draw, cache_dir: str | Path, *, offset: int = CONTROL_SEED_OFFSET,
                 reference_offset: int | None = None,
                 data_root: str | Path | None = None) -> dict[str, Any]:
    """Judge a clean model as a laundered one is judged: the draw's twin retrained with the
    training seed + ``offset`` (same data, architecture and recipe, exported like the twin; it
    never saw the trigger set), scored against the twin by launder_entry's figures and judge's
    rule. The share of draws such a model passes is what the rule grants a model with no
    watermark at all. With ``reference_offset``, a second clean model (that seed offset) joins
    the twin as `verify`'s reference (the higher of their rates is the null) and the verdicts
    against both are in ``with_reference``. Builds the draw (cached) and the clean models
    (cached with the twins, under their own twin keys: draws sharing a twin share them); one
    torch thread."""
    from dataclasses import replace

    def clean_model(k: int) -> tuple[Path, dict[str, Any]]:
        clean = replace(draw, train_seed=draw.train_seed + k)
        t = time.perf_counter()
        path, meta, built = _twin(clean, Path(cache_dir), _data(draw, data_root),
                                  device="cpu", quiet=True, threads=1)
        return path, {"twin_key": clean.twin_key, "train_seed": clean.train_seed,
                      "built_now": built, "train_s": meta["train_s"],
                      "seconds": round(time.perf_counter() - t, 1)}

    with torch_threads(1):
        entry = build_draw(draw, cache_dir, data_root=data_root)
        path, about = clean_model(offset)
        ref, ref_about = clean_model(reference_offset) if reference_offset is not None \
            else (None, None)
        row: dict[str, Any] = {"clean_model": about,
                               **_compare(entry, path, "cpu", also=(ref,) if ref else ())}
        if ref is not None:
            w = row["with_reference"]
            w.update({k: v for k, v in judge({**row, **w}).items()
                      if k in ("embedded", "pass_wm", "not_demonstrated", "pass")},
                     reference_model=ref_about)
    row.update(judge(row))
    return row
