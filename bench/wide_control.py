"""The wide zoo's acceptance rule applied to clean models (models_zoo/wide.py: control_draw).

For each draw of the split, the draw's vanilla twin is trained again with another seed (same
data, architecture, recipe; it never saw the trigger set) and judged exactly as
bench/wide_zoo.py judges a laundered model: it passes when `audit verify` (binomial test
against the twin, alpha 0.01) does not demonstrate the watermark on it and its watermark
accuracy is at most the twin's + 0.02. A clean model is what perfect laundering could at best
produce, so the share of draws it passes is the most the rule lets any laundering reach; its
test-accuracy difference to the watermarked model ("test_drop") shows how far two training
runs of one recipe lie apart on the draw's test set.

Draws whose watermarked model does not demonstrate its own watermark are left out of the pass
rates, as in bench/wide_zoo.py. Results go to --out (bench/results/wide_control.json for the
held-out split, wide_control_dev.json for dev) after every draw, atomically; a rerun with the
same split keeps the rows it finds (same draw, no error).

With --reference-offset K each draw also gets a second clean model (seed offset K), and the
clean model is judged again with `verify` against the twin and that model together (the higher
of their rates is the null: `audit verify --vanilla A --vanilla B`); so is the watermarked
model, which must still demonstrate its watermark (row["with_reference"], summary
"with_reference").

Usage: python bench/wide_control.py --split heldout --digits 80 [--mnist M] [--zoo DIR]
       [--out FILE] [--workers N] [--seed-offset K] [--reference-offset K2] [--fresh]
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
from wide_zoo import (  # noqa: E402
    SIZES,
    _mark_summary,
    _rate,
    check_draw_args,
    draw_parser,
    fail,
    prepare,
    run_pool,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = draw_parser(__doc__, "wide_control")
    ap.add_argument("--seed-offset", type=int, default=None,
                    help="the clean model's training seed is the twin's plus this (default "
                         "models_zoo.wide.CONTROL_SEED_OFFSET)")
    ap.add_argument("--reference-offset", type=int, default=None,
                    help="also verify against the twin and a second clean model (this seed "
                         "offset): the higher of their rates is the null")
    ap.add_argument("--fresh", action="store_true", help="ignore rows already in --out")
    args = ap.parse_args(argv)
    check_draw_args(ap, args, "wide_control")
    return args


def run_draw(size: str, seed: int, zoo: str, commit: str, offset: int,
             reference: int | None) -> dict:
    """Build (cached) the draw and its clean model and judge it; a failure is a row with its
    one-line error."""
    from audit.errors import one_line
    from audit.models_zoo.wide import control_draw, make_draw

    d = make_draw(seed, size)
    row = {"name": d.name, "size": size, "seed": seed, "split": d.split, "scheme": d.scheme,
           "arch": d.arch, "input": f"{d.input_hw}x{d.input_hw}", "exporter": d.exporter,
           "target": d.target, "watermark": _mark_summary(d.to_dict()), "draw": d.to_dict(),
           "error": None}
    t = time.perf_counter()
    try:
        row.update(control_draw(d, zoo, offset=offset, reference_offset=reference))
    except Exception as exc:   # recorded, the other draws go on
        row.update(error=f"{type(exc).__name__}: {one_line(str(exc))}", **{"pass": False})
    row.update(wall_s=round(time.perf_counter() - t, 1), commit=commit)
    return row


def summary(rows: list[dict]) -> dict:
    """Pass rates (over draws whose watermark embedded) per scheme and size; the clean
    model's test-accuracy difference to the watermarked model."""
    ok = [r for r in rows if not r["error"]]
    diffs = [abs(r["test_drop"]) for r in ok]
    out = {"all": _rate(rows),
           "test_diff_abs": {"median": round(statistics.median(diffs), 4) if diffs else None,
                             "max": max(diffs) if diffs else None,
                             "over_1pt": sum(v > 0.01 for v in diffs),
                             "over_2pt": sum(v > 0.02 for v in diffs)}}
    for key in ("scheme", "size"):
        groups: dict[str, list[dict]] = {}
        for r in rows:
            groups.setdefault(str(r[key]), []).append(r)
        out[f"by_{key}"] = {k: _rate(v) for k, v in sorted(groups.items())}
    emb = [r for r in ok if r["embedded"]]
    out["demonstrated"] = {"clean": sum(r["verify_after"]["demonstrated"] for r in emb),
                           "watermarked": sum(r["verify_before"]["demonstrated"] for r in emb)}
    if emb and all("with_reference" in r for r in emb):
        ref = [r["with_reference"] for r in emb]
        out["with_reference"] = {
            "pass": sum(w["pass"] for w in ref), "embedded": len(emb),
            "by_scheme": {s: sum(r["with_reference"]["pass"] for r in emb if r["scheme"] == s)
                          for s in sorted({r["scheme"] for r in emb})},
            "demonstrated": {"clean": sum(w["verify_after"]["demonstrated"] for w in ref),
                             "watermarked": sum(w["verify_before"]["demonstrated"] for w in ref)}}
    out["errors"] = {r["name"]: r["error"] for r in rows if r["error"]}
    return out


