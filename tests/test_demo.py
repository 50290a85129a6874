"""`audit demo`: the README's main job, end to end on the embedded digits data.

One run per test run (conftest's ``demo_run``: `audit demo --out <tmp> --quiet --device cpu`,
in process, whose zoo entry the other modules share as ``digits_content``): it builds a
content-watermarked digits model and its vanilla twin, verifies, detects, launders with 150
images, verifies again and evaluates. Checked here: the acceptance numbers of summary.json
(watermark accuracy before >= 95%, after <= vanilla rate + 5 points, test accuracy drop
<= 3 points), the Table-2-style summary on stdout, and that --out holds every artefact; the
laundered model's numbers are re-measured with `audit verify` / `audit evaluate`. The wall-clock
acceptance (< 3 min) is measured by bench/verify_zoo.py (bench/results/demo.json), not here.

The demo runs with one torch thread (oversubscribed OpenMP threads slow training 5-10x on a
shared machine).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from audit.cli import run

pytestmark = pytest.mark.slow


def cli(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = run([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_demo_exits_0_quietly(demo_run):
    assert demo_run["rc"] == 0, demo_run["stderr"]
    # --quiet: no step lines, no progress bars, and never a traceback
    assert "[1/6]" not in demo_run["stderr"] and "Traceback" not in demo_run["stderr"]
    assert "error:" not in demo_run["stderr"]


def test_demo_acceptance_numbers(demo_run):
    s = demo_run["summary"]
    assert s is not None, demo_run["stderr"]
    ta, wa, van = s["test_accuracy"], s["watermark_accuracy"], s["vanilla_rate"]
    assert wa["original"] >= 0.95, s
    assert wa["laundered"] <= van + 0.05, s
    assert ta["original"] - ta["laundered"] <= 0.03, s
    assert s["ownership"]["original"] is True and s["ownership"]["p_value_original"] < 0.01
    assert s["ownership"]["laundered"] is False and s["ownership"]["p_value_laundered"] >= 0.01


def test_demo_summary_fields(demo_run):
    s = demo_run["summary"]
    assert s["scheme"] == "content" and s["subset_size"] == 150 and s["train_size"] == 1347
    assert s["subset_share"] == pytest.approx(150 / 1347)
    assert 0 <= s["vanilla_rate"] <= 0.1
    assert 1 <= s["launder_rounds"] <= 3 and s["launder_seconds"] > 0 and s["seconds"] > 0
    det = s["detect"]
    assert det["target"] == 0 and len(det["anomaly_index"]) == 10
    assert all(0 <= k < 10 for k in det["flagged"])


def test_demo_prints_the_table(demo_run):
    out = demo_run["stdout"]
    s = demo_run["summary"]
    assert "Table-2 style" in out
    for label in ("test accuracy %", "watermark accuracy %", "vanilla rate %",
                  "ownership (p<0.01)", "detect: flagged class(es)", "laundering data: 150"):
        assert label in out, out
    wm_line = next(line for line in out.splitlines() if line.startswith("watermark accuracy %"))
    assert f"{100 * s['watermark_accuracy']['original']:.2f}" in wm_line
    assert f"{100 * s['watermark_accuracy']['laundered']:.2f}" in wm_line
    own = next(line for line in out.splitlines() if line.startswith("ownership"))
    assert own.split()[-2:] == ["yes", "no"]


def test_demo_out_folder(demo_run):
    out: Path = demo_run["out"]
    for rel in ("summary.json", "subset.npz", "laundered.onnx", "zoo/watermarked.onnx",
                "zoo/vanilla.onnx", "zoo/meta.json", "detect/report.json",
                "launder/report.json"):
        assert (out / rel).is_file(), rel
    assert (out / "zoo" / "triggers").is_dir() and (out / "zoo" / "data" / "test.npz").is_file()
    assert sorted(p.name for p in (out / "zoo" / "triggers").iterdir()) == ["0"]
    assert len(list((out / "detect").glob("mask_*.png"))) == 10
    det = json.loads((out / "detect" / "report.json").read_text())
    assert det["command"] == "detect" and det["flagged"] == demo_run["summary"]["detect"]["flagged"]
    lau = json.loads((out / "launder" / "report.json").read_text())
    assert lau["command"] == "launder" and lau["inputs"]["subset_size"] == 150
    assert Path(lau["output"]).resolve() == (out / "laundered.onnx").resolve()


def test_demo_numbers_reproduce_with_the_cli(demo_run, capsys):
    """The laundered file on disk gives the summary's numbers under `audit verify/evaluate`."""
    out, s = demo_run["out"], demo_run["summary"]
    rc, o, err = cli(capsys, "verify", out / "laundered.onnx", "--triggers", out / "zoo/triggers",
                     "--vanilla", out / "zoo/vanilla.onnx", "--json", "--device", "cpu")
    v = json.loads(o)
    assert rc == 1 and v["demonstrated"] is False, err
    assert v["watermark_accuracy"] == pytest.approx(s["watermark_accuracy"]["laundered"])
    assert v["vanilla_rate"] == pytest.approx(s["vanilla_rate"])
    rc, o, err = cli(capsys, "verify", out / "zoo/watermarked.onnx", "--triggers",
                     out / "zoo/triggers", "--vanilla", out / "zoo/vanilla.onnx", "--json",
                     "--device", "cpu")
    assert rc == 0 and json.loads(o)["p_value"] == pytest.approx(
        s["ownership"]["p_value_original"]), err
    rc, o, err = cli(capsys, "evaluate", out / "laundered.onnx", "--data",
                     out / "zoo/data/test.npz", "--json", "--device", "cpu")
    assert rc == 0, err
    assert json.loads(o)["accuracy"] == pytest.approx(s["test_accuracy"]["laundered"])
