"""`audit detect` on real models: false alarms on clean models, detections on backdoored and
watermarked ones, with the default confirmation of candidates and without it.

Models (shared/data unless noted; preprocessing from MANIFEST.json):
  * backdoored/badnets_mnist.onnx: BadNets, target 1 (mean 0.5, std 0.5)
  * the 5 clean third-party MNIST models of onnx_models/ (CNTK, tf2onnx, PyTorch 1.11,
    PyTorch 2.9.1 external data, keras2onnx) and the clean PyTorch 1.7 CIFAR-10 model
  * MNIST zoo models (``build_entry("mnist", scheme, <zoo-dir>/mnist_<scheme>)``, reused when
    meta.json exists): the Zhang *content* and *noise* watermarked models (target 0) and the
    vanilla twin of the content entry; the same three from the digits zoo
  * with ``--wide N``: the wide zoo's dev digits draws 0..N-1 that carry a content or noise
    mark, and the twin of every one of those N draws, whatever its scheme
    ($AUDIT_BENCH_ZOO/wide, built when missing); ``--heldout-digits N`` and ``--heldout-mnist
    N`` add the held-out split's first N draws of that size the same way. The detection
    defaults were set on the dev draws and the zoo; the summary gives each split's rates.

Data: ``audit detect --max-images 1000`` on the MNIST test set (a stratified 1,000 images for
Neural Cleanse, 500 of the rest held out for the confirmation's transfer and reference checks;
the reference classifiers train on the 1,000); CIFAR-10: the
JPEG-decoded test set; digits and wide-zoo models: their own test images (a fifth held out).
NC defaults (40 epochs, 8 steps), the log-norm index. Each row records the candidates (index
> 1.75: Neural Cleanse alone) and what the confirmation found; ``l1_scale`` scores the same
recovery with Neural Cleanse's own index. torch runs with ``--threads`` threads (default 1) in
each of ``--workers`` processes (default 1).

Acceptance: at most 1 in 10 clean models flagged; the BadNets model and at least 90% of the
zoo's content and noise models flagged on their target.

Usage: python bench/detect_models.py [--zoo-dir DIR] [--wide N] [--heldout-digits N]
       [--heldout-mnist N] [--only NAME ...] [--workers N] [--threads N]
Writes bench/results/detect_models.json (with the commit, paths relative to the repository or
its caches) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SHARED = HERE.parents[1] / "shared" / "data"
sys.path.insert(0, str(HERE))

import common  # noqa: E402

THIRD_PARTY = ["onnx_models/cntk_mnist8.onnx", "onnx_models/tf2onnx_keras_mnist.onnx",
               "onnx_models/pytorch111_mnist.onnx",
               "onnx_models/pytorch291_external_data/mnist.onnx",
               "onnx_models/keras2onnx_mlp_mnist.onnx"]
BADNETS = "backdoored/badnets_mnist.onnx"
CIFAR_THIRD_PARTY = "onnx_models/pytorch17_cifar10.onnx"
CIFAR_DATA = SHARED / "cifar10" / "cifar10_test_from_jpeg.npz"
ZOO_SCHEMES = ["content", "noise"]


def machine() -> dict:
    from probe_memory import machine as m

    return m()


def find_identical(scheme: str, roots: list[Path]) -> Path | None:
    from audit.models_zoo.build import DEFAULT_TARGET, RECIPES

    for root in roots:
        for src in (root / f"mnist_{scheme}", root / f"mnist_{scheme}_s0"):
            meta_p = src / "meta.json"
            if not meta_p.is_file():
                continue
            m = json.loads(meta_p.read_text())
            # the default target; Adi's labels are random, so its meta records none
            if (m.get("seed"), m.get("epochs"), m.get("scheme")) == \
                    (0, RECIPES["mnist"].epochs, scheme) and m.get("target") in (DEFAULT_TARGET, None):
                return src
    return None


def zoo_entry(zoo_dir: Path, scheme: str, copy_from: list[Path], dataset: str = "mnist"
              ) -> tuple[Path, dict, str]:
    """The zoo entry folder (built, or reused when meta.json exists)."""
    from audit.models_zoo.build import build_entry

    out = zoo_dir / f"{dataset}_{scheme}"
    how = "reused"
    if dataset == "mnist" and not (out / "meta.json").is_file():
        # an identical build (same function, data set, scheme, seed 0, default recipe) made by
        # another bench may be copied instead of spending minutes training it again
        src = find_identical(scheme, copy_from)
        if src is not None:
            shutil.rmtree(out, ignore_errors=True)
            shutil.copytree(src, out)
            how = f"copied from {src} (same build_entry arguments)"
    if not (out / "meta.json").is_file():
        t = time.perf_counter()
        build_entry(dataset, scheme, out, seed=0, quiet=True)
        how = f"built ({time.perf_counter() - t:.0f} s)"
    return out, json.loads((out / "meta.json").read_text()), how


def model_list(manifest: dict, zoo_dir: Path, copy_from: list[Path]) -> list[dict]:
    by_file = {m["file"]: m for m in manifest["models"]}
    models = []
    b = by_file[BADNETS]
    models.append({"name": "badnets_mnist", "path": SHARED / BADNETS, "kind": "backdoored",
                   "scale": b["scale"], "mean": b["mean"], "std": b["std"],
                   "target": b["backdoor"]["target_label"]})
    for f in THIRD_PARTY:
        m = by_file[f]
        models.append({"name": Path(f).stem if "external" not in f else "pytorch291_mnist",
                       "path": SHARED / f, "kind": "clean third-party", "scale": m["scale"],
                       "mean": m["mean"], "std": m["std"], "target": None})
    c = by_file[CIFAR_THIRD_PARTY]
    models.append({"name": "pytorch17_cifar10", "path": SHARED / CIFAR_THIRD_PARTY,
                   "kind": "clean third-party", "scale": c["scale"], "mean": c["mean"],
                   "std": c["std"], "target": None, "data": CIFAR_DATA})
    for dataset in ("mnist", "digits"):
        models += zoo_models(dataset, zoo_dir, copy_from)
    return models


def wide_models(splits: list[tuple[str, str, int]], cache: Path) -> list[dict]:
    """Wide-zoo draws, ``(split, size, n)`` each: the first n draws of that split and size that
    carry a content or noise mark, and the twin of every draw (any scheme: all are clean)."""
    from audit.models_zoo.wide import build_draw, draws

    models, twins = [], {}
    for split, size, n in splits:
        for draw in draws(split, n, size):
            e = build_draw(draw, cache)
            pp = e.meta["preprocess"]
            common_ = {"scale": pp["scale"], "mean": pp["mean"], "std": pp["std"],
                       "data": e.data_dir / "test.npz", "split": split}
            if draw.scheme in ZOO_SCHEMES:
                models.append({"name": f"wide_{size}-{draw.seed}", "path": e.watermarked,
                               "kind": f"wide watermarked ({draw.scheme})",
                               "target": e.meta["target"], **common_})
            twins.setdefault(str(e.vanilla), {"name": f"wide_twin_{draw.twin_key}",
                                              "path": e.vanilla, "kind": "wide vanilla twin",
                                              "target": None, **common_})
    return models + list(twins.values())


def zoo_models(dataset: str, zoo_dir: Path, copy_from: list[Path]) -> list[dict]:
    models = []
    for scheme in ZOO_SCHEMES:
        out, meta, how = zoo_entry(zoo_dir, scheme, copy_from, dataset)
        pp = meta["preprocess"]
        common = {"scale": pp["scale"], "mean": pp["mean"][0], "std": pp["std"][0],
                  "zoo": {"dir": str(out), "how": how, "test_acc": meta["test_acc"],
                          "wm_acc": meta["wm_acc"], "timings": meta["timings"]}}
        if dataset == "digits":
            common["data"] = out / "data" / "test.npz"
        models.append({"name": f"zoo_{dataset}_{scheme}", "path": out / "watermarked.onnx",
                       "kind": f"zoo watermarked ({scheme})", "target": meta["target"], **common})
        if scheme == "content":
            models.append({"name": f"zoo_{dataset}_vanilla", "path": out / "vanilla.onnx",
                           "kind": "zoo vanilla twin", "target": None, **common})
    return models


def _values(v) -> tuple[float, ...]:
    return tuple(float(x) for x in v) if isinstance(v, (list, tuple)) else (float(v),)


def run_one(m: dict, data, seed: int, n_images: int) -> dict:
    from audit.api import detect
    from audit.data import Preprocess

    data = m.get("data", data)   # a digits entry's own test.npz, loaded by detect at its geometry
    pp = Preprocess(scale=float(m["scale"]), mean=_values(m["mean"]), std=_values(m["std"]))
    load0 = os.getloadavg()[0]
    t = time.perf_counter()
    d = detect(str(m["path"]), data, preprocess=pp, seed=seed, max_images=n_images, device="cpu",
               confirm=True, quiet=True)
    seconds = time.perf_counter() - t
    flagged = d["flagged"]
    target = m["target"]
    ok = _passes(flagged, target)
    return {"name": m["name"], "model": str(m["path"]), "kind": m["kind"],
            "preprocess": {"scale": m["scale"], "mean": m["mean"], "std": m["std"]},
            "expected_target": target, "flagged": flagged, "candidates": d["candidates"],
            "confirmation": [{"cls": c["cls"], "confirmed": c["confirmed"],
                              "restart_norms": [round(v, 3) for v in c["restart_norms"]],
                              "restart_index": round(c["restart_index"], 3),
                              "transfer": [round(v, 4) for v in c["transfer"]],
                              "reference": None if c["reference"] is None else
                              [round(v, 4) for v in c["reference"]],
                              "reference_accuracy": [round(v, 4) for v in c["reference_accuracy"]],
                              "reasons": c["reasons"]} for c in d["confirmation"]],
            "target_flagged": None if target is None else target in flagged,
            "other_flagged": [k for k in flagged if k != target],
            "pass": ok, "exit_code": 1 if flagged else 0,
            "norms": [round(v, 3) for v in d["norms"]],
            "anomaly_index": [round(v, 3) for v in d["anomaly_index"]],
            "max_anomaly_index": round(max(d["anomaly_index"]), 3),
            "target_anomaly_index": None if target is None else round(d["anomaly_index"][target], 3),
            "attack_success": [round(v, 4) for v in d["attack_success"]],
            "most_likely_infected": d["most_likely_infected"], "epochs_run": d["epochs_run"],
            "n_images": d["n_images"], "n_held_out": d["n_held_out"], "seconds": round(seconds, 1),
            "load_average_1min_at_start": round(load0, 2), **({"zoo": m["zoo"]} if "zoo" in m else {}),
            **({"split": m["split"]} if "split" in m else {}),
            "anomaly_scale": d["anomaly_scale"], **l1_scale(d["norms"], target)}


def _run_job(m: dict, data, seed: int, n_images: int, threads: int) -> dict:
    common.set_threads(threads)   # in each worker process
    return run_one(m, data, seed, n_images)


def l1_scale(norms: list[float], target: int | None) -> dict:
    """The same recovery scored with `--anomaly-scale l1` (Neural Cleanse's index), without
    confirmation."""
    from audit.nc import anomaly_index

    idx, flagged = anomaly_index(np.asarray(norms), "l1")
    return {"l1_scale": {"flagged": flagged, "anomaly_index": [round(float(v), 3) for v in idx],
                         "pass": _passes(flagged, target)}}


def _passes(flagged: list[int], target: int | None) -> bool:
    """A clean model passes with nothing flagged, a backdoored one with its target flagged."""
    return not flagged if target is None else target in flagged


def _rate(rows: list[dict], key) -> str:
    return f"{sum(bool(key(r)) for r in rows)}/{len(rows)}"


def _split_rates(twins: list[dict], marks: list[dict]) -> dict:
    return {"twins_flagged": _rate(twins, lambda r: r["flagged"]),
            "twins_candidates_unconfirmed": _rate(twins, lambda r: r["candidates"]),
            "targets_flagged": _rate(marks, lambda r: r["pass"])}


def summarise(rows: list[dict]) -> dict:
    """Detections and false alarms, confirmed (the default) and unconfirmed (the candidates:
    Neural Cleanse on the log scale alone)."""
    clean = [r for r in rows if r["expected_target"] is None]
    bad = [r for r in rows if r["kind"] == "backdoored" or r["kind"].startswith("zoo watermarked")]
    wide = [r for r in rows if r["kind"].startswith("wide watermarked")]
    zoo_marks = [r for r in bad if r["kind"] != "backdoored"]
    flagged_share = sum(bool(r["flagged"]) for r in clean) / max(1, len(clean))
    out = {
        "anomaly_scale": sorted({r.get("anomaly_scale", "l1") for r in rows}),
        "clean_flagged": _rate(clean, lambda r: r["flagged"]),
        "clean_flagged_models": [r["name"] for r in clean if r["flagged"]],
        "clean_candidates_unconfirmed": _rate(clean, lambda r: r["candidates"]),
        "backdoored_target_flagged": _rate(bad, lambda r: r["pass"]),
        "backdoored_target_candidate_unconfirmed": _rate(
            bad, lambda r: r["expected_target"] in r["candidates"]),
        "third_party_clean_not_flagged": _rate([r for r in clean if r["kind"] == "clean third-party"],
                                               lambda r: r["pass"]),
        "acceptance": {
            "clean_flagged_at_most_1_in_10": flagged_share <= 0.1,
            "badnets_flagged": all(r["pass"] for r in bad if r["kind"] == "backdoored"),
            "zoo_content_noise_at_least_90pct": sum(r["pass"] for r in zoo_marks) >= 0.9 * len(zoo_marks),
        },
    }
    if wide:
        out["wide_watermarked_target_flagged"] = _rate(wide, lambda r: r["pass"])
        for size in sorted({r["name"].split("-")[0] for r in wide}):
            part = [r for r in wide if r["name"].startswith(size + "-")]
            out[f"{size}_target_flagged"] = _rate(part, lambda r: r["pass"])
    # the wide zoo per split: the detection defaults were set on the dev draws and the zoo, so
    # the held-out split's rates are the ones that say how they generalise
    splits = sorted({r["split"] for r in rows if "split" in r})
    if splits:
        out["wide_by_split"] = {split: _split_rates([r for r in clean if r.get("split") == split],
                                                    [r for r in wide if r.get("split") == split])
                                for split in splits}
    lp = [r["l1_scale"]["pass"] for r in bad]
    out["l1_scale"] = {"backdoored_target_flagged": f"{sum(lp)}/{len(lp)}",
                       "clean_flagged": _rate(clean, lambda r: r["l1_scale"]["flagged"])}
    return out


def table(rows: list[dict]) -> str:
    lines = ["| model | kind | target | flagged | anomaly idx (target / max) | pass "
             "| L1 scale: flagged, idx (target / max) | s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        tgt = "-" if r["expected_target"] is None else str(r["expected_target"])
        ti = "-" if r["target_anomaly_index"] is None else f"{r['target_anomaly_index']:.2f}"
        fl = ",".join(map(str, r["flagged"])) or "none"
        l1 = r["l1_scale"]
        l1_fl = ",".join(map(str, l1["flagged"])) or "none"
        l1_t = "-" if r["expected_target"] is None else f"{l1['anomaly_index'][r['expected_target']]:.2f}"
        lines.append(f"| {r['name']} | {r['kind']} | {tgt} | {fl} | {ti} / "
                     f"{r['max_anomaly_index']:.2f} | {'yes' if r['pass'] else 'NO'} | "
                     f"{l1_fl}, {l1_t} / {max(l1['anomaly_index']):.2f} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo-dir", type=Path, default=common.TMP / "audit-bench-zoo-detect")
    ap.add_argument("--copy-from", type=Path, action="append", default=[],
                    help="Folder holding identical MNIST zoo builds to copy instead of training.")
    ap.add_argument("--n-images", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    ap.add_argument("--workers", type=int, default=1,
                    help="Models run in this many processes at once (default 1).")
    ap.add_argument("--only", nargs="*", default=None, help="Run only these model names.")
    ap.add_argument("--wide", type=int, default=0, metavar="N",
                    help="Also the wide zoo's dev digits draws 0..N-1 with a content or noise mark, "
                         "and the twins of draws 0..N-1 (cache: $AUDIT_BENCH_ZOO/wide).")
    ap.add_argument("--heldout-digits", type=int, default=0, metavar="N",
                    help="Also the wide zoo's first N held-out digits draws, likewise.")
    ap.add_argument("--heldout-mnist", type=int, default=0, metavar="N",
                    help="Also the wide zoo's first N held-out MNIST draws, likewise.")
    ap.add_argument("--out", type=Path, default=RESULTS / "detect_models.json")
    args = ap.parse_args()
    if not (SHARED / "MANIFEST.json").is_file():
        print(f"skipped: {SHARED} not present (real models and MNIST)", file=sys.stderr)
        return 0

    from audit.data import load_dataset
    from audit.settings import ANOMALY_THRESHOLD, DETECT_THRESHOLD

    common.set_threads(args.threads)
    info = machine()
    t_all = time.perf_counter()
    manifest = json.loads((SHARED / "MANIFEST.json").read_text())
    test = load_dataset(SHARED / "mnist" / "t10k-images-idx3-ubyte.gz", channels=1, height=28,
                        width=28, num_classes=10)
    # detect draws the same stratified sample (n_images, seed) and holds out the rest
    data = test
    models = model_list(manifest, args.zoo_dir, args.copy_from)
    splits = [(split, size, n) for split, size, n in (("dev", "digits", args.wide),
                                                      ("heldout", "digits", args.heldout_digits),
                                                      ("heldout", "mnist", args.heldout_mnist)) if n]
    if splits:
        models += wide_models(splits, common.ZOO_CACHE / "wide")
    if args.only:
        models = [m for m in models if m["name"] in args.only]
    rows = []
    job = functools.partial(_run_job, data=data, seed=args.seed, n_images=args.n_images,
                            threads=args.threads)
    if args.workers > 1:
        # models are independent: a pool of forked processes, results in the models' order
        pool = multiprocessing.get_context("fork").Pool(args.workers)
        results = pool.imap(job, models)
    else:
        pool, results = None, map(job, models)
    for r in results:
        rows.append(r)
        print(f"{r['name']:<24} flagged {r['flagged']!s:<10} max idx {r['max_anomaly_index']:.2f} "
              f"pass {r['pass']}  {r['seconds']:.0f} s", file=sys.stderr, flush=True)
    if pool is not None:
        pool.close()
        pool.join()
    summary = summarise(rows)
    result = {
        "what": "audit detect (Neural Cleanse, defaults: 40 epochs x 8 steps, candidates: anomaly "
                f"index of the log mask norms > {DETECT_THRESHOLD:g} on the small side, confirmed by "
                "two restarts, transfer to held-out images and clean reference classifiers that "
                "ignore the triggers; l1_scale: Neural Cleanse's index of the norms, > "
                f"{ANOMALY_THRESHOLD:g}, unconfirmed) on 1000 stratified MNIST test images per model, "
                "the rest of the test set held out (CIFAR-10: its JPEG-decoded test set; digits and wide-zoo draws: "
                "their own test images, a fifth held out)",
        "data": f"MNIST t10k: detect's stratified sample (max_images={args.n_images}, seed="
                f"{args.seed}), the rest held out",
        "argv": sys.argv[1:], "torch_threads": args.threads, "workers": args.workers,
        "machine": info, "summary": summary,
        "models": rows,
        "total_seconds": round(time.perf_counter() - t_all, 1),
        "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {**common.portable(result), "commit": common.commit()}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(rows))
    print(f"\n{summary}\nwritten {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
