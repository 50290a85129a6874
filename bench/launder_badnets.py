"""Launder the published BadNets MNIST model with 360 clean MNIST training images (0.6%).

Model: shared/data/backdoored/badnets_mnist.onnx (softmax output; preprocessing u8/255,
mean 0.5, std 0.5). Trigger: u8 pixels [23:28, 23:28] = 255 on the 10k MNIST test images
whose label is not 1; target 1. Acceptance: attack success <= 2% and clean accuracy
>= 97% on the full test set after laundering.

Clean accuracy and attack success are measured before, after every round (through the torch
module laundering works on) and on the written ONNX (onnxruntime). Each (config, seed) run is
stored under its config label in bench/results/launder_badnets.json with the commit it was
measured at; runs of other labels already in the file are kept, so option sweeps accumulate.

Usage: python bench/launder_badnets.py [--seeds 0 1 2] [--label default] [launder options]
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

MODEL = common.SHARED / "backdoored" / "badnets_mnist.onnx"
TARGET = 1
SUBSET = 360


def stamp(x01):
    out = x01.copy()
    out[:, :, 23:28, 23:28] = 1.0
    return out


def add_launder_options(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dense-threshold", default=None)
    ap.add_argument("--conv-threshold", default=None)
    ap.add_argument("--epochs", type=int, default=None, help="retraining epochs per round")
    ap.add_argument("--lr", type=float, default=None, help="retraining lr (default: auto)")
    ap.add_argument("--distill", type=float, default=None)
    ap.add_argument("--augment", action="store_true")
    ap.add_argument("--nc-epochs", type=int, default=None)
    ap.add_argument("--layers", default=None)
    ap.add_argument("--ood-share", type=float, default=None,
                    help="LaunderConfig.ood_share (extra out-of-distribution images)")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="any LaunderConfig field, nc.FIELD or retrain.FIELD (VALUE as JSON)")


def launder_config(args, seed: int):
    from dataclasses import replace

    from audit.launder import LaunderConfig

    cfg = LaunderConfig(rounds=args.rounds, seed=seed, device="cpu")
    top = {"dense_threshold": args.dense_threshold or None,
           "conv_threshold": args.conv_threshold or None, "layers": args.layers or None,
           "ood_share": args.ood_share}
    cfg = replace(cfg, **{k: v for k, v in top.items() if v is not None})
    if args.nc_epochs:
        cfg = replace(cfg, nc=replace(cfg.nc, epochs=args.nc_epochs))
    rt = {"epochs": args.epochs or None, "lr": args.lr or None, "distill": args.distill,
          "augment": True if args.augment else None}
    cfg = replace(cfg, retrain=replace(cfg.retrain, **{k: v for k, v in rt.items() if v is not None}))
    for item in args.set:
        cfg = common.set_field(cfg, item)
    return cfg


def torch_scores(forward, x01, batch_size: int = 1000):
    import numpy as np
    import torch

    with torch.no_grad():
        return np.concatenate([forward(torch.from_numpy(x01[i:i + batch_size])).argmax(1).numpy()
                               for i in range(0, len(x01), batch_size)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--label", default="default", help="name of this configuration in the JSON")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's; use 1 on a busy machine)")
    add_launder_options(ap)
    args = ap.parse_args()
    common.need_shared(MODEL, common.MNIST_TRAIN, common.MNIST_TEST)
    common.set_threads(args.threads)

    from audit.data import Preprocess, stratified_subset
    from audit.graphs.io import save_model
    from audit.graphs.model import AuditModel
    from audit.launder import launder_model

    pp = Preprocess(scale=1 / 255, mean=(0.5,), std=(0.5,))
    train, test = common.mnist("train"), common.mnist("test")
    keep = test.y != TARGET
    stamped = stamp(test.x[keep])
    am = AuditModel.load(MODEL, device="cpu")
    before = {"clean_acc": am.accuracy(test.x, test.y, pp),
              "asr": float((am.predict(stamped, pp) == TARGET).mean())}
    print(f"before: clean {before['clean_acc']:.4f}  ASR {before['asr']:.4f}", flush=True)

    runs = []
    machine_before = common.machine()
    for seed in args.seeds:
        sub = stratified_subset(train, SUBSET, seed=seed)
        cfg = launder_config(args, seed)
        per_round = []

        def on_round(r, forward):
            clean = float((torch_scores(forward, test.x) == test.y).mean())
            asr = float((torch_scores(forward, stamped) == TARGET).mean())
            per_round.append({**common.round_summary(r), "clean_acc": clean, "asr": asr})
            print(f"  seed {seed} round {r.round}: flagged {r.recovery['flagged']} "
                  f"reset {sum(r.units_reset.values())} subset {r.subset_accuracy:.4f} "
                  f"clean {clean:.4f} ASR {asr:.4f}", flush=True)

        load0 = common.loadavg()
        t = time.perf_counter()
        res = launder_model(am, sub, pp, cfg, on_round=on_round)
        seconds = time.perf_counter() - t
        for r in res.rounds:  # rounds stopped early have no on_round call
            if r.stopped:
                per_round.append({**common.round_summary(r), "clean_acc": None, "asr": None})
        with tempfile.TemporaryDirectory() as tmp:
            out = save_model(res.model.original, Path(tmp) / "laundered.onnx", inputs=(MODEL,))
            lam = AuditModel.load(out, device="cpu")
            after = {"clean_acc": lam.accuracy(test.x, test.y, pp),
                     "asr": float((lam.predict(stamped, pp) == TARGET).mean())}
        ok = after["asr"] <= 0.02 and after["clean_acc"] >= 0.97
        runs.append({"seed": seed, "subset_size": len(sub), "subset_share": len(sub) / len(train),
                     "before": before, "after": after, "pass": ok, "best_round": res.best_round,
                     "stop_reason": res.stop_reason, "rounds": per_round,
                     "seconds": round(seconds, 1), "loadavg_before": load0,
                     "loadavg_after": common.loadavg()})
        print(f"seed {seed}: clean {before['clean_acc']:.4f} -> {after['clean_acc']:.4f}, "
              f"ASR {before['asr']:.4f} -> {after['asr']:.4f}, best round {res.best_round}, "
              f"{seconds:.0f} s -> {'PASS' if ok else 'FAIL'}", flush=True)

    def update(old: dict) -> dict:
        configs = old.get("configs", {})
        configs[args.label] = {"commit": common.commit(), "parameters": cfg.to_dict(),
                               "argv": sys.argv[1:],
                               "machine": machine_before, "runs": runs,
                               "all_pass": all(r["pass"] for r in runs)}
        return {"what": "BadNets MNIST (shared/data/backdoored/badnets_mnist.onnx) laundered "
                        f"with {SUBSET} stratified MNIST training images",
                "acceptance": {"asr_max": 0.02, "clean_acc_min": 0.97},
                "model": str(MODEL),
                "trigger": "u8 pixels [23:28, 23:28] = 255 on test images with label != 1; "
                           "target 1",
                "configs": configs}

    path = common.update_result("launder_badnets.json", update)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
