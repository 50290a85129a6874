"""Shared helpers of the laundering benchmarks (launder_mnist, launder_badnets, nc_speed).

* where things are: the repository, the shared data beside it (`shared/data`), bench/results,
  the zoo cache (outside the repository: $AUDIT_BENCH_ZOO, by default `audit-bench-zoo` in the
  system's temporary folder);
* zoo entries built once and reused (`zoo_entry`), their models kept in bench/zoo so that the
  committed results' builds can be restored on any machine;
* MNIST from ../shared/data/mnist and laundering subsets of it;
* the machine's state (load average, threads, versions) recorded with every result;
* atomic JSON results that name the commit they were measured at and hold no machine paths
  (`portable`).

The machine these run on is shared: with other jobs busy, torch's default of one thread per
core oversubscribes the CPUs and training slows down 5-10x (spinning OpenMP workers), so the
benchmarks take a `--threads` option and record what they used.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
RESULTS = REPO / "bench" / "results"
TMP = Path(tempfile.gettempdir())
ZOO_CACHE = Path(os.environ.get("AUDIT_BENCH_ZOO", TMP / "audit-bench-zoo"))
STORED_ZOO = REPO / "bench" / "zoo"   # the zoo builds the committed results were measured on
MNIST_TRAIN = SHARED / "mnist" / "train-images-idx3-ubyte.gz"
MNIST_TEST = SHARED / "mnist" / "t10k-images-idx3-ubyte.gz"


def need_shared(*paths: Path) -> None:
    """Exit with a clear message when ../shared/data (or a file in it) is absent."""
    for p in paths or (SHARED,):
        if not p.exists():
            sys.exit(f"skipped: {portable(str(p))} not present (the real data sets live in "
                     "shared/data beside the repository)")


def set_threads(n: int | None) -> int:
    import torch

    if n:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def loadavg() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def machine() -> dict:
    import onnxruntime
    import torch

    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "loadavg": loadavg(), "python": platform.python_version(),
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "platform": platform.platform(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def commit() -> str:
    """The repository's short HEAD commit, with `-dirty` when the code differs from it: the
    benches' results and the documents rendered from them (docs/, README.md) do not count, so a
    bench still writing its results, or docs regenerated meanwhile, leave the commit clean."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                              check=False).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)bench/results",
                  ":(exclude)bench/zoo", ":(exclude)docs", ":(exclude)README.md")
    return head + ("-dirty" if changed else "")


# Machine paths in results become names that hold on any checkout: the shared data beside the
# repository, the repository itself, the bench's caches and the temporary folder.
def _path_names() -> list[tuple[str, str]]:
    names = [(str(SHARED.resolve()), "shared/data"), (str(SHARED), "shared/data"),
             (str(ZOO_CACHE), "$AUDIT_BENCH_ZOO"), (str(REPO) + "/", ""),
             (str(TMP / "audit-bench-"), "<tmp>/audit-bench-"), (str(TMP) + "/", "<tmp>/")]
    return sorted(set(names), key=lambda kv: -len(kv[0]))


