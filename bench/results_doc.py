"""Write docs/results.md from bench/results/*.json: every table with the command that regenerates it.

Also regenerates two generated blocks: README.md's exporter coverage table (from
bench/results/exporters.json) and docs/formats.md's list of supported ONNX ops (from
audit.converters.registry). The output depends only on those sources, so running it twice gives
the same bytes.

Usage: python bench/results_doc.py [--check]   (--check: exit 1 when a generated file differs)
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
OUT = REPO / "docs" / "results.md"
README = REPO / "README.md"
FORMATS = REPO / "docs" / "formats.md"


def load(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else None


def pct(v: float | None, digits: int = 2) -> str:
    return "–" if v is None else f"{100 * v:.{digits}f}"


def yes(v: bool) -> str:
    return "yes" if v else "**no**"


def table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def section(title: str, command: str, commit: str | None, body: str, note: str = "") -> str:
    out = [f"## {title}", "", f"Regenerate: `{command}`" + (f" (commit `{commit}`)" if commit
                                                            else "")]
    if note:
        out += ["", note]
    return "\n".join(out + ["", body, ""])


def machine_line(m: dict | None) -> str:
    if not m:
        return ""
    cpu = m.get("cpu") or ""
    return (f"Machine: {m.get('cpus')} CPUs {cpu}".rstrip() + f", torch {m.get('torch')}, "
            f"onnxruntime {m.get('onnxruntime')}.")


def _rerun(bench: str, cfg: dict, label: str | None = None) -> str:
    """A laundering bench's command line for one stored configuration, as it reruns today:
    its argv, plus --set for each setting whose default has changed since and that the run did
    not name (its value then: the stored one, or the former default where none is stored),
    plus its --label."""
    sys.path.insert(0, str(REPO))
    from audit.launder import LaunderConfig
    from audit.settings import FORMER_DEFAULTS

    def get(d: object, key: str, missing: object) -> object:
        for part in key.split("."):
            d = d.get(part, missing) if isinstance(d, dict) else missing
        return d

    argv, today = list(cfg["argv"]), LaunderConfig().to_dict()
    for key, former in FORMER_DEFAULTS.items():
        value = get(cfg.get("parameters"), key, former)
        if value != get(today, key, None) and not any(a.startswith(key + "=") for a in argv):
            argv += ["--set", f"{key}={json.dumps(value)}"]
    if label not in (None, "default") and "--label" not in argv:
        argv += ["--label", label]
    return f"python bench/{bench} " + shlex.join(argv)


def launder_mnist(d: dict) -> str:
    parts = []
    for _, cfg in sorted(d["configs"].items(), key=lambda kv: (kv[1]["seed"], kv[0])):
        rows = [[r["scheme"], f"{pct(r['test_acc_before'])} → {pct(r['test_acc_after'])}",
                 f"{pct(r['wm_acc_before'])} → {pct(r['wm_acc_after'])}", pct(r["vanilla_wm_acc"]),
                 f"{r['rounds_run']} ({r['best_round']})", f"{r['seconds']:.0f}", yes(r["pass"])]
                for r in cfg["rows"]]
        cmd = _rerun("launder_mnist.py", cfg)
        parts.append(section(
            f"Laundering MNIST watermarks, subset seed {cfg['seed']}", cmd.strip(), cfg.get("commit"),
            table(["scheme", "test acc % before → after", "wm acc % before → after",
                   "vanilla wm acc %", "rounds (best)", "s", "pass"], rows),
            "Paper Table-5 net from the zoo, laundered with 360 stratified MNIST training images "
            "(0.6%), default settings. Pass: watermark accuracy ≤ vanilla + 2 points, test "
            "accuracy within 2 points. " + machine_line(cfg.get("machine"))))
    return "\n".join(parts)


def launder_badnets(d: dict) -> str:
    parts = []
    for label, cfg in sorted(d["configs"].items()):
        rows = [[str(r["seed"]), f"{pct(r['before']['clean_acc'])} → {pct(r['after']['clean_acc'])}",
                 f"{pct(r['before']['asr'])} → {pct(r['after']['asr'])}", str(r["best_round"]),
                 f"{r['seconds']:.0f}", yes(r["pass"])] for r in cfg["runs"]]
        cmd = _rerun("launder_badnets.py", cfg, label)
        title = "Laundering BadNets-MNIST" + ("" if label == "default" else f" ({label})")
        parts.append(section(
            title, cmd.strip(), cfg.get("commit"),
            table(["subset seed", "clean acc % before → after", "attack success % before → after",
                   "best round", "s", "pass"], rows),
            f"{d['what']}; trigger: {d['trigger']}. Pass: attack success ≤ 2%, clean accuracy "
            "≥ 97%. " + machine_line(cfg.get("machine"))))
    return "\n".join(parts)


def _verdict(v: dict) -> str:
    return (f"{'yes' if v['demonstrated'] else 'no'} ({v['hits']}/{v['n']}, "
            f"p {v['p_value']:.2g})")


def verify_zoo(d: dict) -> str:
    rows = []
    for r in d["rows"]:
        if "skipped" in r:
            continue
        v, ta = r["verify"], r["test_acc"]
        rows.append([f"{r['dataset']}/{r['scheme']}", _verdict(v["watermarked"]),
                     _verdict(v["vanilla"]), _verdict(v["laundered"]),
                     f"{pct(ta['watermarked'])} → {pct(ta['laundered'])}",
                     f"{r['subset_size']} / {r['launder']['seconds']:.0f}", yes(r["pass"])])
    commits = sorted({r.get("commit") for r in d["rows"] if r.get("commit")})
    return section(
        "Ownership verification before and after laundering",
        "python bench/verify_zoo.py --parts digits mnist --mnist-schemes content noise unrelated "
        "adi --copy-from \"$AUDIT_BENCH_ZOO\"", ", ".join(commits),
        table(["entry", "watermarked proves", "vanilla twin proves", "laundered proves",
               "test acc % wm → laundered", "launder images / s", "pass"], rows),
        "`audit verify MODEL --triggers T --vanilla V --json` (one-sided exact binomial test, "
        "α = 0.01) on each zoo entry's watermarked model, its vanilla twin and its laundered "
        "version (`audit launder` defaults, seed 0). Pass: only the watermarked model proves "
        "ownership. " + machine_line(d.get("machine")))


def detect_models(d: dict) -> str:
    rows = []
    for m in d["models"]:
        if m["kind"].startswith("wide"):      # summed up per split below
            continue
        t = m["expected_target"]
        l1 = m["l1_scale"]
        idx = m["target_anomaly_index"] if t is not None else m["max_anomaly_index"]
        rows.append([m["name"], m["kind"], "–" if t is None else str(t),
                     ",".join(map(str, m["candidates"])) or "none",
                     ",".join(map(str, m["flagged"])) or "none", f"{idx:.2f}",
                     ",".join(map(str, l1["flagged"])) or "none", yes(m["pass"])])
    s = d["summary"]
    wide_line = "".join(
        f" Wide zoo, {split} split (draws with a content or noise mark, and every draw's twin): "
        f"targets flagged {v['targets_flagged']}, twins flagged {v['twins_flagged']} "
        f"({v['twins_candidates_unconfirmed']} before confirmation)."
        for split, v in s.get("wide_by_split", {}).items())
    command = "python bench/detect_models.py " + " ".join(d["argv"])
    return section(
        "Backdoor detection", command, d.get("commit"),
        table(["model", "kind", "target", "candidates (index > 1.75)", "flagged (confirmed)",
               "index", "flagged (l1, unconfirmed)", "pass"], rows),
        f"{d['what']}. The index is the target's, or the largest when there is no target. "
        f"All clean models: {s['clean_flagged']} flagged ({s['clean_candidates_unconfirmed']} "
        f"with a candidate before confirmation); backdoored and zoo-watermarked targets flagged "
        f"{s['backdoored_target_flagged']}; `--anomaly-scale l1`: "
        f"{s['l1_scale']['backdoored_target_flagged']} and {s['l1_scale']['clean_flagged']} "
        f"clean models flagged.{wide_line} " + machine_line(d.get("machine")))


def demo(d: dict) -> str:
    rows = []
    for r in d["runs"]:
        s = r.get("summary") or {}
        ta, wa = s.get("test_accuracy", {}), s.get("watermark_accuracy", {})
        own = s.get("ownership", {})
        env = " ".join(f"{k}={v}" for k, v in sorted(r["env"].items())) or "as is"
        rows.append([env, f"{r['seconds']:.1f}",
                     f"{pct(ta.get('original'))} → {pct(ta.get('laundered'))}",
                     f"{pct(wa.get('original'), 0)} → {pct(wa.get('laundered'), 0)}",
                     pct(s.get("vanilla_rate"), 0),
                     f"{'yes' if own.get('original') else 'no'} → "
                     f"{'yes' if own.get('laundered') else 'no'}",
                     ",".join(map(str, s.get("detect", {}).get("flagged", []))) or "none",
                     yes(r["pass"])])
    return section(
        "`audit demo`", "python bench/verify_zoo.py --parts demo", d.get("commit"),
        table(["environment", "s", "test acc %", "wm acc %", "vanilla %", "ownership",
               "detect flags", "pass"], rows),
        f"{d['what']}. Pass: under {d['acceptance']['seconds_max']} s, watermark accuracy ≥ "
        f"{pct(d['acceptance']['wm_before_min'], 0)}% before and ≤ vanilla + 5 points after, "
        "test accuracy within 3 points. " + machine_line(d.get("machine")))


def launder_timing(d: dict) -> str:
    rows = []
    for name, r in d["runs"].items():
        per = "; ".join(" / ".join(f"{k} {v:.1f}" for k, v in rd["seconds"].items()
                                   if k in ("recover", "retrain")) for rd in r["rounds"])
        rows.append([name, str(len(r["rounds"])), f"{r['seconds']:.1f}", per,
                     f"{pct(r['test_acc']['after'])}", f"{pct(r['wm_acc']['after'])}"])
    return section(
        "Laundering time", "python bench/launder_timing.py \"$AUDIT_BENCH_ZOO/mnist_unrelated_s0\"",
        d.get("commit"),
        table(["run", "rounds", "wall s", "per round (s)", "test acc % after",
               "wm acc % after"], rows),
        f"{d['what']}; entry `{d['entry']}`. Median of the all-rounds runs: "
        f"**{d['seconds_all_rounds_median']} s** (target ≤ {d['target_seconds']} s, "
        f"{d['cpus']} CPUs).")


def nc_speed(d: dict) -> str:
    nc = d["nc"]
    rows = [[k, f"{v:.2f}"] for k, v in nc["class_chunk_seconds"].items()]
    return section(
        "Neural Cleanse: classes per forward pass", "python bench/nc_speed.py --threads 2 "
        "--skip-launder", d.get("commit"), table(["classes per pass", "s"], rows),
        f"{d['what']}; all {nc['classes']} classes, {nc['config']['epochs']} epochs × "
        f"{nc['config']['steps_per_epoch']} steps, no early stop; {d['torch_threads']} torch "
        f"threads. Batched (default chunk) over per-class loop: {nc['speedup']}×. "
        + machine_line(d.get("machine")))


def probes(mem: dict | None, thr: dict | None) -> str:
    parts = []
    if mem:
        rows = [[n, str(r["batch_size"]), f"{r['total_peak_mb']:.1f}", f"{r['probe_delta_mb']:.1f}"]
                for n, r in sorted(mem["runs"].items(), key=lambda kv: int(kv[0]))]
        parts.append(section(
            "Probe memory", "python bench/probe_memory.py", mem.get("commit"),
            table(["images", "batch", "peak RSS MB", "added by the probe MB"], rows),
            f"{mem['what']}; {mem['model']}. 10,000 against 100 images: "
            f"+{mem['peak_difference_mb']} MB (limit {mem['limit_mb']:.0f} MB, pass: "
            f"{'yes' if mem['pass'] else 'no'}). " + machine_line(mem.get("machine"))))
    if thr:
        parts.append(section(
            "Probe throughput", "python bench/probe_throughput.py", thr.get("commit"),
            table(["probe", "images/s"],
                  [["onnxruntime (exposed tensors)", f"{thr['ort_images_per_s']:,.0f}"],
                   ["torch forward hooks", f"{thr['torch_hooks_images_per_s']:,.0f}"]]),
            f"{thr['what']}; {thr['n']:,} images, batch {thr['batch_size']}, "
            f"{thr['threads']['torch']} threads; ratio {thr['ort_over_torch']:.2f}×. "
            + machine_line(thr.get("machine"))))
    return "\n".join(parts)


def exporters(d: dict) -> str:
    rows = [[m["name"], m.get("exporter", ""), str(m.get("opset", "")),
             yes(bool(m.get("inspect_ok"))), yes(bool(m.get("launder_ok")))]
            for m in sorted(d["models"], key=lambda m: m["name"])]
    s = d["summary"]
    return section(
        "Exporters", d.get("command", "python bench/exporters.py"),
        (d.get("commit") or d.get("git_commit") or "")[:7],
        table(["model", "exporter", "opset", "inspect", "launder"], rows),
        f"{s['models']} models built; `audit inspect` succeeds on {s['inspect_ok']}, a short "
        f"`audit launder` on {s['launder_ok']}.")


def _rate(g: dict) -> str:
    return f"{g['pass']}/{g['embedded']}" + (f" ({g['errors']} errors)" if g.get("errors") else "")


def _wide_settings(d: dict) -> list[str]:
    """The --set items that give a wide-zoo run's laundering settings today (the run's own
    --set / --config may name settings whose default has changed since)."""
    sys.path.insert(0, str(REPO / "bench"))
    from wide_zoo import overrides

    return overrides(d["launder_config"])


def _without(argv: list[str], options: tuple[str, ...]) -> list[str]:
    """argv less the given options (each with its value)."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] in options:
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


