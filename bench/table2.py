"""The paper's Table 2 and Figure 3, regenerated: laundering against five removal baselines.

For each watermark scheme of the zoo (Zhang et al. content / noise / unrelated, Adi et al.
abstract images), each method of `audit launder --method` and each subset size (a share of the
original training set, or one image per class), the watermarked zoo model is laundered from a
stratified subset (one per subset seed) and measured: test accuracy and watermark accuracy
before -> after (onnxruntime, on the written ONNX), the vanilla twin's watermark accuracy,
`audit verify`'s exact binomial p-value and verdict (alpha 0.01), and wall time. Laundering's
test and watermark accuracy after each round (torch mirror) give Figure 3.

Rows are kept in bench/results/table2.json under (dataset, scheme, method, size, seed), so
that runs of parts accumulate (`--resume` skips the rows already there); each row names the
commit it was measured at, and every run's command, commit and wall time is listed under "runs",
rewritten with every finished row, so that a run stopped part-way keeps what it measured. The
methods run on one subset (dataset, scheme, size, subset seed) are compared on one build of the
zoo model (each row names it: zoo_sha256): training is deterministic on one machine, not across
CPUs, so the builds are kept in bench/zoo and restored from there on any machine
(common.zoo_entry), and a run that would put a row beside rows of its subset measured on another
build stops with one line instead (a run of every method of the subset replaces them).
bench/results/figure3.png is drawn from the rows (matplotlib: `pip install -e ".[bench]"`);
docs/results.md's Table 2 by bench/results_doc.py.

MNIST: the paper's Table-5 net, 60,000 training images. CIFAR-10: the paper's Table-7 net
trained on what ../shared/data/cifar10 holds (the zoo's split of the 10,000 JPEG-decoded test
images: 8,000 to train on, from which the subsets are drawn, 2,000 to test on); its subsets are
shares of the 50,000 images of the full training set, as the paper's (0.6% = 300 images). BadNets
(`--dataset badnets`): the published BadNets MNIST model of ../shared/data, its watermark
accuracy the attack success on the stamped test images of other classes, with no vanilla
twin (no p-value).

Usage: python bench/table2.py --quick            (MNIST, 0.6%, subset seed 0: <= 30 min on 2 cores)
       python bench/table2.py [--dataset mnist|cifar10] [--schemes ...] [--methods ...]
                              [--sizes 1/class 0.6 1.2 6 10.8] [--seeds 0 1 2] [--workers 2]
                              [--resume]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402
import numpy as np  # noqa: E402

from audit.graphs.io import sha256_file  # noqa: E402

SCHEMES = ("content", "noise", "unrelated", "adi")
METHODS = ("laundering", "fine-tune", "prune", "fine-prune", "nc-unlearn", "i-bau")
#: subset size -> share of the original training set (None: one image per class)
SIZES = {"1/class": None, "0.6": 0.006, "1.2": 0.012, "6": 0.06, "10.8": 0.108}
FULL_TRAIN = {"mnist": 60_000, "cifar10": 50_000, "badnets": 60_000}
GEOMETRY = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32), "badnets": (1, 28, 28)}
ALPHA = 0.01


def subset_size(dataset: str, size: str, num_classes: int = 10) -> int:
    share = SIZES[size]
    return num_classes if share is None else int(round(share * FULL_TRAIN[dataset]))


def _task(job: dict) -> dict:
    """What a row launders and measures: the model, its preprocessing, training and test sets,
    the trigger set (labels: what the watermark or backdoor answers) and the vanilla rate on it
    (None for the BadNets model, whose attack success has no twin to compare with)."""
    from audit.data import Dataset, Preprocess, load_dataset
    from audit.graphs.model import AuditModel
    from audit.models_zoo.build import built_entry

    c, h, w = GEOMETRY[job["dataset"]]
    if job["dataset"] == "badnets":
        import launder_badnets as bn

        train, test = common.mnist("train"), common.mnist("test")
        keep = test.y != bn.TARGET
        trig = Dataset(x=bn.stamp(test.x[keep]), y=np.full(int(keep.sum()), bn.TARGET, np.int64),
                       source="BadNets-stamped MNIST test images")
        return {"model": AuditModel.load(bn.MODEL, device="cpu"), "train": train, "test": test,
                "trig": trig, "pp": Preprocess(scale=1 / 255, mean=(0.5,), std=(0.5,)),
                "vanilla_rate": None}
    entry = built_entry(job["zoo"])
    if job["dataset"] == "mnist":
        train, test = common.mnist("train"), common.mnist("test")
    else:   # the zoo's own split of the JPEG-decoded CIFAR-10 test images
        from audit.models_zoo.datasets import load_clean

        clean = load_clean(job["dataset"], common.SHARED)
        train, test = clean.train, clean.test
    trig = load_dataset(entry.triggers, channels=c, height=h, width=w)
    pp = Preprocess(**entry.meta["preprocess"])
    vanilla = AuditModel.load(entry.vanilla, device="cpu").accuracy(trig.x, trig.y, pp)
    return {"model": AuditModel.load(entry.watermarked, device="cpu"), "train": train,
            "test": test, "trig": trig, "pp": pp, "vanilla_rate": vanilla}


def run_row(job: dict) -> dict:
    """One (dataset, scheme, method, size, seed) row, in a worker with one torch thread."""
    common.set_threads(1)
    import torch

    from audit.data import stratified_subset
    from audit.methods import remove
    from audit.settings import LaunderConfig
    from audit.verify import verify_predictions

    task = _task(job)
    wm, train, test, trig, pp = (task[k] for k in ("model", "train", "test", "trig", "pp"))
    vanilla_rate = task["vanilla_rate"]
    sub = stratified_subset(train, job["n"], seed=job["seed"])
    per_round = []

    @torch.no_grad()
    def acc(forward, ds) -> float:
        pred = np.concatenate([forward(torch.from_numpy(ds.x[i:i + 500])).argmax(1).numpy()
                               for i in range(0, len(ds), 500)])
        return float((pred == ds.y).mean())

    def on_round(r, forward):
        per_round.append({"round": r.round, "test_acc": acc(forward, test),
                          "wm_acc": acc(forward, trig), "flagged": r.recovery["flagged"]})

    cfg = LaunderConfig(seed=job["seed"], device="cpu", method=job["method"])
    t = time.perf_counter()
    res = remove(wm, sub, pp, cfg, on_round=on_round)
    seconds = time.perf_counter() - t
    after = res.model
    v = None if vanilla_rate is None else \
        verify_predictions(after.predict(trig.x, pp), trig.y, vanilla_rate, alpha=ALPHA)
    row = {k: job[k] for k in ("dataset", "scheme", "method", "size", "seed")}
    row.update(
        n=len(sub), share=len(sub) / FULL_TRAIN[job["dataset"]],
        test_acc_before=wm.accuracy(test.x, test.y, pp), test_acc_after=after.accuracy(test.x, test.y, pp),
        wm_acc_before=wm.accuracy(trig.x, trig.y, pp), wm_acc_after=after.accuracy(trig.x, trig.y, pp),
        vanilla_wm_acc=vanilla_rate, n_trigger=len(trig), p_value=v and v.p_value,
        demonstrated=v and v.demonstrated, seconds=round(seconds, 1), rounds=per_round,
        best_round=res.best_round, note=(res.baseline or {}).get("note"),
        zoo_sha256=job.get("zoo_sha256"), commit=job["commit"])
    return row


def key(r: dict) -> str:
    return f"{r['dataset']}/{r['scheme']}/{r['method']}/{r['size']}/{r['seed']}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with --quick resolved to its data set, size and seed."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="MNIST, 0.6%%, subset seed 0, every "
                    "scheme and method")
    ap.add_argument("--dataset", default="mnist", choices=tuple(FULL_TRAIN))
    ap.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=SCHEMES,
                    help="zoo schemes (the BadNets data set has its one model)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=tuple(SIZES))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--workers", type=int, default=2, help="rows run in parallel, one torch "
                    "thread each")
    ap.add_argument("--resume", action="store_true", help="skip the rows table2.json already holds")
    args = ap.parse_args(argv)
    if args.quick:
        args.dataset, args.sizes, args.seeds = "mnist", ["0.6"], [0]
    return args


def main() -> None:
    args = parse_args()
    if args.dataset == "cifar10":
        common.need_shared(common.SHARED / "cifar10")
    else:
        common.need_shared(common.MNIST_TRAIN, common.MNIST_TEST)
    if args.dataset == "badnets":
        args.schemes = ["badnets"]
    t0 = time.perf_counter()
    commit = common.commit()
    jobs, zoo_info = [], {}
    for scheme in args.schemes:
        zoo = None
        if scheme != "badnets":
            entry = common.zoo_entry(args.dataset, scheme)[0]
            zoo = str(entry.out_dir)
            zoo_info[f"{args.dataset}/{scheme}"] = {
                "test_acc": entry.test_acc, "wm_acc": entry.wm_acc, "timings": entry.timings,
                "sha256": sha256_file(entry.watermarked)}
        sha = zoo_info[f"{args.dataset}/{scheme}"]["sha256"] if zoo else None
        for size in args.sizes:
            for seed in args.seeds:
                for method in args.methods:
                    jobs.append({"dataset": args.dataset, "scheme": scheme, "method": method,
                                 "size": size, "seed": seed, "zoo": zoo, "zoo_sha256": sha,
                                 "n": subset_size(args.dataset, size), "commit": commit})
    jobs.sort(key=lambda j: (-j["n"], j["method"] != "laundering"))   # longest first
    result = common.RESULTS / "table2.json"
    old = json.loads(result.read_text()) if result.is_file() else {}
    if args.resume:
        done = {key(r) for r in old.get("rows", [])}
        todo = [j for j in jobs if key(j) not in done]
        print(f"--resume: {len(jobs) - len(todo)} rows already in table2.json, {len(todo)} to run",
              flush=True)
        jobs = todo
    same_builds(old, zoo_info, jobs)   # the methods of one subset are compared on one zoo build
    # the run's record, rewritten with every row, so that a run stopped part-way keeps its rows
    run = {"argv": sys.argv[1:], "commit": commit, "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "rows": 0, "workers": args.workers, "seconds": 0.0, "machine": common.machine()}
    with ProcessPoolExecutor(args.workers, mp_context=mp.get_context("spawn")) as pool:
        futs = [pool.submit(run_row, j) for j in jobs]
        for f in as_completed(futs):
            r = f.result()
            run.update(rows=run["rows"] + 1, seconds=round(time.perf_counter() - t0, 1))
            path = common.update_result("table2.json", lambda old, r=r: merged(old, r, run, zoo_info))
            print(f"{key(r)}: test {r['test_acc_before']:.4f} -> {r['test_acc_after']:.4f}, wm "
                  f"{r['wm_acc_before']:.4f} -> {r['wm_acc_after']:.4f} (vanilla "
                  f"{r['vanilla_wm_acc']}), p {r['p_value']}, {r['seconds']:.0f} s", flush=True)
    if not jobs:
        return
    print(f"\n{run['rows']} rows in {run['seconds'] / 60:.1f} min; wrote {path}")
    try:
        print(f"wrote {figure3(common.RESULTS / 'table2.json')}")
    except ImportError:
        print("figure3.png not drawn: matplotlib is missing (pip install -e \".[bench]\")")


def _record_id(rec: dict, by_sha: bool) -> tuple:
    """A zoo record's identity: its sha256, or its test and watermark accuracies."""
    if by_sha:
        return ("sha256", rec.get("sha256"))
    return ("acc", json.dumps([rec.get("test_acc"), rec.get("wm_acc")], sort_keys=True))


