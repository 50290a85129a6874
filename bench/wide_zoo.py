"""Launder a randomised population of watermarked models (the wide zoo, models_zoo/wide.py).

For each draw of the split (dev: seeds 0-999, for tuning the laundering defaults; heldout:
1000 and up, for reporting) the watermarked model and its vanilla twin are built into the zoo
cache (reused when built; $AUDIT_BENCH_ZOO/wide by default, see common.py), the watermarked
model is laundered through the API (audit.api.launder) with the draw's stratified subset
(10-60 images per class, data/train.npz) and the laundering settings (defaults, or --config /
--set), and onnxruntime measures watermark and test accuracy before and after. `audit verify`'s
test (exact one-sided binomial test against the twin's watermark accuracy, alpha 0.01) runs on
the watermarked and the laundered model.

A draw passes when the laundered model's watermark is not demonstrated and its watermark
accuracy is at most the twin's + 0.02. A draw whose watermarked model does not demonstrate its
own watermark (it did not embed) is reported but left out of the pass rates. Test-accuracy drop
= watermarked - laundered, on the draw's clean test set.

Results go to --out (bench/results/wide_zoo.json for the held-out split, wide_zoo_dev.json
for dev) after every draw, atomically, with the commit each row was measured at (the
repository's when its run started); a rerun with the same split and settings keeps the rows it
finds (same draw, no error) and does the rest, so an interrupted run resumes. Another split or
other settings need another --out (or --fresh).

Usage: python bench/wide_zoo.py --split dev --digits 8 [--mnist M] [--cifar10 K] [--zoo DIR]
       [--out FILE] [--workers N] [--config FILE.toml]
       [--set FIELD=VALUE ...] [--fresh]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402

SIZES = ("digits", "mnist", "cifar10")


def draw_parser(doc: str, stem: str) -> argparse.ArgumentParser:
    """The options of a bench over wide-zoo draws: split, draw counts, zoo, results file
    (bench/results/<stem>.json for the held-out split, <stem>_dev.json for dev), workers."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--split", choices=("dev", "heldout"), required=True)
    for size in SIZES:
        ap.add_argument(f"--{size}", type=int, default=0, metavar="N",
                        help=f"number of {size} draws (default 0)")
    ap.add_argument("--zoo", type=Path, default=common.ZOO_CACHE / "wide",
                    help="zoo cache (default $AUDIT_BENCH_ZOO/wide)")
    ap.add_argument("--out", type=Path, default=None,
                    help=f"results file (default bench/results/{stem}.json for the held-out "
                         f"split, bench/results/{stem}_dev.json for dev)")
    ap.add_argument("--workers", type=int, default=1, help="draws run in parallel processes")
    return ap


def check_draw_args(ap: argparse.ArgumentParser, args: argparse.Namespace, stem: str) -> None:
    """draw_parser's checks, and the default results file."""
    if args.workers < 1 or min(getattr(args, s) for s in SIZES) < 0:
        ap.error("--workers must be at least 1 and draw counts at least 0")
    if not any(getattr(args, s) for s in SIZES):
        ap.error("nothing to do: give --digits, --mnist and/or --cifar10 a count")
    if args.out is None:
        args.out = common.RESULTS / (f"{stem}.json" if args.split == "heldout" else f"{stem}_dev.json")


def prepare(args: argparse.Namespace) -> None:
    """Before any draw: the shared data the sizes asked for is there; one torch thread."""
    if args.mnist:
        common.need_shared(common.MNIST_TRAIN, common.MNIST_TEST)
    if args.cifar10:
        common.need_shared(common.SHARED / "cifar10")
    common.set_threads(1)


def run_pool(fn, jobs: list[tuple], workers: int, on_row) -> None:
    """fn(*job) for every job, in `workers` spawned processes of one torch thread each (in this
    process when 1); on_row gets each result as it comes."""
    if workers == 1:
        for job in jobs:
            on_row(fn(*job))
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"),
                             initializer=_init_worker) as pool:
        for f in as_completed([pool.submit(fn, *job) for job in jobs]):
            on_row(f.result())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = draw_parser(__doc__, "wide_zoo")
    ap.add_argument("--config", type=Path, default=None,
                    help="laundering settings from a TOML file (as `audit launder --config`)")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="a LaunderConfig field, nc.FIELD or retrain.FIELD (VALUE as JSON)")
    ap.add_argument("--fresh", action="store_true", help="ignore rows already in --out")
    args = ap.parse_args(argv)
    check_draw_args(ap, args, "wide_zoo")
    return args


def _default_config():
    from audit.launder import LaunderConfig

    return LaunderConfig(device="cpu")