def _wide_command(d: dict, name: str) -> str:
    """The command that reruns a wide-zoo run today, writing to bench/results/<name> (its
    default, or --out): its split, counts and workers, and its settings as --set items."""
    out = _without(list(d.get("argv", [])), ("--out", "--set", "--config"))
    for item in _wide_settings(d):
        out += ["--set", item]
    default = "wide_zoo.json" if d.get("split") == "heldout" else "wide_zoo_dev.json"
    if name != default:
        out += ["--out", f"bench/results/{name}"]
    return "python bench/wide_zoo.py " + " ".join(shlex.quote(a) for a in out)


WIDE_SIZES = {"digits": "digits", "mnist": "MNIST-size", "cifar10": "CIFAR-10"}


def wide_zoo(d: dict, title: str, name: str) -> str:
    """Pass rates of a bench/wide_zoo.py run, overall and per scheme, size and architecture."""
    s = d["summary"]
    rows = [["all", _rate(s["all"])]]
    for key, label in (("by_scheme", "scheme"), ("by_size", "size"), ("by_arch", "architecture"),
                       ("by_exporter", "exporter")):
        rows += [[f"{label} {name}", _rate(g)] for name, g in sorted(s.get(key, {}).items())]
    settings = ", ".join(f"`{v}`" for v in _wide_settings(d)) or "the default settings"
    drop = s.get("test_drop") or {}
    note = (f"{d['split']} split, laundering with {settings}. A draw passes when the laundered "
            "model does not demonstrate ownership (`audit verify` against its twin, alpha 0.01) "
            "and its watermark accuracy is at most the twin's + 2 points; draws whose own "
            "watermark is not demonstrated are left out. Test-accuracy drop: median "
            f"{100 * drop.get('median', float('nan')):.2f}, max {100 * drop.get('max', float('nan')):.2f} "
            "points. " + machine_line(d.get("machine")))
    return section(title, _wide_command(d, name), (d.get("commit") or "")[:7],
                   table(["draws", "passed"], rows), note)


