"""Paper Table 2 on MNIST: launder Zhang content / noise / unrelated and Adi watermarks.

For each scheme the zoo entry (paper Table 5 architecture, watermarked model + vanilla twin,
trained on shared/data/mnist) is built once into the zoo cache ($AUDIT_BENCH_ZOO, see
common.py) and reused. It is laundered with 360 stratified training images (0.6% of
the 60,000) and at most 3 rounds. Acceptance: watermark accuracy after <= the vanilla
model's on the same trigger set + 2 points, and test accuracy within 2 points of the
watermarked model's. Test and watermark accuracy are also measured after every round (torch
module); the final numbers are onnxruntime's on the written ONNX.

Rows are stored under their config label in bench/results/launder_mnist.json, with the commit
they were measured at (rows of other labels already in the file are kept), and printed as a
markdown table. The default label is `default` for subset seed 0 and `default_seed<N>` else.

Usage: python bench/launder_mnist.py [--schemes content noise unrelated adi] [--seed 0]
       [--label LABEL] [--threads 1] [launder options, as bench/launder_badnets.py]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402
from launder_badnets import add_launder_options, launder_config, torch_scores  # noqa: E402

SUBSET = 360
SCHEMES = ("content", "noise", "unrelated", "adi")


def table(rows: list[dict]) -> str:
    head = ("| scheme | test acc before → after | wm acc before → after | vanilla wm acc | "
            "data used | rounds (best) | seconds | pass |\n|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r['scheme']} | {common.pct(r['test_acc_before'])} → "
            f"{common.pct(r['test_acc_after'])} | {common.pct(r['wm_acc_before'])} → "
            f"{common.pct(r['wm_acc_after'])} | {common.pct(r['vanilla_wm_acc'])} | "
            f"{r['subset_size']} ({100 * r['subset_share']:.1f}%) | {r['rounds_run']} "
            f"({r['best_round']}) | {r['seconds']:.0f} | {'yes' if r['pass'] else '**no**'} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=SCHEMES)
    ap.add_argument("--seed", type=int, default=0, help="subset and laundering seed")
    ap.add_argument("--label", default=None,
                    help="name of this configuration in the JSON (default: default[_seed<N>])")
    ap.add_argument("--threads", type=int, default=None)
    add_launder_options(ap)
    args = ap.parse_args()
    args.label = args.label or ("default" if args.seed == 0 else f"default_seed{args.seed}")
    common.need_shared(common.MNIST_TRAIN, common.MNIST_TEST)
    common.set_threads(args.threads)

    from audit.data import Preprocess, load_dataset, stratified_subset
    from audit.graphs.io import save_model
    from audit.graphs.model import AuditModel
    from audit.launder import launder_model

    train, test = common.mnist("train"), common.mnist("test")
    sub = stratified_subset(train, SUBSET, seed=args.seed)
    machine = common.machine()
    rows = []
    for scheme in args.schemes:
        entry, built = common.zoo_entry("mnist", scheme)
        pp = Preprocess(**entry.meta["preprocess"])
        trig = load_dataset(entry.triggers, channels=1, height=28, width=28)
        wm = AuditModel.load(entry.watermarked, device="cpu")
        van = AuditModel.load(entry.vanilla, device="cpu")
        vanilla_rate = van.accuracy(trig.x, trig.y, pp)
        test_before, wm_before = wm.accuracy(test.x, test.y, pp), wm.accuracy(trig.x, trig.y, pp)
        cfg = launder_config(args, args.seed)
        per_round = []

        def on_round(r, forward, trig=trig):
            t_acc = float((torch_scores(forward, test.x) == test.y).mean())
            w_acc = float((torch_scores(forward, trig.x) == trig.y).mean())
            per_round.append({**common.round_summary(r), "test_acc": t_acc, "wm_acc": w_acc})
            print(f"  {scheme} round {r.round}: flagged {r.recovery['flagged']} reset "
                  f"{sum(r.units_reset.values())} subset {r.subset_accuracy:.4f} "
                  f"test {t_acc:.4f} wm {w_acc:.4f}", flush=True)

        load0 = common.loadavg()
        t = time.perf_counter()
        res = launder_model(wm, sub, pp, cfg, on_round=on_round)
        seconds = time.perf_counter() - t
        for r in res.rounds:
            if r.stopped:
                per_round.append({**common.round_summary(r), "test_acc": None, "wm_acc": None})
        with tempfile.TemporaryDirectory() as tmp:
            out = save_model(res.model.original, Path(tmp) / "laundered.onnx",
                             inputs=(entry.watermarked,))
            lam = AuditModel.load(out, device="cpu")
            test_after, wm_after = lam.accuracy(test.x, test.y, pp), lam.accuracy(trig.x, trig.y, pp)
        ok_wm = wm_after <= vanilla_rate + 0.02
        ok_test = test_before - test_after <= 0.02
        row = {"scheme": scheme, "test_acc_before": test_before, "test_acc_after": test_after,
               "wm_acc_before": wm_before, "wm_acc_after": wm_after,
               "vanilla_wm_acc": vanilla_rate, "vanilla_test_acc": entry.test_acc["vanilla"],
               "n_trigger": len(trig), "subset_size": len(sub),
               "subset_share": len(sub) / len(train), "rounds_run": len(res.rounds),
               "best_round": res.best_round, "stop_reason": res.stop_reason,
               "seconds": round(seconds, 1), "pass_wm": ok_wm, "pass_test": ok_test,
               "pass": ok_wm and ok_test, "rounds": per_round, "zoo": str(entry.out_dir),
               "zoo_built_now": built, "loadavg_before": load0, "loadavg_after": common.loadavg()}
        rows.append(row)
        print(f"{scheme}: test {test_before:.4f} -> {test_after:.4f}, wm {wm_before:.4f} -> "
              f"{wm_after:.4f} (vanilla {vanilla_rate:.4f}), {seconds:.0f} s -> "
              f"{'PASS' if row['pass'] else 'FAIL'}", flush=True)

    merged: list[dict] = []

    def update(old: dict) -> dict:
        configs = old.get("configs", {})
        prev = {r["scheme"]: r for r in configs.get(args.label, {}).get("rows", [])}
        prev.update({r["scheme"]: r for r in rows})   # a run of some schemes keeps the others
        merged[:] = [prev[s] for s in SCHEMES if s in prev]
        configs[args.label] = {"commit": common.commit(), "parameters": cfg.to_dict(),
                               "argv": sys.argv[1:], "seed": args.seed, "machine": machine, "rows": merged,
                               "all_pass": all(r["pass"] for r in merged),
                               "table": table(merged)}
        return {"what": f"MNIST zoo (paper Table 5 net) laundered with {SUBSET} stratified "
                        "training images (0.6%), <= 3 rounds",
                "acceptance": {"wm_acc_max": "vanilla + 0.02", "test_acc_drop_max": 0.02},
                "configs": configs}

    path = common.update_result("launder_mnist.json", update)
    print()
    print(table(merged))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
