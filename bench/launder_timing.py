"""Wall time of a full 3-round `audit launder` of the paper's Table-5 MNIST model (target <= 120 s).

Usage: python bench/launder_timing.py ZOO_ENTRY_DIR   (an `audit zoo build --dataset mnist` folder)
Writes bench/results/launder_timing.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def main() -> None:
    from audit.data import Preprocess, load_dataset, stratified_subset
    from audit.graphs.model import AuditModel

    entry = Path(sys.argv[1])
    geo = dict(channels=1, height=28, width=28)
    train = load_dataset(SHARED / "mnist" / "train-images-idx3-ubyte.gz", **geo)
    sub = stratified_subset(train, 360, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "subset360.npz"
        np.savez(data, x=np.round(sub.x[:, 0] * 255).astype(np.uint8), y=sub.y)
        out = Path(tmp) / "laundered.onnx"
        cmd = ["audit", "launder", str(entry / "watermarked.onnx"), "--data", str(data), "-o", str(out),
               "--device", "cpu", "--quiet", "--report", str(Path(tmp) / "rep")]
        load_before = os.getloadavg()
        t = time.perf_counter()
        subprocess.run(cmd, check=True)
        seconds = time.perf_counter() - t
        load_after = os.getloadavg()
        report = json.loads((Path(tmp) / "rep" / "report.json").read_text())
        pp = Preprocess()
        test = load_dataset(SHARED / "mnist" / "t10k-images-idx3-ubyte.gz", **geo)
        trig = load_dataset(entry / "triggers", **geo)
        before, after = AuditModel.load(entry / "watermarked.onnx"), AuditModel.load(out)
        result = {
            "what": "audit launder, 3 rounds, Table-5 MNIST zoo model, 360 training images (0.6%)",
            "command": " ".join(cmd[:2] + ["<entry>/watermarked.onnx"] + cmd[3:]),
            "entry": str(entry), "seconds": round(seconds, 1), "target_seconds": 120,
            "pass": seconds <= 120, "load_average_before": load_before, "load_average_after": load_after,
            "rounds": [{"round": r["round"], "seconds": r["seconds"], "stopped": r["stopped"]}
                       for r in report["rounds"]],
            "test_acc": {"before": before.accuracy(test.x, test.y, pp), "after": after.accuracy(test.x, test.y, pp)},
            "wm_acc": {"before": before.accuracy(trig.x, trig.y, pp), "after": after.accuracy(trig.x, trig.y, pp)},
            "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
    dest = ROOT / "bench" / "results" / "launder_timing.json"
    dest.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
