"""Throughput of the ORT probe against torch forward hooks, same model, same 10,000 images.

Model: the paper's Table-5 MNIST net (see probe_memory.py), TorchScript exporter, opset 13.
ORT side: audit.graphs.probe.mean_activations (exposed tensors, streamed per-unit means).
Torch side: the same ONNX graph converted with audit.converters.to_torch, forward hooks on
the Conv2d/Linear modules computing the same per-unit means (the layer's activation applied
in the hook when the probe reads the tensor after it). Both include the preprocessing of
each batch; both use 2 threads. The two results are checked to agree before timing counts.

Usage: python bench/probe_throughput.py [--batch-size 256] [--repeats 3]
Writes bench/results/probe_throughput.json, with the commit.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402
from probe_memory import RESULTS, build_paper_mnist, load_images, machine  # noqa: E402

THREADS = 2


def torch_probe(tm, am, x01, pp, layers, batch_size: int) -> dict:
    """Per-unit means of each probe layer through forward hooks on the torch module."""
    import numpy as np
    import torch

    acts = {"Relu": torch.relu, None: lambda t: t}
    sums = {l.name: None for l in layers}
    counts = {l.name: 0 for l in layers}
    hooks = []
    for layer in layers:
        mod = tm.layer_module(layer.name)
        if mod is None or layer.activation not in acts:
            raise RuntimeError(f"no torch module / unsupported activation for {layer.name}")

        def hook(_m, _inp, out, layer=layer):
            a = acts[layer.activation](out)
            a = a.movedim(layer.axis, -1).reshape(-1, a.shape[layer.axis])
            s = a.sum(0, dtype=torch.float64)
            sums[layer.name] = s if sums[layer.name] is None else sums[layer.name] + s
            counts[layer.name] += a.shape[0]

        hooks.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            for start in range(0, len(x01), batch_size):
                xb = torch.from_numpy(am.model_input(x01[start:start + batch_size], pp))
                tm.module(xb)
    finally:
        for h in hooks:
            h.remove()
    return {k: (v / counts[k]).numpy().astype(np.float64) for k, v in sums.items()}


def timed(fn, repeats: int) -> tuple[list[float], object]:
    times, result = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return times, result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--out", type=Path, default=RESULTS / "probe_throughput.json")
    args = ap.parse_args()

    info = machine()
    import numpy as np
    import torch

    from audit.converters.to_torch import to_torch
    from audit.data import Preprocess
    from audit.graphs.model import AuditModel
    from audit.graphs.probe import find_probe_layers, mean_activations
    from audit.graphs.runtime import make_session

    torch.set_num_threads(THREADS)
    with tempfile.TemporaryDirectory() as tmp:
        path = build_paper_mnist(Path(tmp) / "paper_mnist.onnx")
        am = AuditModel.load(path, device="cpu")
    layers = find_probe_layers(am.normalised, am.original)
    pp = Preprocess(scale=1 / 255)
    x01, source = load_images(args.n)
    tm = to_torch(am, am.model_input(x01[:256], pp))

    # the probe session, created once with THREADS intra-op threads (what mean_activations
    # would otherwise create on first use with the default thread count)
    from audit.graphs.model import _runnable
    from audit.graphs.probe import expose

    key = ("probe", tuple(l.tensor for l in layers))
    am._sessions[key] = make_session(_runnable(expose(am.normalised, layers)), "cpu",
                                     optimize=False, threads=THREADS)

    def run_ort():
        return mean_activations(am, x01, pp, layers, batch_size=args.batch_size)

    def run_torch():
        return torch_probe(tm, am, x01, pp, layers, args.batch_size)

    # warm-up on one batch each, then check both compute the same numbers
    mean_activations(am, x01[:args.batch_size], pp, layers, batch_size=args.batch_size)
    torch_probe(tm, am, x01[:args.batch_size], pp, layers, args.batch_size)
    ort_times, ort_means = timed(run_ort, args.repeats)
    torch_times, torch_means = timed(run_torch, args.repeats)
    agree = max(float(np.max(np.abs(ort_means[k] - torch_means[k]))) for k in ort_means)
    if agree > 1e-4:
        print(f"ORT and torch means disagree by {agree}", file=sys.stderr)
        return 1

    n = len(x01)
    ort_ips = n / statistics.median(ort_times)
    torch_ips = n / statistics.median(torch_times)
    result = {
        "what": "images/s of per-unit mean activations over all probe layers (median of "
                f"{args.repeats} runs, preprocessing included, after a one-batch warm-up)",
        "model": "paper Table-5 MNIST net (Conv32 5x5, MaxPool2, Conv16 5x5, MaxPool2, "
                 "Dense512, Dense10), random init, TorchScript exporter opset 13",
        "layers": [{"name": l.name, "op": l.op, "units": l.units, "activation": l.activation}
                   for l in layers],
        "data": source, "synthetic_data": "synthetic" in source, "n": n,
        "batch_size": args.batch_size,
        "threads": {"torch": torch.get_num_threads(), "onnxruntime_intra_op": THREADS},
        "ort_images_per_s": round(ort_ips, 1),
        "torch_hooks_images_per_s": round(torch_ips, 1),
        "ort_over_torch": round(ort_ips / torch_ips, 3),
        "ort_seconds": [round(t, 3) for t in ort_times],
        "torch_seconds": [round(t, 3) for t in torch_times],
        "max_abs_difference_of_means": agree,
        "machine": info,
        "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "commit": common.commit(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"ORT probe {ort_ips:.0f} images/s, torch hooks {torch_ips:.0f} images/s "
          f"(ratio {ort_ips / torch_ips:.2f}) on {n} images, batch {args.batch_size}, "
          f"{THREADS} threads; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