def line(r: dict) -> str:
    head = f"{r['name']:<12} {r['scheme']:<9} {r['arch']:<7} {r['input']:<6}"
    if r["error"]:
        return f"{head} ERROR {r['error']}"
    return (f"{head} clean model wm {r['wm_acc_after']:.3f} (twin {r['vanilla_wm_acc']:.3f}, "
            f"n {r['n_trigger']}) p {r['verify_after']['p_value']:.2g} test "
            f"{r['test_acc_after']:.3f} (watermarked {r['test_acc_before']:.3f}) "
            f"{'PASS' if r['pass'] else 'fail' if r['embedded'] else 'not embedded'}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    prepare(args)
    from audit.errors import AuditError
    from audit.models_zoo.wide import ACCEPT, CONTROL_SEED_OFFSET, draws

    offset = CONTROL_SEED_OFFSET if args.seed_offset is None else args.seed_offset

    try:
        chosen = {d.name: d for s in SIZES if getattr(args, s)
                  for d in draws(args.split, getattr(args, s), s)}
    except AuditError as exc:
        fail(str(exc))
    todo = [(d.size, d.seed) for d in chosen.values()]
    rows: dict[str, dict] = {}
    if not args.fresh and args.out.is_file():
        try:
            old = json.loads(args.out.read_text())
            if (old.get("split"), old.get("seed_offset"), old.get("reference_offset")) != \
                    (args.split, offset, args.reference_offset):
                fail(f"{args.out} holds a run of another split or seed offsets; give another "
                     "--out or --fresh")
            rows = {r["name"]: r for r in old["rows"] if not r.get("error")
                    and r["name"] in chosen and r["draw"] == chosen[r["name"]].to_dict()}
        except (OSError, ValueError, KeyError, TypeError):
            fail(f"{args.out}: not a results file of this bench; give another --out or --fresh")
    machine, commit = common.machine(), common.commit()
    left = [(s, seed) for s, seed in todo if f"{s}-{seed}" not in rows]
    print(f"{len(todo)} draws, {len(todo) - len(left)} already done, {len(left)} to run",
          flush=True)

    def document() -> dict:
        ordered = sorted(rows.values(), key=lambda r: (SIZES.index(r["size"]), r["seed"]))
        return {"what": "wide zoo: each draw's twin retrained with another seed (a clean "
                        "model) and judged by the laundering acceptance rule against the twin; "
                        "pass = not demonstrated (binomial test vs the twin, alpha 0.01) and "
                        "watermark accuracy <= the twin's + 0.02",
                "split": args.split, "requested": {s: getattr(args, s) for s in SIZES},
                "complete": len(ordered) == len(todo) and not any(r["error"] for r in ordered),
                "seed_offset": offset, "reference_offset": args.reference_offset,
                "acceptance": ACCEPT,
                "zoo": str(args.zoo), "argv": sys.argv[1:], "commit": commit,
                "machine": machine, "summary": summary(ordered), "rows": ordered}

    def on_row(r: dict) -> None:
        rows[r["name"]] = r
        print(line(r), flush=True)
        common.write_json(args.out, document())

    run_pool(run_draw, [(size, seed, str(args.zoo), commit, offset, args.reference_offset)
                        for size, seed in left], args.workers, on_row)
    doc = document()
    common.write_json(args.out, doc)
    print(json.dumps(doc["summary"]["all"]), json.dumps(doc["summary"]["test_diff_abs"]))
    print(f"wrote {common.portable(str(args.out))}")


if __name__ == "__main__":
    main()