def stored(cfg) -> dict:
    """cfg's settings as a results file holds them."""
    return json.loads(json.dumps(cfg.to_dict()))


def launder_config(args: argparse.Namespace):
    from audit.config import load_config

    cfg = _default_config()
    if args.config is not None:
        cfg = load_config(type(cfg), args.config, base=cfg)
    for item in args.set:
        cfg = common.set_field(cfg, item)
    return cfg


# ------------------------------------------------------------------------------------------
# one draw (runs in a worker process with --workers)


def _init_worker() -> None:
    common.set_threads(1)


def _mark_summary(d: dict) -> str:
    if d["mark"]:
        m = d["mark"]
        what = f" '{m['text']}' {m['font']}" if m["text"] else f" {m['shape']}" if m["shape"] else ""
        return (f"{m['kind']}{what} {m['side']}px at ({m['top']},{m['left']}) {m['mode']}"
                f"{'' if m['mode'] == 'stamp' else ' ' + str(m['alpha'])}"
                f"{' opaque' if m['opaque'] and m['kind'] in ('text', 'logo') else ''}")
    if d["noise"]:
        n = d["noise"]
        return (f"{n['dist']} sigma {n['sigma']} {n['mode']} "
                f"{'region ' + str(n['region']) if n['region'] else 'full'}")
    if d["unrelated"]:
        return "+".join(d["unrelated"]["kinds"])
    return f"abstract {d['abstract']['source']}"


def run_draw(size: str, seed: int, zoo: str, cfg, commit: str) -> dict:
    """Build (cached) and launder one draw; a failure is a row with its one-line error.
    ``commit``: the code's commit when the run started (what the process runs)."""
    from audit.errors import one_line
    from audit.models_zoo.wide import launder_draw, make_draw

    d = make_draw(seed, size)
    dd = d.to_dict()
    row = {"name": d.name, "size": size, "seed": seed, "split": d.split, "scheme": d.scheme,
           "arch": d.arch, "input": f"{d.input_hw}x{d.input_hw}", "exporter": d.exporter,
           "target": d.target, "watermark": _mark_summary(dd), "draw": dd, "error": None}
    t = time.perf_counter()
    try:
        row.update(launder_draw(d, zoo, cfg))
    except Exception as exc:   # recorded, the other draws go on
        row["error"] = f"{type(exc).__name__}: {one_line(str(exc))}"
        row["pass"] = False
        row.update(wall_s=round(time.perf_counter() - t, 1), commit=commit)
        return row
    row.update(wall_s=round(time.perf_counter() - t, 1), commit=commit)
    return row


# ------------------------------------------------------------------------------------------
# results


def _rate(rows: list[dict]) -> dict:
    ok = [r for r in rows if not r["error"]]
    emb = [r for r in ok if r["embedded"]]
    passed = sum(r["pass"] for r in emb)
    return {"n": len(rows), "errors": len(rows) - len(ok), "embedded": len(emb),
            "pass": passed, "pass_rate": round(passed / len(emb), 4) if emb else None,
            "pass_all_rows": sum(r["pass"] for r in ok)}


def summary(rows: list[dict]) -> dict:
    """Pass rates (over draws whose watermark embedded) per scheme, size, architecture and
    exporter; test-accuracy drop over all draws laundered."""
    ok = [r for r in rows if not r["error"]]
    drops = [r["test_drop"] for r in ok]
    out = {"all": _rate(rows),
           "test_drop": {"median": round(statistics.median(drops), 4) if drops else None,
                         "max": max(drops) if drops else None,
                         "mean": round(statistics.fmean(drops), 4) if drops else None},
           "launder_seconds": {"median": statistics.median([r["launder"]["seconds"] for r in ok])
                               if ok else None}}
    for key in ("scheme", "size", "arch", "exporter"):
        groups: dict[str, list[dict]] = {}
        for r in rows:
            groups.setdefault(str(r[key]), []).append(r)
        out[f"by_{key}"] = {k: _rate(v) for k, v in sorted(groups.items())}
    out["errors"] = {r["name"]: r["error"] for r in rows if r["error"]}
    return out


def fail(message: str) -> None:
    """Bad input: one line on stderr, exit code 2."""
    print(f"error: {common.portable(message)}", file=sys.stderr)
    sys.exit(2)


def previous_rows(args: argparse.Namespace, cfg_dict: dict) -> dict[str, dict]:
    """Rows of an earlier run with the same split and settings (error rows are redone)."""
    if args.fresh or not args.out.is_file():
        return {}
    try:
        old = json.loads(args.out.read_text())
        old["rows"][0]["name"]   # noqa: B018 (a results file of this bench)
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        fail(f"{args.out}: not a results file of this bench; give another --out or --fresh")
    if old.get("split") != args.split or _added_since(old.get("launder_config"),
                                                       stored(_default_config())) != cfg_dict:
        fail(f"{args.out} holds a run of another split or other laundering settings; give "
             "another --out or --fresh")
    return {r["name"]: r for r in old.get("rows", []) if not r.get("error")}


