"""`audit scan` throughput: models per minute with 1 and 2 worker processes and with Ray.

The models are the first N watermarked models of the wide zoo's dev split (digits size, built
into $AUDIT_BENCH_ZOO/wide when missing), copied into one folder, with a policy that gives each
its own preprocessing and clean test images. Each mode scans the same folder from scratch
(`Scan.run`; Ray: a local runtime with as many CPUs as workers) and must give the same verdicts.

Usage: python bench/scan.py [--models 8] [--workers 1 2] [--no-ray]
Writes bench/results/scan.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402


def registry(n: int, folder: Path) -> Path:
    """n wide-zoo models in folder/models and folder/policy.toml; returns the policy."""
    from audit.models_zoo.train import torch_threads
    from audit.models_zoo.wide import build_draw, make_draw

    (folder / "models").mkdir(parents=True)
    rules = []
    with torch_threads(1):
        for seed in range(n):
            e = build_draw(make_draw(seed), common.ZOO_CACHE / "wide")
            name = f"draw-{seed}.onnx"
            shutil.copy(e.watermarked, folder / "models" / name)
            pp = e.meta["preprocess"]
            rules.append(f'[[models]]\nglob = "{name}"\ndata = "{e.data_dir / "test.npz"}"\n'
                         f"scale = {pp['scale']}\nmean = {pp['mean']}\nstd = {pp['std']}\n")
    policy = folder / "policy.toml"
    policy.write_text("\n".join(rules))
    return policy


def run_mode(folder: Path, policy: Path, workers: int, ray: bool) -> dict:
    from audit.scan import Scan

    job = Scan.prepare([str(folder / "models")], str(policy))
    t = time.perf_counter()
    if ray:
        import ray as ray_

        ray_.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
                  configure_logging=False)
        try:
            records = job.run(ray_address="local")
        finally:
            ray_.shutdown()
    else:
        records = job.run(workers=workers)
    seconds = time.perf_counter() - t
    return {"mode": f"ray ({workers} CPUs)" if ray else f"{workers} worker process(es)",
            "workers": workers, "ray": ray, "models": len(records), "seconds": round(seconds, 1),
            "models_per_minute": round(60 * len(records) / seconds, 2),
            "verdicts": {Path(r["path"]).name: r["verdict"] for r in records}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=8)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "scan.json")
    args = ap.parse_args()
    from probe_memory import machine

    with tempfile.TemporaryDirectory(prefix="audit-bench-scan-") as tmp:
        folder = Path(tmp)
        policy = registry(args.models, folder)
        modes = [(w, False) for w in args.workers]
        if not args.no_ray:
            modes.append((max(args.workers), True))
        rows = []
        for workers, ray in modes:
            r = run_mode(folder, policy, workers, ray)
            rows.append(r)
            print(f"{r['mode']:<24} {r['models']} models in {r['seconds']:.0f} s: "
                  f"{r['models_per_minute']:.2f} models/min", flush=True)
    same = all(r["verdicts"] == rows[0]["verdicts"] for r in rows)
    result = {"what": "audit scan of the wide zoo's first dev-split watermarked models (inspect, "
                      "detect with confirmation, default settings) from scratch in each mode",
              "models": args.models, "same_verdicts_in_every_mode": same, "rows": rows,
              "machine": machine(), "load_average_at_end": [round(v, 2) for v in os.getloadavg()]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**common.portable(result), "commit": common.commit()}, indent=2) + "\n")
    print(f"written {args.out}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