def build_of(row: dict, zoo: dict) -> tuple:
    """The zoo build a row was measured on: its zoo_sha256, or for rows that do not record one,
    the sha256 (else the test and watermark accuracies) of table2.json's record of its model."""
    if row.get("zoo_sha256"):
        return ("sha256", row["zoo_sha256"])
    rec = zoo.get(f"{row['dataset']}/{row['scheme']}", {})
    return _record_id(rec, bool(rec.get("sha256")))


def same_builds(old: dict, current: dict, jobs: list[dict]) -> None:
    """Exit with one line when a job would sit beside a kept row of its (dataset, scheme, subset
    size, subset seed) measured on another build of the zoo model: the methods run on one subset
    are compared on the same models. A run that measures every row of such a subset again
    (`--quick` on a new machine's build) replaces them; bench/zoo keeps the builds, so that any
    machine can continue a run."""
    if not jobs:
        return
    redone = {key(j) for j in jobs}
    kept = {}
    for r in old.get("rows", []):
        if r["dataset"] != "badnets" and key(r) not in redone:
            kept.setdefault((r["dataset"], r["scheme"], r["size"], r["seed"]),
                            build_of(r, old.get("zoo", {})))
    for j in jobs:
        name = f"{j['dataset']}/{j['scheme']}"
        was = kept.get((j["dataset"], j["scheme"], j["size"], j["seed"]))
        if was is None or name not in current:
            continue
        if _record_id(current[name], was[0] == "sha256") != was:
            size = j["size"] if j["size"] == "1/class" else f"{j['size']}%"
            sys.exit(f"table2.py: the zoo model {name} is not the build table2.json's {size} "
                     f"subset-seed-{j['seed']} rows were measured on; restore that build into "
                     "bench/zoo (git), or run every method of that subset again on this one")


