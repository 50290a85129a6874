"""`audit verify` on zoo models before and after laundering, and `audit demo` end to end.

Parts (``--parts``, default all three):

* ``digits``: the four zoo schemes (Zhang content / noise / unrelated, Adi with the real trigger
  set of shared/data/adi_trigger_set when present) on the embedded digits, built with
  ``build_entry("digits", scheme, <zoo-dir>/digits_<scheme>)`` (reused when meta.json exists).
  Each watermarked model is laundered with default settings (``audit launder`` defaults, seed 0)
  on 150 stratified images of its data/train.npz.
* ``mnist``: the MNIST zoo entries of bench/detect_models.py (<detect-zoo>/mnist_<scheme>,
  copied from an identical build in --copy-from when absent; built only with --build-mnist),
  laundered with 360 stratified MNIST training images (0.6%).
* ``demo``: `audit demo --quiet --device cpu` timed end to end in a subprocess, once with the
  environment as is and once with OMP_NUM_THREADS=1 (see below); bench/results/demo.json.

For every model `audit verify MODEL --triggers <entry>/triggers --vanilla <entry>/vanilla.onnx
--json` runs (in process, its exit code recorded): the watermarked model must be demonstrated
(p < 0.01, exit 0), the vanilla twin and the laundered model not (exit 1).

The machine may be shared with other jobs: torch runs with --threads threads (default 1) in the
digits / mnist parts, since oversubscribed OpenMP workers slow small models 5-10x; the load
average is recorded. The demo is run as a user would run it (default threads) and with one.

Usage: python bench/verify_zoo.py [--parts digits mnist demo] [--mnist-schemes content noise]
Writes bench/results/verify_zoo.json (digits / mnist; each row with the commit it was measured
at) and bench/results/demo.json (demo), paths relative to the repository or its caches.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SHARED = HERE.parents[1] / "shared" / "data"
sys.path.insert(0, str(HERE))

import common  # noqa: E402

SCHEMES = ("content", "noise", "unrelated", "adi")
SUBSETS = {"digits": 150, "mnist": 360}
DEMO_ACCEPT = {"seconds_max": 180, "wm_before_min": 0.95, "wm_after_max": "vanilla + 0.05",
               "test_drop_max": 0.03}


def loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def machine() -> dict:
    from probe_memory import machine as m

    return m()


def cli_verify(model: Path, entry_dir: Path) -> dict:
    """`audit verify --json` in process; returns its JSON plus the exit code."""
    from audit.cli import run

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = run(["verify", str(model), "--triggers", str(entry_dir / "triggers"),
                  "--vanilla", str(entry_dir / "vanilla.onnx"), "--device", "cpu", "--json"])
    out = json.loads(buf.getvalue()) if buf.getvalue().strip() else {}
    return {"exit_code": rc, "demonstrated": out.get("demonstrated"),
            "watermark_accuracy": out.get("watermark_accuracy"), "hits": out.get("hits"),
            "n": out.get("n"), "vanilla_rate": out.get("vanilla_rate"),
            "null_rate": out.get("null_rate"), "p_value": out.get("p_value")}


def digits_entry(zoo_dir: Path, scheme: str) -> tuple[Path, str]:
    from audit.models_zoo.build import build_entry

    out = zoo_dir / f"digits_{scheme}"
    if (out / "meta.json").is_file():
        return out, "reused"
    t = time.perf_counter()
    build_entry("digits", scheme, out, seed=0, quiet=True)
    return out, f"built ({time.perf_counter() - t:.0f} s)"


def mnist_entry(detect_zoo: Path, scheme: str, copy_from: list[Path], build: bool
                ) -> tuple[Path | None, str]:
    import shutil

    from detect_models import find_identical

    from audit.models_zoo.build import build_entry

    out = detect_zoo / f"mnist_{scheme}"
    if (out / "meta.json").is_file():
        return out, "reused (detect bench zoo)"
    src = find_identical(scheme, copy_from)
    if src is not None:
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(src, out)
        return out, f"copied from {src} (same build_entry arguments)"
    if not build:
        return None, "absent (run with --build-mnist)"
    t = time.perf_counter()
    build_entry("mnist", scheme, out, seed=0, quiet=True)
    return out, f"built ({time.perf_counter() - t:.0f} s)"


def run_entry(dataset: str, scheme: str, entry_dir: Path, how: str, train, test,
              work: Path, seed: int) -> dict:
    from audit import api
    from audit.data import Preprocess, stratified_subset
    from audit.graphs.model import AuditModel
    from audit.launder import LaunderConfig

    meta = json.loads((entry_dir / "meta.json").read_text())
    pp = Preprocess(**meta["preprocess"])
    subset = stratified_subset(train, SUBSETS[dataset], seed=seed)
    out = work / f"{dataset}_{scheme}_laundered.onnx"
    out.unlink(missing_ok=True)
    load0 = loadavg()
    t = time.perf_counter()
    res = api.launder(entry_dir / "watermarked.onnx", subset, out, preprocess=pp,
                      config=LaunderConfig(seed=seed, device="cpu"), device="cpu")
    launder_s = time.perf_counter() - t
    verdicts = {kind: cli_verify(path, entry_dir) for kind, path in
                (("watermarked", entry_dir / "watermarked.onnx"),
                 ("vanilla", entry_dir / "vanilla.onnx"), ("laundered", out))}
    test_acc = {kind: AuditModel.load(path, device="cpu").accuracy(test.x, test.y, pp)
                for kind, path in (("watermarked", entry_dir / "watermarked.onnx"),
                                   ("vanilla", entry_dir / "vanilla.onnx"), ("laundered", out))}
    ok = (verdicts["watermarked"]["exit_code"] == 0 and verdicts["watermarked"]["p_value"] < 0.01
          and verdicts["vanilla"]["exit_code"] == 1 and verdicts["laundered"]["exit_code"] == 1)
    return {"dataset": dataset, "scheme": scheme, "zoo": str(entry_dir), "zoo_how": how,
            "trigger_info": {k: v for k, v in meta.get("trigger_info", {}).items()
                             if k != "letters"},
            "n_trigger": meta["n_trigger"], "target": meta["target"],
            "subset_size": len(subset), "subset_share": round(len(subset) / len(train), 4),
            "launder": {"rounds": len(res.rounds), "best_round": res.best_round,
                        "stop_reason": res.stop_reason, "seconds": round(launder_s, 1)},
            "verify": verdicts, "test_acc": test_acc,
            "test_drop": round(test_acc["watermarked"] - test_acc["laundered"], 4),
            "pass": ok, "load_average_before": load0, "load_average_after": loadavg(),
            "commit": common.commit()}


def part_zoo(dataset: str, args) -> list[dict]:
    from audit.data import load_dataset

    work = args.zoo_dir / "laundered"
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    if dataset == "digits":
        for scheme in args.digits_schemes:
            entry_dir, how = digits_entry(args.zoo_dir, scheme)
            geo = dict(channels=1, height=16, width=16)
            train = load_dataset(entry_dir / "data" / "train.npz", **geo)
            test = load_dataset(entry_dir / "data" / "test.npz", **geo)
            rows.append(run_entry("digits", scheme, entry_dir, how, train, test, work, args.seed))
            print(row_line(rows[-1]), file=sys.stderr, flush=True)
        return rows
    if not (SHARED / "mnist").is_dir():
        print(f"skipped mnist: {SHARED / 'mnist'} not present", file=sys.stderr)
        return rows
    geo = dict(channels=1, height=28, width=28, num_classes=10)
    train = load_dataset(SHARED / "mnist" / "train-images-idx3-ubyte.gz", **geo)
    test = load_dataset(SHARED / "mnist" / "t10k-images-idx3-ubyte.gz", **geo)
    for scheme in args.mnist_schemes:
        entry_dir, how = mnist_entry(args.detect_zoo, scheme, args.copy_from, args.build_mnist)
        if entry_dir is None:
            rows.append({"dataset": "mnist", "scheme": scheme, "skipped": how})
            continue
        rows.append(run_entry("mnist", scheme, entry_dir, how, train, test, work, args.seed))
        print(row_line(rows[-1]), file=sys.stderr, flush=True)
    return rows


def _v(v: dict) -> str:
    return (f"{'yes' if v['demonstrated'] else 'no'} (exit {v['exit_code']}, "
            f"{100 * v['watermark_accuracy']:.0f}%, p {v['p_value']:.2g})")


def row_line(r: dict) -> str:
    if "skipped" in r:
        return f"{r['dataset']}/{r['scheme']}: skipped ({r['skipped']})"
    v = r["verify"]
    return (f"{r['dataset']}/{r['scheme']}: wm {_v(v['watermarked'])} vanilla {_v(v['vanilla'])} "
            f"laundered {_v(v['laundered'])}; launder {r['launder']['seconds']:.0f} s; "
            f"pass {r['pass']}")


def table(rows: list[dict]) -> str:
    lines = ["| entry | watermarked | vanilla twin | laundered | test acc wm → laundered | "
             "launder data / s | pass |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['dataset']}/{r['scheme']} | skipped: {r['skipped']} | | | | | |")
            continue
        v, ta = r["verify"], r["test_acc"]
        lines.append(f"| {r['dataset']}/{r['scheme']} | {_v(v['watermarked'])} | "
                     f"{_v(v['vanilla'])} | {_v(v['laundered'])} | {100 * ta['watermarked']:.2f} "
                     f"→ {100 * ta['laundered']:.2f} | {r['subset_size']} / "
                     f"{r['launder']['seconds']:.0f} | {'yes' if r['pass'] else 'NO'} |")
    return "\n".join(lines)


def run_demo(label: str, env_extra: dict, out_root: Path, timeout: int) -> dict:
    import shutil

    out = out_root / label
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, **env_extra}
    cmd = ["audit", "demo", "--out", str(out), "--quiet", "--device", "cpu"]
    load0 = loadavg()
    t = time.perf_counter()
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        rc, stdout, stderr = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as exc:
        rc, stdout, stderr = None, exc.stdout or "", exc.stderr or ""
        stdout = stdout.decode() if isinstance(stdout, bytes) else stdout
        stderr = stderr.decode() if isinstance(stderr, bytes) else stderr
    seconds = time.perf_counter() - t
    row = {"label": label, "command": " ".join(cmd), "env": env_extra, "exit_code": rc,
           "timed_out": rc is None, "timeout_s": timeout, "seconds": round(seconds, 1),
           "load_average_before": load0, "load_average_after": loadavg(),
           "stdout": stdout[-3000:], "stderr": stderr[-2000:]}
    summ = out / "summary.json"
    if rc == 0 and summ.is_file():
        s = json.loads(summ.read_text())
        ta, wa, van = s["test_accuracy"], s["watermark_accuracy"], s["vanilla_rate"]
        row["summary"] = s
        row["acceptance"] = {
            "seconds_under_180": seconds < DEMO_ACCEPT["seconds_max"],
            "wm_before_ge_95": wa["original"] >= DEMO_ACCEPT["wm_before_min"],
            "wm_after_le_vanilla_plus_5": wa["laundered"] <= van + 0.05,
            "test_drop_le_3": ta["original"] - ta["laundered"] <= DEMO_ACCEPT["test_drop_max"],
        }
        row["pass"] = all(row["acceptance"].values())
    else:
        row["pass"] = False
    return row


def part_demo(args) -> dict:
    runs = []
    for label, env in (("default_threads", {}), ("omp_num_threads_1", {"OMP_NUM_THREADS": "1"})):
        if label not in args.demo_runs:
            continue
        r = run_demo(label, env, args.demo_out, args.demo_timeout)
        runs.append(r)
        print(f"demo {label}: exit {r['exit_code']} in {r['seconds']:.0f} s "
              f"(load {r['load_average_before']} -> {r['load_average_after']}); "
              f"pass {r['pass']}", file=sys.stderr, flush=True)
    return {"what": "`audit demo --quiet --device cpu` (digits, content watermark) end to end, "
                    "wall clock of the subprocess (perf_counter)",
            "acceptance": DEMO_ACCEPT, "machine": machine(), "runs": runs}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", nargs="+", default=["digits", "mnist", "demo"],
                    choices=["digits", "mnist", "demo"])
    ap.add_argument("--digits-schemes", nargs="+", default=list(SCHEMES), choices=SCHEMES)
    ap.add_argument("--mnist-schemes", nargs="+", default=["content", "noise"], choices=SCHEMES)
    ap.add_argument("--zoo-dir", type=Path, default=common.TMP / "audit-bench-zoo-verify")
    ap.add_argument("--detect-zoo", type=Path, default=common.TMP / "audit-bench-zoo-detect")
    ap.add_argument("--copy-from", type=Path, action="append", default=[])
    ap.add_argument("--build-mnist", action="store_true",
                    help="Build missing MNIST entries (minutes each) instead of skipping them.")
    ap.add_argument("--demo-out", type=Path, default=common.TMP / "audit-bench-demo")
    ap.add_argument("--demo-runs", nargs="+", default=["default_threads", "omp_num_threads_1"])
    ap.add_argument("--demo-timeout", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if "demo" in args.parts:
        demo = part_demo(args)
        print(f"written {common.write_result('demo.json', demo)}", file=sys.stderr)
    zoo_parts = [p for p in args.parts if p != "demo"]
    if not zoo_parts:
        return 0
    path = RESULTS / "verify_zoo.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    rows = {f"{r['dataset']}/{r['scheme']}": r for r in old.get("rows", [])}
    info = machine()
    t = time.perf_counter()
    for part in zoo_parts:
        for r in part_zoo(part, args):
            rows[f"{r['dataset']}/{r['scheme']}"] = r      # runs of some entries keep the others
    order = [f"{d}/{s}" for d in ("digits", "mnist") for s in SCHEMES]
    merged = [rows[k] for k in order if k in rows]
    done = [r for r in merged if "skipped" not in r]
    result = {
        "what": "audit verify --vanilla <twin> --json on the zoo's watermarked model, its vanilla "
                "twin and its laundered version (audit launder defaults, seed 0; 150 digits / "
                "360 MNIST stratified training images); exit 0 = ownership demonstrated "
                "(one-sided exact binomial, p < 0.01)",
        "torch_threads": args.threads, "machine": info,
        "summary": {"entries": len(done), "pass": sum(r["pass"] for r in done),
                    "all_pass": all(r["pass"] for r in done)},
        "rows": merged, "table": table(merged),
        "seconds_this_run": round(time.perf_counter() - t, 1),
    }
    path = common.write_result("verify_zoo.json", result, stamp=False)
    print(table(merged))
    print(f"\nwritten {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