def _laundered_against_reference(d: dict) -> str:
    """The wide-zoo run of the same split judged with the control's reference: the laundered
    models' trigger hits against the higher of the twin's and the second clean model's rates."""
    from scipy.stats import binomtest

    name = "wide_zoo.json" if d["split"] == "heldout" else "wide_zoo_dev.json"
    laundered = load(name)
    if not laundered:
        return ""
    rows = {r["name"]: r for r in laundered["rows"] if not r["error"]}
    judged = []
    for c in d["rows"]:
        r = rows.get(c["name"])
        if c["error"] or not c["embedded"] or r is None or not r["embedded"] \
                or r["draw"] != c["draw"]:
            continue
        n, hits = r["verify_after"]["n"], r["verify_after"]["hits"]
        rate = c["with_reference"]["vanilla_wm_acc"]
        null = min(max(rate, 1 / (2 * n)), 1 - 1 / (2 * n))
        shown = binomtest(hits, n, null, alternative="greater").pvalue < d["acceptance"]["alpha"]
        judged.append(hits / n <= rate + d["acceptance"]["wm_margin"] and not shown)
    if not judged:
        return ""
    return (f" Judged the same way, the laundered models of the {name} run pass on "
            f"{sum(judged)} of these {len(judged)} draws.")


def wide_control(d: dict, title: str, name: str) -> str:
    """Pass rates of bench/wide_control.py: clean models judged by the laundering rule."""
    s = d["summary"]
    ref = s.get("with_reference")
    head = ["draws", "clean model passes"] + (["with the reference model"] if ref else [])
    rows = [["all", _rate(s["all"])] + ([f"{ref['pass']}/{ref['embedded']}"] if ref else [])]
    for key, label in (("by_scheme", "scheme"), ("by_size", "size")):
        for k, g in sorted(s.get(key, {}).items()):
            extra = [f"{ref['by_scheme'].get(k, 0)}/{g['embedded']}"] if ref and key == "by_scheme" \
                else ([""] if ref else [])
            rows.append([f"{label} {k}", _rate(g)] + extra)
    counted = [r for r in d["rows"] if not r["error"] and r["embedded"]]
    shown = {"clean": sum(r["verify_after"]["demonstrated"] for r in counted),
             "watermarked": sum(r["verify_before"]["demonstrated"] for r in counted)}
    diff = s.get("test_diff_abs") or {}
    argv = _without(list(d.get("argv", [])), ("--out",))    # the committed file's name instead
    default = "wide_control.json" if d.get("split") == "heldout" else "wide_control_dev.json"
    if name != default:
        argv += ["--out", f"bench/results/{name}"]
    note = (f"{d['split']} split. Each draw's twin trained again with its training seed + "
            f"{d.get('seed_offset')} (same data, architecture and recipe; it never saw the "
            "trigger set), judged against the twin by the laundering rule: a pass when `audit "
            "verify` (alpha 0.01) does not demonstrate the watermark on it and its watermark "
            "accuracy is at most the twin's + 2 points; draws whose watermarked model does not "
            f"demonstrate its own watermark are left out. `verify` demonstrates the watermark on "
            f"{shown.get('clean')} of these clean models and on {shown.get('watermarked')} "
            "watermarked ones.")
    if ref:
        note += (f" With a second clean model (seed offset {d.get('reference_offset')}) beside "
                 "the twin as `verify`'s reference (`--vanilla TWIN --vanilla SECOND`, the higher "
                 f"rate is the null): on {ref['demonstrated']['clean']} clean and "
                 f"{ref['demonstrated']['watermarked']} watermarked models, and the rule's "
                 "margin is over that rate." + _laundered_against_reference(d))
    note += (f" Test-accuracy difference to the watermarked model: median "
             f"{100 * diff.get('median', 0):.2f}, max {100 * diff.get('max', 0):.2f} points, "
             f"{diff.get('over_2pt')} over 2 points. " + machine_line(d.get("machine")))
    return section(title, "python bench/wide_control.py " + " ".join(shlex.quote(a) for a in argv),
                   (d.get("commit") or "")[:7], table(head, rows), note)