def merged(old: dict, row: dict, run: dict, zoo_info: dict) -> dict:
    """table2.json with `row` added (replacing a row of the same key) and `run`'s record added
    or brought up to date; only the runs some kept row comes from are listed. "zoo" holds the
    latest build of each model, "builds" every build some run used (by sha256)."""
    kept = {key(r): r for r in old.get("rows", [])}
    kept[key(row)] = row
    runs = [r for r in old.get("runs", [])
            if (r.get("started"), r["commit"]) != (run["started"], run["commit"])] + [dict(run)]
    runs = [r for r in runs if r["commit"] in {row["commit"] for row in kept.values()}]
    return {"what": "Table 2: laundering and removal baselines per watermark scheme, subset "
                    "size and subset seed (zoo models; audit launder --method defaults)",
            "alpha": ALPHA, "sizes": dict(SIZES), "zoo": {**old.get("zoo", {}), **zoo_info},
            "builds": {**old.get("builds", {}),
                       **{z["sha256"]: {"model": name, **{k: v for k, v in z.items()
                                                          if k != "sha256"}}
                          for name, z in zoo_info.items()}},
            "full_train": FULL_TRAIN, "runs": runs, "rows": sorted(kept.values(), key=key)}


def figure3(result: Path) -> Path:
    """Laundering's watermark (solid) and test (dotted) accuracy against rounds, one colour per
    subset size (mean over subset seeds), one column per scheme, one figure row per data set.
    A curve ends where laundering stopped early."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [r for r in json.loads(result.read_text())["rows"] if r["method"] == "laundering"]
    datasets = [d for d in ("mnist", "cifar10") if any(r["dataset"] == d for r in rows)]
    fig, axes = plt.subplots(len(datasets), len(SCHEMES), figsize=(4 * len(SCHEMES), 3.2 * len(datasets)),
                             squeeze=False, sharey=True)
    for i, ds in enumerate(datasets):
        for j, scheme in enumerate(SCHEMES):
            ax = axes[i][j]
            ax.set_title(f"{ds} {scheme}")
            for n, size in enumerate(SIZES):
                sel = [r for r in rows if (r["dataset"], r["scheme"], r["size"]) == (ds, scheme, size)]
                if not sel:
                    continue
                for what, style in (("wm_acc", "-"), ("test_acc", ":")):
                    curve = [np.mean([r[f"{what}_before"] for r in sel])]
                    for k in range(1, 4):
                        vals = [r["rounds"][k - 1][what] for r in sel if len(r["rounds"]) >= k]
                        if len(vals) == len(sel):
                            curve.append(np.mean(vals))
                    ax.plot(range(len(curve)), 100 * np.array(curve), style, marker="o",
                            color=f"C{n}", label=f"{size}{'' if size == '1/class' else '%'} "
                                                 f"{what[:-4]}")
            ax.set_xticks(range(4))
            ax.set_xlabel("round")
            if j == 0:
                ax.set_ylabel("accuracy %")
            if ax.lines:
                ax.legend(fontsize=6)
    fig.tight_layout()
    out = result.parent / "figure3.png"
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(out)
    return out


if __name__ == "__main__":
    main()