def portable(obj):
    """obj (JSON-like) with absolute machine paths in its strings rewritten (`_path_names`)."""
    if isinstance(obj, dict):
        return {k: portable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [portable(v) for v in obj]
    if isinstance(obj, Path):
        obj = str(obj)
    if isinstance(obj, str):
        for long, short in _path_names():   # a whole path component, not a prefix of a name
            obj = re.sub(re.escape(long) + r"(?![\w.-])" if long[-1] not in "/-" else
                         re.escape(long), short.replace("\\", "\\\\"), obj)
    return obj


def write_json(path: Path, obj: dict) -> Path:
    """``obj`` as JSON at ``path``, written atomically with portable paths (`portable`)."""
    from audit.paths import atomic_write
    from audit.report import json_default

    obj = portable(json.loads(json.dumps(obj, default=json_default)))
    text = json.dumps(obj, indent=2) + "\n"
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def write_result(name: str, obj: dict, *, stamp: bool = True) -> Path:
    """bench/results/<name>, written atomically with portable paths; `stamp` sets `commit`."""
    return write_json(RESULTS / name, {**obj, "commit": commit()} if stamp else obj)


def update_result(name: str, update) -> Path:
    """Read-modify-write bench/results/<name> under a lock (parallel sweeps of one bench).

    Each labelled entry that `update` writes should carry its own `commit` (`commit()`).
    """
    import fcntl

    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = RESULTS / name
        old = json.loads(path.read_text()) if path.is_file() else {}
        return write_result(name, update(old), stamp=False)


def zoo_entry(dataset: str, scheme: str, *, seed: int = 0, cache: Path = ZOO_CACHE,
              quiet: bool = True, rebuild: bool = False, stored: Path | None = STORED_ZOO):
    """The zoo entry <cache>/<dataset>_<scheme>_s<seed> and whether it was trained here.

    Training is deterministic on one machine, not across CPUs, so the build the committed
    results were measured on is kept in the repository (<stored>/<name>: both models and their
    meta.json; the trigger images are made again from the data): a cache that lacks the entry or
    holds another build is restored from there (restore_entry), and an entry trained here
    (absent from <stored>, or `rebuild`) is kept there."""
    from audit.graphs.io import sha256_file
    from audit.models_zoo.build import build_entry, built_entry, restore_entry, store_entry

    name = f"{dataset}_{scheme}_s{seed}"
    out = cache / name
    keep = None if stored is None else stored / name
    entry = None if rebuild else built_entry(out)
    if keep is not None and not rebuild and (keep / "meta.json").is_file():
        if entry is None or any(sha256_file(out / f) != sha256_file(keep / f)
                                for f in ("watermarked.onnx", "vanilla.onnx")):
            t = time.perf_counter()
            entry = restore_entry(keep, out)
            print(f"restored {dataset}/{scheme} from {portable(str(keep))} in "
                  f"{time.perf_counter() - t:.0f} s -> {out}", flush=True)
        return entry, False
    if entry is not None:
        return entry, False
    t = time.perf_counter()
    entry = build_entry(dataset, scheme, out, seed=seed, quiet=quiet, device="cpu")
    print(f"built {dataset}/{scheme} in {time.perf_counter() - t:.0f} s -> {out}", flush=True)
    if keep is not None:
        store_entry(entry, keep)
    return entry, True


def mnist(split: str, geometry=(1, 28, 28)):
    from audit.data import load_dataset

    path = MNIST_TRAIN if split == "train" else MNIST_TEST
    c, h, w = geometry
    return load_dataset(path, channels=c, height=h, width=w)


def write_subset_npz(ds, path: Path) -> Path:
    """A Dataset as the .npz `--data` reads: x uint8 [N,H,W] (grey) or [N,H,W,C], y."""
    u8 = np.clip(np.round(ds.x * 255), 0, 255).astype(np.uint8)
    u8 = u8[:, 0] if u8.shape[1] == 1 else u8.transpose(0, 2, 3, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=u8, y=ds.y.astype(np.int64))
    return path


def round_summary(r) -> dict:
    """The per-round facts worth keeping from a RoundResult (no loss curves or masks)."""
    rec = r.recovery
    return {"round": r.round, "flagged": rec["flagged"],
            "most_likely_infected": rec["most_likely_infected"],
            "least_likely": rec["least_likely"],
            "max_anomaly_index": round(max(rec["anomaly_index"]), 3),
            "norms": [round(v, 2) for v in rec["norms"]],
            "nc_epochs_run": rec["epochs_run"], "triggers_used": r.triggers_used,
            "units_reset": r.units_reset, "lr": r.lr,
            "distill": getattr(r, "distill", None), "shrink": getattr(r, "shrink", None),
            "lr_scores": {k: round(v, 4) for k, v in (getattr(r, "lr_scores", None) or {}).items()},
            "sink_class": getattr(r, "sink_class", None),
            "ood_prediction_shares": getattr(r, "ood_prediction_shares", None),
            "subset_accuracy": r.subset_accuracy, "stamped_accuracy": r.stamped_accuracy,
            "retrain_epochs_run": len(r.losses),
            "seconds": {k: round(v, 2) for k, v in r.seconds.items()}, "stopped": r.stopped}


def set_field(cfg, item: str):
    """cfg with FIELD=VALUE applied (FIELD may be nc.X or retrain.X; VALUE parsed as JSON, else
    taken as a string), checked as a --config file's key is: an unknown field, a value out of
    range or not among the field's choices ends the bench with one line."""
    from audit.config import read_table, with_settings
    from audit.errors import AuditError

    key, _, raw = item.partition("=")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    table: dict = value
    for part in reversed(key.split(".")):
        table = {part: table}
    try:
        return with_settings(cfg, read_table(type(cfg), table, f"--set {item}"))
    except AuditError as exc:
        raise SystemExit(str(exc)) from None


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"