def exporter_coverage(d: dict) -> str:
    """README table: one row per exporter path (exporter, version, opsets, architectures)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for m in d["models"]:
        groups.setdefault((m.get("exporter", ""), str(m.get("exporter_version", ""))), []).append(m)
    rows = []
    for (exporter, version), ms in sorted(groups.items()):
        opsets = sorted({int(m["opset"]) for m in ms if m.get("opset") is not None})
        archs = sorted({m.get("arch", "") for m in ms})
        parity = [m["parity_rel"] for m in ms if m.get("parity_rel") is not None]
        ok = lambda key: f"{sum(bool(m.get(key)) for m in ms)}/{len(ms)}"   # noqa: E731
        rows.append([f"`{exporter}`", version, ", ".join(map(str, opsets)), ", ".join(archs), ok("inspect_ok"),
                     f"{max(parity):.1e}" if parity else "–", ok("launder_ok")])
    s = d["summary"]
    return "\n".join([
        table(["exporter", "version", "opsets", "models", "inspect", "max parity (rel)",
               "launder + write-back"], rows), "",
        f"{s['models']} models; `audit inspect` succeeds on {s['inspect_ok']}, a one-round `audit launder` "
        f"(written back in the model's own opset) on {s['launder_ok']}. Regenerate: "
        f"`{d.get('command', 'python bench/exporters.py')}` (commit "
        f"`{(d.get('commit') or d.get('git_commit') or '')[:7]}`; per-model figures in "
        "[docs/results.md](docs/results.md#exporters))."])


def supported_ops() -> str:
    sys.path.insert(0, str(REPO))
    from audit.converters.registry import support_markdown

    return support_markdown()


def replace_block(text: str, name: str, body: str, where: str = "README.md") -> str:
    begin, end = f"<!-- {name}:begin (bench/results_doc.py) -->", f"<!-- {name}:end -->"
    i, j = text.find(begin), text.find(end)
    if i < 0 or j < i:
        raise SystemExit(f"{where} has no {begin} ... {end} block")
    return text[:i + len(begin)] + "\n" + body.rstrip() + "\n" + text[j:]


def scan_speed(d: dict) -> str:
    rows = [[r["mode"], str(r["models"]), f"{r['seconds']:.0f}", f"{r['models_per_minute']:.2f}"]
            for r in d["rows"]]
    return section(
        "Scan throughput", f"python bench/scan.py --models {d['models']}", d.get("commit"),
        table(["mode", "models", "s", "models / minute"], rows),
        f"{d['what']}. Same verdicts in every mode: {yes(d['same_verdicts_in_every_mode'])}. "
        + machine_line(d.get("machine")))


def render_readme() -> str:
    text = README.read_text()
    d = load("exporters.json")
    if d:
        text = replace_block(text, "exporters", exporter_coverage(d))
    return text


def render_formats() -> str:
    return replace_block(FORMATS.read_text(), "ops", supported_ops(), "docs/formats.md")


#: the paper's Table 2 (Aiken et al. 2020; one round): (dataset, method, scheme) -> test acc
#: before, after, wm acc before, after (percent), data used
PAPER_TABLE2 = {
    ("mnist", "laundering", "content"): (99.90, 98.34, 100, 0.01, "0.6%"),
    ("mnist", "laundering", "noise"): (99.86, 97.45, 99.99, 0.07, "0.6%"),
    ("mnist", "laundering", "unrelated"): (99.92, 98.33, 99.71, 15, "0.6%"),
    ("mnist", "prune", "content"): (99.46, 97.03, 100, 99.95, "16.6%"),
    ("mnist", "prune", "noise"): (99.41, 95.19, 100, 99.55, "16.6%"),
    ("mnist", "prune", "unrelated"): (99.43, 93.55, 100, 99.9, "16.6%"),
    ("cifar10", "laundering", "content"): (90.24, 87.65, 100, 1.4, "0.6%"),
    ("cifar10", "laundering", "noise"): (89.01, 84.14, 100, 0.5, "0.6%"),
    ("cifar10", "laundering", "unrelated"): (89.77, 85.34, 99.94, 16, "0.6%"),
    ("cifar10", "prune", "content"): (78.41, 64.9, 99.93, 99.47, "20%"),
    ("cifar10", "prune", "noise"): (78.49, 59.29, 100, 65.13, "20%"),
    ("cifar10", "prune", "unrelated"): (78.12, 62.15, 99.86, 10.93, "20%"),
}
TABLE2_METHODS = ("laundering", "fine-tune", "prune", "fine-prune", "nc-unlearn", "i-bau")


def _mean_sd(values: list[float]) -> str:
    import statistics

    m = 100 * statistics.fmean(values)
    return f"{m:.2f}" if len(values) < 2 else f"{m:.2f} ± {100 * statistics.stdev(values):.2f}"


def _table2_comparison(rows: list[dict]) -> str:
    """Per scheme: what laundering leaves, and every baseline that also ends ownership, with
    the test accuracy each costs (means over the seeds), so that where laundering does not
    win is said."""
    import statistics

    def summary(sel: list[dict]) -> tuple[float, float, int]:
        return (statistics.fmean(r["wm_acc_after"] for r in sel),
                statistics.fmean(r["test_acc_before"] - r["test_acc_after"] for r in sel),
                sum(r["demonstrated"] for r in sel))

    lines = []
    for scheme in ("content", "noise", "unrelated", "adi"):
        own = [r for r in rows if (r["scheme"], r["method"]) == (scheme, "laundering")]
        if not own or own[0]["vanilla_wm_acc"] is None:
            continue
        wm, drop, proven = summary(own)
        also, some = [], []
        for method in TABLE2_METHODS[1:]:
            sel = [r for r in rows if (r["scheme"], r["method"]) == (scheme, method)]
            if not sel:
                continue
            b_wm, b_drop, b_proven = summary(sel)
            if b_proven == 0:
                cost = ("costs more test accuracy than laundering" if b_drop > drop else
                        "**costs no more test accuracy than laundering**")
                also.append(f"{method} ({pct(b_wm)}% at {100 * b_drop:.2f} points: {cost})")
            elif b_proven < len(sel):
                some.append(f"{method} on {len(sel) - b_proven} of {len(sel)}")
        state = f"ownership still proven on {proven} seed(s)" if proven else "ownership no longer proven"
        partly = f" ({', '.join(some)} seeds)" if some else ""
        lines.append(f"- {scheme}: laundering leaves {pct(wm)}% ({state}) "
                     f"at {100 * drop:.2f} points of test accuracy; "
                     + (f"no baseline ends ownership on every seed{partly}." if not also else
                        "also ending ownership on every seed: " + "; ".join(also)
                        + (f"; on some seeds{partly}" if some else "") + "."))
    return "\n\nWhere laundering stands against the baselines (means over the seeds):\n\n" + \
        "\n".join(lines) + "\n" if lines else ""


def _table2_by_size(d: dict, ds: str) -> str:
    """One line per (scheme, method), one column per subset size: the watermark accuracy left,
    the test accuracy lost and how often ownership is still proven (means over the seeds)."""
    import statistics

    rows = [r for r in d["rows"] if r["dataset"] == ds]
    sizes = [s for s in d["sizes"] if any(r["size"] == s for r in rows)]
    body = []
    for scheme in ("content", "noise", "unrelated", "adi"):
        for method in TABLE2_METHODS:
            cells = []
            for size in sizes:
                sel = [r for r in rows if (r["scheme"], r["method"], r["size"]) == (scheme, method, size)]
                cells.append("" if not sel else
                             f"{100 * statistics.fmean(r['wm_acc_after'] for r in sel):.2f} / "
                             f"{100 * statistics.fmean(r['test_acc_before'] - r['test_acc_after'] for r in sel):.2f}"
                             f" ({sum(r['demonstrated'] for r in sel)}/{len(sel)})")
            if any(cells):
                body.append([scheme, method, *cells])
    body.append(["all", "minutes (sum of the rows)", *[
        f"{sum(r['seconds'] for r in rows if r['size'] == size) / 60:.0f} "
        f"({sum(r['size'] == size for r in rows)} rows)" for size in sizes]])
    head = ["scheme", "method", *[("1 image per class" if s == "1/class" else f"{s}%") for s in sizes]]
    from table2 import parse_args

    runs = [r for r in d.get("runs", []) if not (a := parse_args(r["argv"])).quick
            and a.dataset == ds]
    wall = (f" The runs that measured them (listed under the last size's table) took "
            f"{sum(r['seconds'] for r in runs) / 3600:.1f} h of wall time in all." if runs else "")
    return section(f"Table 2: {ds}, every subset size",
                   f"python bench/table2.py --dataset {ds} --sizes {' '.join(d['sizes'])} --seeds 0 1 2 --resume",
                   None, table(head, body),
                   "Each cell: watermark accuracy % after / test accuracy points lost (ownership "
                   "still proven on k of n subset seeds), means over the subset seeds; "
                   "the tables below give before → after, the spread, the commits and the runs. "
                   "The last line: the rows' own wall time (one torch thread each, 2-core "
                   f"machine).{wall} "
                   "The methods run on one subset (scheme, size, subset seed) are compared on "
                   "one build of each zoo model; sizes may come from different builds of the same "
                   "recipe (each size's table gives its models' accuracies before and says where "
                   "its seeds' builds differ). Training is deterministic on one machine, not "
                   "across CPUs: bench/zoo keeps the builds, bench/table2.py restores them on any "
                   "machine and does not put a row beside its subset's rows from another build "
                   "(each row's `zoo_sha256`, or for rows without one the record under `zoo`, "
                   "names its build).")


def _measures(argv: list[str], ds: str, size: str) -> bool:
    """Whether the bench/table2.py command line `argv` measures rows of `ds` at subset `size`."""
    from table2 import parse_args

    args = parse_args(argv)
    return args.dataset == ds and size in args.sizes


def table2(d: dict) -> str:
    """Table 2: one table per (data set, subset size), rows scheme x method, mean ± sd over
    the subset seeds; the paper's figures in their own columns where it has them."""
    from table2 import build_of

    groups: dict[tuple[str, str], list[dict]] = {}
    for r in d["rows"]:
        groups.setdefault((r["dataset"], r["size"]), []).append(r)
    order = {s: i for i, s in enumerate(d["sizes"])}
    parts = []
    datasets = ("mnist", "cifar10", "badnets")
    parts += [_table2_by_size(d, ds) for ds in datasets
              if len({r["size"] for r in d["rows"] if r["dataset"] == ds}) > 1]
    for (ds, size), rows in sorted(groups.items(), key=lambda kv: (datasets.index(kv[0][0]),
                                                                  order[kv[0][1]])):
        body = []
        for scheme in ("content", "noise", "unrelated", "adi", "badnets"):
            for method in TABLE2_METHODS:
                sel = [r for r in rows if (r["scheme"], r["method"]) == (scheme, method)]
                if not sel:
                    continue
                paper = PAPER_TABLE2.get((ds, method, scheme))
                twin = sel[0]["vanilla_wm_acc"] is not None
                body.append([
                    scheme, method, str(len(sel)),
                    f"{_mean_sd([r['test_acc_before'] for r in sel])} → "
                    f"{_mean_sd([r['test_acc_after'] for r in sel])}",
                    f"{_mean_sd([r['wm_acc_before'] for r in sel])} → "
                    f"{_mean_sd([r['wm_acc_after'] for r in sel])}",
                    _mean_sd([r["vanilla_wm_acc"] for r in sel]) if twin else "–",
                    f"{sum(r['demonstrated'] for r in sel)}/{len(sel)}" if twin else "–",
                    f"{max(r['p_value'] for r in sel):.2g}" if twin else "–",
                    f"{sum(r['seconds'] for r in sel) / len(sel):.0f}",
                    "–" if paper is None else f"{paper[0]} → {paper[1]} / {paper[2]} → {paper[3]} "
                                              f"({paper[4]})"])
        n = rows[0]["n"]
        share = "one image per class" if size == "1/class" else f"{size}% of the training set"
        zoo = "".join(
            f" Zoo {name.split('/')[1]}: test accuracy {pct(z['test_acc']['watermarked'])}% (twin "
            f"{pct(z['test_acc']['vanilla'])}%), watermark {pct(z['wm_acc']['watermarked'])}% (twin "
            f"{pct(z['wm_acc']['vanilla'])}%); built in {z['timings']['total_s'] / 60:.0f} min "
            f"(watermarked {z['timings']['train_watermarked_s'] / 60:.0f}, twin "
            f"{z['timings']['train_vanilla_s'] / 60:.0f})."
            for name, z in sorted(d.get("zoo", {}).items()) if name.startswith(f"{ds}/")
            and ds == "cifar10")
        commits = {r["commit"] for r in rows}
        builds: dict[str, set] = {}
        for r in rows:
            builds.setdefault(r["scheme"], set()).add(build_of(r, d.get("zoo", {})))
        mixed = sorted(f"{scheme} from {len(b)}" for scheme, b in builds.items() if len(b) > 1)
        commands = sorted({"python bench/table2.py " + " ".join(run["argv"]) for run in d["runs"]
                           if run["commit"] in commits and _measures(run["argv"], ds, size)})
        parts.append(section(
            f"Table 2: {ds}, {share} ({n} images)",
            "`, `".join(commands).strip(), ", ".join(sorted(commits)),
            table(["scheme", "method", "seeds", "test acc % before → after", "wm acc % before → after",
                   "vanilla wm acc %", "ownership still proven", "largest p", "s",
                   "paper: test / wm acc % (data)"], body),
            ("The published BadNets model" if ds == "badnets" else "Zoo models")
            + ", `audit launder --method M` defaults, stratified subsets (mean ± sd over "
            "the subset seeds). Ownership: `audit verify`'s exact binomial test against the "
            "vanilla twin's rate, α = 0.01 (a proof left after removal is a failure of the "
            "method). The paper's rows are one round of its own models; its pruning rows used "
            "more data, as the last column says."
            + (f" The subset seeds' zoo models come from more than one build ({', '.join(mixed)} "
               "builds of the same recipe; each seed's methods share one): the before columns "
               "show their spread." if mixed else "")
            + (" CIFAR-10 here: the Table-7 net trained on 8,000 of the 10,000 JPEG-decoded "
               "test images (no training set offline), tested on the other 2,000; the subsets "
               "are drawn from the 8,000 as shares of the 50,000-image training set." + zoo
               if ds == "cifar10" else "")
            + (" BadNets: the published model; its watermark accuracy is the attack success "
               "on the stamped test images of the other classes (no vanilla twin, no test)."
               if ds == "badnets" else "")) + _table2_comparison(rows))
    runs = "; ".join(f"`python bench/table2.py {' '.join(r['argv'])}`: {r['rows']} rows in "
                     f"{r['seconds'] / 60:.1f} min ({r['workers']} worker process"
                     f"{'es' if r['workers'] > 1 else ''}, commit {r['commit']})"
                     for r in d["runs"] if r["commit"] in {row["commit"] for row in d["rows"]})
    parts.append(f"\nRuns: {runs}. Figure 3 (laundering's accuracies after each round, one line "
                 "per subset size): [bench/results/figure3.png](../bench/results/figure3.png).\n")
    return "\n".join(parts)


