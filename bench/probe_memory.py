"""Peak memory of the ORT probe: mean activations of every probe layer, 10,000 vs 100 images.

The model is the paper's MNIST network (Table 5: Conv 32 5x5 ReLU, MaxPool 2, Conv 16 5x5
ReLU, MaxPool 2, Dense 512 ReLU, Dense 10), randomly initialised and exported with the
TorchScript exporter at opset 13. Each image count runs in its own subprocess, so the peaks
(getrusage ru_maxrss, a high-water mark) do not mix. Stages inside a worker:

  after imports + model load  ->  after data load  ->  after mean_activations

The parent process never imports torch (a child's ru_maxrss starts at its parent's peak on
Linux); VmHWM from /proc/self/status is recorded as a cross-check.

`total` is the peak of the whole worker (data loading counts), `probe_delta` is how far the
probe pushed the peak above what loading had already reached. Acceptance: the 10,000-image
peak is within 300 MB of the 100-image peak.

Usage: python bench/probe_memory.py [--batch-size 256]
Writes bench/results/probe_memory.json, with the commit. Without shared/data beside the
repository, MNIST-shaped random images are used instead (the JSON says so).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "data"
MNIST_TEST = SHARED / "mnist" / "t10k-images-idx3-ubyte.gz"
RESULTS = HERE / "results"
LIMIT_MB = 300.0


def build_paper_mnist(path: Path, seed: int = 0) -> Path:
    """Export the Table-5 MNIST net (random init) with the TorchScript exporter, opset 13."""
    import warnings

    import torch
    from torch import nn

    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 32, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 512), nn.ReLU(), nn.Linear(512, 10),
    ).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 1, 28, 28),), str(path), dynamo=False,
                          opset_version=13, input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    return path


def load_images(n: int):
    """(x01 [n,1,28,28] float32, source description)."""
    import numpy as np

    if MNIST_TEST.is_file():
        from audit.data import load_dataset

        ds = load_dataset(MNIST_TEST, channels=1, height=28, width=28, num_classes=10, limit=n)
        return ds.x, f"MNIST test set ({MNIST_TEST.name}), first {len(ds)} images"
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 1, 28, 28), dtype=np.uint8).astype(np.float32) / 255
    return x, f"synthetic MNIST-shaped uint8 noise ({n} images): shared/data not present"


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def current_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def hwm_mb() -> float:
    """VmHWM of this process's own address space (cross-check of ru_maxrss)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(model: str, n: int, batch_size: int) -> dict:
    from audit.data import Preprocess
    from audit.graphs.model import AuditModel
    from audit.graphs.probe import find_probe_layers, mean_activations

    am = AuditModel.load(model, device="cpu")
    layers = find_probe_layers(am.normalised, am.original)
    pp = Preprocess(scale=1 / 255)
    stages = {"after_model_load": (peak_mb(), current_mb(), hwm_mb())}
    x, source = load_images(n)
    stages["after_data_load"] = (peak_mb(), current_mb(), hwm_mb())
    t = time.perf_counter()
    means = mean_activations(am, x, pp, layers, batch_size=batch_size)
    seconds = time.perf_counter() - t
    stages["after_probe"] = (peak_mb(), current_mb(), hwm_mb())
    return {
        "n": len(x), "data": source, "batch_size": batch_size,
        "layers": [{"name": l.name, "op": l.op, "units": l.units, "activation": l.activation}
                   for l in layers],
        "units_total": int(sum(v.size for v in means.values())),
        "probe_seconds": round(seconds, 3),
        "peak_rss_mb": {k: round(v[0], 1) for k, v in stages.items()},
        "current_rss_mb": {k: round(v[1], 1) for k, v in stages.items()},
        "vmhwm_mb": {k: round(v[2], 1) for k, v in stages.items()},
        "total_peak_mb": round(stages["after_probe"][0], 1),
        "probe_delta_mb": round(stages["after_probe"][0] - stages["after_data_load"][0], 1),
        "data_delta_mb": round(stages["after_data_load"][0] - stages["after_model_load"][0], 1),
    }


def machine() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    def ver(dist: str) -> str | None:
        try:
            return version(dist)
        except PackageNotFoundError:
            return None

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"platform": platform.platform(), "cpu": cpu, "cpus": os.cpu_count(),
            "python": platform.python_version(), "numpy": ver("numpy"),
            "onnxruntime": ver("onnxruntime-gpu") or ver("onnxruntime"), "torch": ver("torch"),
            "load_average_at_start": [round(v, 2) for v in os.getloadavg()]}


def _commit() -> str:
    sys.path.insert(0, str(HERE))
    import common  # numpy only: the parent still never imports torch

    return common.commit()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--out", type=Path, default=RESULTS / "probe_memory.json")
    ap.add_argument("--worker", nargs=2, metavar=("MODEL", "N"), help=argparse.SUPPRESS)
    ap.add_argument("--build", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.build:
        build_paper_mnist(args.build)
        return 0
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.batch_size)))
        return 0

    info = machine()
    with tempfile.TemporaryDirectory() as tmp:
        # The parent stays small (no torch import): on Linux a child's ru_maxrss starts from
        # its parent's peak at fork time, which would hide the numbers we measure.
        model = Path(tmp) / "paper_mnist.onnx"
        subprocess.run([sys.executable, __file__, "--build", str(model)], check=True)
        runs = {}
        for n in (100, args.batch_size, 10000):
            proc = subprocess.run([sys.executable, __file__, "--worker", str(model), str(n),
                                   "--batch-size", str(args.batch_size)],
                                  capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                sys.stderr.write(proc.stderr)
                return 1
            runs[n] = json.loads(proc.stdout.strip().splitlines()[-1])
    small, big = runs[100], runs[10000]
    diff = big["total_peak_mb"] - small["total_peak_mb"]
    result = {
        "what": "peak RSS of mean_activations over all probe layers, one subprocess per size",
        "model": "paper Table-5 MNIST net (Conv32 5x5, MaxPool2, Conv16 5x5, MaxPool2, "
                 "Dense512, Dense10), random init, TorchScript exporter opset 13",
        "synthetic_data": "synthetic" in big["data"],
        "runs": {str(n): r for n, r in runs.items()},
        "peak_difference_mb": round(diff, 1),
        "peak_difference_10000_vs_one_batch_mb": round(
            big["total_peak_mb"] - runs[args.batch_size]["total_peak_mb"], 1),
        "probe_delta_difference_mb": round(big["probe_delta_mb"] - small["probe_delta_mb"], 1),
        "limit_mb": LIMIT_MB,
        "pass": diff <= LIMIT_MB,
        "note": "ru_maxrss is a high-water mark: probe_delta is what the probe added above the "
                "peak that model and data loading had already reached. 100 images run as one "
                "batch of 100, so its activations are smaller than a full batch; the run of "
                "exactly one full batch shows what is left of the 10,000-image difference: "
                "the images themselves (10,000 x 28 x 28 float32 = 31 MB, plus loading "
                "buffers) and onnxruntime's arena settling.",
        "machine": info,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "commit": _commit(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"peak RSS: 100 images {small['total_peak_mb']:.1f} MB, 10,000 images "
          f"{big['total_peak_mb']:.1f} MB (difference {diff:.1f} MB, limit {LIMIT_MB:.0f} MB); "
          f"probe-only delta {small['probe_delta_mb']:.1f} / {big['probe_delta_mb']:.1f} MB "
          f"-> {'PASS' if result['pass'] else 'FAIL'}; wrote {args.out}")
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