def _added_since(old, default, prefix: str = ""):
    """old with the keys of settings added after its run filled in with what laundering did
    before they existed: their default, or their former default where it has changed since
    (audit.settings.FORMER_DEFAULTS)."""
    from audit.settings import FORMER_DEFAULTS

    if not isinstance(old, dict) or not isinstance(default, dict) or not set(old) <= set(default):
        return old
    return {k: _added_since(old[k], v, f"{prefix}{k}.") if k in old
            else FORMER_DEFAULTS.get(prefix + k, v) for k, v in default.items()}


def overrides(cfg_dict: dict) -> list[str]:
    """The --set items that turn today's default settings into cfg_dict (a results file's
    launder_config, its missing settings filled in by _added_since), in key order."""
    def flat(d: dict, prefix: str = "") -> dict[str, object]:
        out: dict[str, object] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
        return out

    default = stored(_default_config())
    have, want = flat(default), flat(_added_since(cfg_dict, default))
    return [f"{k}={json.dumps(want[k])}" for k in sorted(want) if want[k] != have.get(k)]


def document(args, cfg_dict: dict, rows: dict[str, dict], todo: list, machine: dict,
             commit: str) -> dict:
    from audit.models_zoo.wide import ACCEPT

    ordered = sorted(rows.values(), key=lambda r: (SIZES.index(r["size"]), r["seed"]))
    return {
        "what": "wide zoo: randomised watermarked models (models_zoo/wide.py) laundered with "
                "the settings below; pass = not demonstrated (binomial test vs the twin, "
                "alpha 0.01) and watermark accuracy <= the twin's + 0.02",
        "split": args.split, "requested": {s: getattr(args, s) for s in SIZES},
        "complete": len(ordered) == len(todo) and not any(r["error"] for r in ordered),
        "launder_config": cfg_dict,
        "launder_overrides": {"config": str(args.config) if args.config else None,
                              "set": args.set},
        "acceptance": ACCEPT, "zoo": str(args.zoo), "argv": sys.argv[1:],
        "commit": commit, "machine": machine, "summary": summary(ordered),
        "rows": ordered,
    }


def line(r: dict) -> str:
    head = f"{r['name']:<12} {r['scheme']:<9} {r['arch']:<7} {r['input']:<6} {r['exporter']:<11}"
    if r["error"]:
        return f"{head} ERROR {r['error']}"
    return (f"{head} wm {r['wm_acc_before']:.3f} -> {r['wm_acc_after']:.3f} (vanilla "
            f"{r['vanilla_wm_acc']:.3f}) test {r['test_acc_before']:.3f} -> "
            f"{r['test_acc_after']:.3f} p_after {r['verify_after']['p_value']:.2g} "
            f"{'PASS' if r['pass'] else 'fail' if r['embedded'] else 'not embedded'} "
            f"({r['wall_s']:.0f} s)")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    prepare(args)
    from audit.errors import AuditError
    from audit.models_zoo.wide import draws

    try:
        cfg = launder_config(args)
        chosen = {d.name: d for s in SIZES if getattr(args, s)
                  for d in draws(args.split, getattr(args, s), s)}
    except AuditError as exc:
        fail(str(exc))
    todo = [(d.size, d.seed) for d in chosen.values()]
    cfg_dict = stored(cfg)
    rows = {k: v for k, v in previous_rows(args, cfg_dict).items()    # the same draws only
            if k in chosen and v["draw"] == chosen[k].to_dict()}
    machine, commit = common.machine(), common.commit()    # the code this run loads
    left = [(s, seed) for s, seed in todo if f"{s}-{seed}" not in rows]
    print(f"{len(todo)} draws, {len(todo) - len(left)} already done, {len(left)} to run",
          flush=True)

    def on_row(r: dict) -> None:
        rows[r["name"]] = r
        print(line(r), flush=True)
        common.write_json(args.out, document(args, cfg_dict, rows, todo, machine, commit))

    run_pool(run_draw, [(size, seed, str(args.zoo), cfg, commit) for size, seed in left],
             args.workers, on_row)
    doc = document(args, cfg_dict, rows, todo, machine, commit)
    common.write_json(args.out, doc)
    print(json.dumps(doc["summary"]["all"]), json.dumps(doc["summary"]["test_drop"]))
    print(f"wrote {common.portable(str(args.out))}")


if __name__ == "__main__":
    main()