def render() -> str:
    out = ["# Results", "",
           "Generated by `python bench/results_doc.py` from `bench/results/*.json`; do not edit "
           "by hand. Each table names the command that regenerates its JSON file and the commit "
           "it was measured at. The real data sets (MNIST, the BadNets model, third-party "
           "models, the Adi trigger set) live in `shared/data` beside the repository; zoo models "
           "are built into `$AUDIT_BENCH_ZOO`, their builds kept in `bench/zoo`, from which "
           "any machine restores the same models (see `bench/common.py`). Every run uses seed 0 "
           "and the default settings unless the command says otherwise.", ""]
    d = load("launder_mnist.json")
    if d:
        out.append(launder_mnist(d))
    d = load("launder_badnets.json")
    if d:
        out.append(launder_badnets(d))
    for name, fn in (("table2.json", table2), ("verify_zoo.json", verify_zoo), ("detect_models.json", detect_models),
                     ("scan.json", scan_speed),
                     ("demo.json", demo), ("launder_timing.json", launder_timing),
                     ("nc_speed.json", nc_speed)):
        d = load(name)
        if d:
            out.append(fn(d))
    out.append(probes(load("probe_memory.json"), load("probe_throughput.json")))
    for path in sorted(RESULTS.glob("wide_zoo*.json"), key=lambda p: (p.stem.startswith("wide_zoo_dev"), p.stem)):
        d = load(path.name)
        given = _wide_settings(d)
        req = d.get("requested") or {}
        counts = ", ".join(f"{n} {WIDE_SIZES.get(size, size)}" for size, n in req.items() if n)
        # NAME_base.json: the run NAME.json is compared with, on the zoo build NAME.json used
        pair = path.stem.removesuffix("_base")
        what = ", ".join(given) or ("default settings" if pair != path.stem else "")
        if pair != path.stem:
            what += f", the zoo build of {pair}.json"
        title = ("Wide zoo, " + ("held-out" if d["split"] == "heldout" else "dev") + " split"
                 + (f", {counts}" if counts else "") + (f" ({what})" if what else ""))
        out.append(wide_zoo(d, title, path.name))
    for path in sorted(RESULTS.glob("wide_control*.json"), key=lambda p: p.stem):
        d = load(path.name)
        req = d.get("requested") or {}
        counts = ", ".join(f"{n} {WIDE_SIZES.get(size, size)}" for size, n in req.items() if n)
        title = ("Clean models under the laundering rule, "
                 + ("held-out" if d["split"] == "heldout" else "dev") + " split"
                 + (f", {counts}" if counts else "") + f" (seed offset {d.get('seed_offset')})")
        out.append(wide_control(d, title, path.name))
    d = load("exporters.json")
    if d:
        out.append(exporters(d))
    return "\n".join(s for s in out if s is not None).rstrip() + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if docs/results.md is stale")
    args = ap.parse_args()
    outputs = {OUT: render(), README: render_readme(), FORMATS: render_formats()}
    if args.check:
        stale = [p.relative_to(REPO) for p, text in outputs.items() if not p.is_file() or p.read_text() != text]
        print("stale: " + ", ".join(map(str, stale)) if stale else "generated files are up to date")
        return 1 if stale else 0
    for path, text in outputs.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
