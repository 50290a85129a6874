"""`audit verify` and `audit detect`: ownership proofs and backdoor detection.

Always-on part: one Zhang-content watermarked digits CNN and its vanilla twin, built once per
test run by the zoo (conftest's ``digits_content``, default recipe), and the laundered copy
conftest's ``digits_content_laundered`` makes once per test run with `audit launder` from a
150-image stratified subset of the zoo's data/train.npz (default settings; the numbers for all
four schemes are in bench/verify_zoo.py).
Checked through the CLI (in process): verify exit codes, JSON fields,
p-values against an independent scipy computation, --null-rate, detect on the watermarked model
(target flagged, exit 1) and on the vanilla twin (nothing flagged, exit 0), bad inputs (exit 2,
one `error:` line). Unit tests of verify_predictions and anomaly_index use hand-made numbers.
Neural Cleanse on the published BadNets model is checked by tests/test_launder.py, whose
laundering of it starts with a recovery.

The machine running the suite may be shared with other jobs: torch is limited to one thread
for this module (oversubscribed OpenMP threads slow training 5-10x), restored afterwards.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest

from audit.cli import run
from audit.confirm import REFERENCE_MAX, REFERENCE_MIN_ACCURACY
from audit.data import Preprocess, load_dataset
from audit.nc import ANOMALY_THRESHOLD, MAD_CONSTANT, anomaly_index
from audit.settings import DETECT_THRESHOLD
from audit.verify import effective_null_rate, verify_predictions

pytestmark = pytest.mark.xdist_group(__name__)   # one worker runs the module's detect

PP = Preprocess()                       # the digits zoo models take u8/255
GEO = dict(channels=1, height=16, width=16)
VERIFY_KEYS = {"n", "hits", "watermark_accuracy", "vanilla_rate", "p_value", "demonstrated",
               "confusion"}


def cli(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = run([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def cli_json(capsys, *args) -> tuple[int, dict, str]:
    rc, out, err = cli(capsys, *args, "--json")
    return rc, (json.loads(out) if out.strip() else {}), err


def assert_one_error_line(rc: int, err: str, *expect: str) -> None:
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err and "internal error" not in err, err
    for e in expect:
        assert e in lines[0], lines[0]


def ort_predict(path: Path, x01: np.ndarray, pp: Preprocess = PP) -> np.ndarray:
    """Top-1 predictions straight from onnxruntime (independent of audit.graphs)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: pp.apply_numpy(x01)})[0].argmax(1)


def tiny_onnx(path: Path, shape: tuple[int, int, int], classes: int) -> Path:
    """A linear classifier of the given input shape and class count (TorchScript exporter)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(shape)), classes)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.zeros(1, *shape), str(path), dynamo=False,
                          opset_version=13, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return path


# ------------------------------------------------------------------------------------------
# fixtures: the zoo entry and the CLI launder are conftest's, shared by the test run


@pytest.fixture(scope="module")
def zoo(tmp_path_factory, one_thread, digits_content, digits_content_subset) -> dict:
    work = tmp_path_factory.mktemp("verify_zoo") / "work"
    work.mkdir()
    return {"entry": digits_content, "work": work, "subset": digits_content_subset["path"],
            "triggers": load_dataset(digits_content.triggers, **GEO)}


@pytest.fixture(scope="module")
def laundered(digits_content_laundered) -> Path:
    assert digits_content_laundered["rc"] == 0 and digits_content_laundered["out"].is_file()
    return digits_content_laundered["out"]


@pytest.fixture(scope="module")
def bad_models(zoo) -> dict[str, Path]:
    work = zoo["work"]
    return {"input28": tiny_onnx(work / "vanilla_28x28.onnx", (1, 28, 28), 10),
            "rgb16": tiny_onnx(work / "vanilla_rgb16.onnx", (3, 16, 16), 10),
            "classes5": tiny_onnx(work / "vanilla_5classes.onnx", (1, 16, 16), 5)}


# ------------------------------------------------------------------------------------------
# audit verify: watermarked / vanilla / laundered


def test_premise_zoo_entry(zoo):
    e = zoo["entry"]
    assert e.meta["target"] == 0 and e.meta["n_trigger"] == len(zoo["triggers"]) == 100
    assert e.wm_acc["watermarked"] >= 0.95 and e.wm_acc["vanilla"] <= 0.1


def test_verify_watermarked_with_vanilla(zoo, capsys):
    e = zoo["entry"]
    rc, d, err = cli_json(capsys, "verify", e.watermarked, "--triggers", e.triggers,
                          "--vanilla", e.vanilla, "--device", "cpu")
    assert rc == 0, err
    assert VERIFY_KEYS <= set(d)
    assert d["demonstrated"] is True and d["p_value"] < 0.01
    assert d["n"] == 100 and d["hits"] == round(d["watermark_accuracy"] * 100)
    assert d["watermark_accuracy"] >= 0.95
    assert d["vanilla_source"] == f"model:{e.vanilla}" and d["vanilla_hits"] is not None
    assert d["vanilla_rate"] == d["vanilla_hits"] / d["n"] <= 0.1
    assert d["alpha"] == 0.01
    # confusion: trigger label -> {predicted: count}; all triggers carry the target label 0
    assert set(d["confusion"]) == {"0"}
    assert sum(d["confusion"]["0"].values()) == 100
    assert d["confusion"]["0"].get("0", 0) == d["hits"]


def test_verify_several_vanillas_take_the_highest_rate(zoo, capsys):
    """--vanilla repeated: each clean model's hits are reported and the highest rate is the
    null; a "clean" model that answers the watermark labels (here the watermarked model
    itself) leaves nothing to demonstrate."""
    e = zoo["entry"]
    rc, one, err = cli_json(capsys, "verify", e.watermarked, "--triggers", e.triggers,
                            "--vanilla", e.vanilla, "--device", "cpu")
    assert rc == 0, err
    assert one["vanilla_models"] == [{"model": str(e.vanilla), "hits": one["vanilla_hits"],
                                      "rate": one["vanilla_rate"]}]
    rc, two, err = cli_json(capsys, "verify", e.watermarked, "--triggers", e.triggers,
                            "--vanilla", e.vanilla, "--vanilla", e.watermarked, "--device", "cpu")
    assert rc == 1, err
    assert [m["hits"] for m in two["vanilla_models"]] == [one["vanilla_hits"], one["hits"]]
    assert two["vanilla_source"] == f"model:{e.watermarked}"
    assert (two["vanilla_hits"], two["vanilla_rate"]) == (one["hits"], one["watermark_accuracy"])
    assert two["demonstrated"] is False and two["p_value"] > 0.5
    # the same clean model twice is the same test as once
    rc, same, err = cli_json(capsys, "verify", e.watermarked, "--triggers", e.triggers,
                             "--vanilla", e.vanilla, "--vanilla", e.vanilla, "--device", "cpu")
    assert rc == 0 and same["p_value"] == one["p_value"]
    assert same["vanilla_source"] == one["vanilla_source"] and len(same["vanilla_models"]) == 2
    rc, out, err = cli(capsys, "verify", e.watermarked, "--triggers", e.triggers,
                       "--vanilla", e.vanilla, "--vanilla", e.watermarked, "--device", "cpu")
    assert rc == 1 and "the highest of 2 clean models" in out


def test_verify_text_output_and_report_file(zoo, tmp_path, capsys):
    e = zoo["entry"]
    rep = tmp_path / "verify.json"
    rc, out, err = cli(capsys, "verify", e.watermarked, "--triggers", e.triggers,
                       "--vanilla", e.vanilla, "--report", rep, "--device", "cpu")
    assert rc == 0, err
    assert "ownership          DEMONSTRATED" in out and "p-value" in out
    d = json.loads(rep.read_text())
    assert VERIFY_KEYS <= set(d) and d["demonstrated"] is True


def test_verify_p_value_matches_scipy(zoo, capsys):
    """Hits and vanilla hits counted with onnxruntime directly; p-value from scipy.binomtest."""
    e, trig = zoo["entry"], zoo["triggers"]
    hits = int((ort_predict(e.watermarked, trig.x) == trig.y).sum())
    van_hits = int((ort_predict(e.vanilla, trig.x) == trig.y).sum())
    n = len(trig)
    rc, d, err = cli_json(capsys, "verify", e.watermarked, "--triggers", e.triggers,
                          "--vanilla", e.vanilla, "--device", "cpu")
    assert rc == 0, err
    assert (d["hits"], d["vanilla_hits"], d["n"]) == (hits, van_hits, n)
    p0 = min(max(van_hits / n, 1 / (2 * n)), 1 - 1 / (2 * n))
    assert d["null_rate"] == pytest.approx(p0)
    assert d["p_value"] == pytest.approx(binomtest(hits, n, p0, alternative="greater").pvalue,
                                         rel=1e-9, abs=1e-300)
    # against a given rate (no clamping needed): 0.3
    rc, d, err = cli_json(capsys, "verify", e.watermarked, "--triggers", e.triggers,
                          "--null-rate", "0.3", "--device", "cpu")
    assert rc == 0, err
    expect = binomtest(hits, n, 0.3, alternative="greater").pvalue
    assert d["p_value"] == pytest.approx(expect, rel=1e-9, abs=1e-300)
    assert d["vanilla_source"] == "given" and d["vanilla_rate"] == 0.3 and d["null_rate"] == 0.3


def test_verify_default_null_rate_is_chance(zoo, capsys):
    e = zoo["entry"]
    rc, d, err = cli_json(capsys, "verify", e.watermarked, "--triggers", e.triggers,
                          "--device", "cpu")
    assert rc == 0, err
    assert d["vanilla_source"] == "chance" and d["vanilla_rate"] == pytest.approx(0.1)
    assert d["vanilla_hits"] is None


def test_verify_null_rate_option(zoo, capsys):
    e = zoo["entry"]
    # a null rate of 1 (every vanilla model would answer the watermark label) proves nothing:
    # it is clamped to 1 - 1/(2n) and 100/100 hits are not significant against it
    rc, d, err = cli_json(capsys, "verify", e.watermarked, "--triggers", e.triggers,
                          "--null-rate", "1", "--device", "cpu")
    assert rc == 1, err
    assert d["demonstrated"] is False and d["null_rate"] == pytest.approx(1 - 1 / 200)
    assert d["p_value"] == pytest.approx(binomtest(d["hits"], 100, 0.995, "greater").pvalue)
    # a rate of 0 is clamped to 1/(2n): one lucky hit is not proof
    rc, d, err = cli_json(capsys, "verify", e.watermarked, "--triggers", e.triggers,
                          "--null-rate", "0", "--device", "cpu")
    assert rc == 0 and d["null_rate"] == pytest.approx(1 / 200)


def test_verify_alpha(zoo, capsys):
    e = zoo["entry"]
    # 100/100 hits against 0.95 (p = 0.95**100 ~ 0.0059): significant at 0.01, not at 0.001
    args = ["verify", e.watermarked, "--triggers", e.triggers, "--null-rate", "0.95",
            "--device", "cpu"]
    rc, d, _ = cli_json(capsys, *args)
    if d["hits"] == 100:
        assert rc == 0 and d["p_value"] == pytest.approx(0.95 ** 100)
        rc, d, _ = cli_json(capsys, *args, "--alpha", "0.001")
        assert rc == 1 and d["demonstrated"] is False and d["alpha"] == 0.001
    else:
        assert rc == 1


def test_verify_vanilla_twin_not_demonstrated(zoo, capsys):
    e = zoo["entry"]
    rc, d, err = cli_json(capsys, "verify", e.vanilla, "--triggers", e.triggers,
                          "--vanilla", e.vanilla, "--device", "cpu")
    assert rc == 1, err
    assert d["demonstrated"] is False and d["p_value"] >= 0.01
    # and against chance (1/10) too
    rc, d, err = cli_json(capsys, "verify", e.vanilla, "--triggers", e.triggers,
                          "--device", "cpu")
    assert rc == 1 and d["demonstrated"] is False and d["watermark_accuracy"] <= 0.1
    rc, out, err = cli(capsys, "verify", e.vanilla, "--triggers", e.triggers, "--device", "cpu")
    assert rc == 1 and "ownership          NOT demonstrated" in out


def test_verify_laundered_not_demonstrated(zoo, laundered, capsys):
    e = zoo["entry"]
    rc, d, err = cli_json(capsys, "verify", laundered, "--triggers", e.triggers,
                          "--vanilla", e.vanilla, "--device", "cpu")
    assert rc == 1, err
    assert d["demonstrated"] is False and d["p_value"] >= 0.01
    assert d["watermark_accuracy"] <= d["vanilla_rate"] + 0.05


# ------------------------------------------------------------------------------------------
# audit detect


@pytest.fixture(scope="module")
def detected(zoo, tmp_path_factory) -> dict:
    """`audit detect --json --report DIR` on the watermarked model (default settings), run once."""
    import contextlib
    import io

    e = zoo["entry"]
    rep = tmp_path_factory.mktemp("detect") / "report"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = run(["detect", str(e.watermarked), "--data", str(e.data_dir / "test.npz"), "--json",
                  "--report", str(rep), "--device", "cpu", "--quiet"])
    return {"rc": rc, "json": json.loads(buf.getvalue()) if buf.getvalue() else None,
            "report_dir": rep}


def test_detect_flags_the_content_target(zoo, detected):
    e, d, rep = zoo["entry"], detected["json"], detected["report_dir"]
    assert detected["rc"] == 1, d
    assert d["suspected"] is True and e.meta["target"] in d["flagged"]
    assert d["anomaly_threshold"] == DETECT_THRESHOLD
    assert d["anomaly_index"][e.meta["target"]] > ANOMALY_THRESHOLD
    assert d["most_likely_infected"] == e.meta["target"]
    assert len(d["norms"]) == len(d["anomaly_index"]) == len(d["attack_success"]) == 10
    # 450 clean images: a stratified fifth is held out for the confirmation's transfer check
    assert d["n_images"] == 360 and d["n_held_out"] == 90
    (c,) = [c for c in d["confirmation"] if c["cls"] == e.meta["target"]]
    assert c["confirmed"] and min(c["transfer"]) >= 0.8 and c["restart_index"] > ANOMALY_THRESHOLD
    # the watermark's triggers are the model's own: clean reference classifiers trained on the
    # same images (which they classify well) ignore them
    assert min(c["reference_accuracy"]) >= REFERENCE_MIN_ACCURACY, c
    assert len(c["reference"]) == 3 and np.mean(c["reference"]) < REFERENCE_MAX / 2, c
    report = json.loads((rep / "report.json").read_text())
    assert report["command"] == "detect" and report["flagged"] == d["flagged"]
    assert (rep / f"mask_{e.meta['target']}.png").is_file()


def test_detect_l1_scale_scores_the_same_recovery(zoo, detected, capsys):
    """Neural Cleanse's index on the norms themselves (always in the JSON as
    ``anomaly_index_l1``) flags the target too; with `--anomaly-scale l1` the JSON says so and
    its ``anomaly_index`` is that index."""
    e, d = zoo["entry"], detected["json"]
    norms = np.asarray(d["norms"])
    idx_l1, flagged_l1 = anomaly_index(norms)
    np.testing.assert_allclose(d["anomaly_index_l1"], idx_l1, rtol=1e-9)
    assert flagged_l1[0] == e.meta["target"], idx_l1
    rc, d1, err = cli_json(capsys, "detect", e.watermarked, "--data", e.data_dir / "test.npz",
                           "--anomaly-scale", "l1", "--nc-epochs", "2", "--max-images", "200",
                           "--device", "cpu", "--quiet")
    assert rc in (0, 1), err
    assert d1["anomaly_scale"] == "l1" and d["anomaly_scale"] == "log"
    np.testing.assert_allclose(d1["anomaly_index"], anomaly_index(np.asarray(d1["norms"]))[0],
                               rtol=1e-9)
    np.testing.assert_allclose(d1["anomaly_index_l1"], d1["anomaly_index"], rtol=1e-9)


def test_detect_without_confirmation_uses_neural_cleanse_threshold(zoo, capsys):
    """--no-confirm flags every candidate, so candidates start at Neural Cleanse's own 2."""
    e = zoo["entry"]
    rc, d, err = cli_json(capsys, "detect", e.watermarked, "--data", e.data_dir / "test.npz",
                          "--no-confirm", "--nc-epochs", "2", "--max-images", "200",
                          "--device", "cpu", "--quiet")
    assert rc in (0, 1), err
    assert d["anomaly_threshold"] == ANOMALY_THRESHOLD and "confirmation" not in d
    assert d["flagged"] == anomaly_index(np.asarray(d["norms"]), "log", ANOMALY_THRESHOLD)[1]
    assert rc == (1 if d["flagged"] else 0)


def test_detect_vanilla_twin(zoo, capsys):
    """The clean twin is not flagged, and Neural Cleanse's L1 index has no candidate on it. The
    default log index can be borderline on this twin (class 3, whose trigger is 2/3 of the
    median norm), far below the content target's (4.5 on the watermarked model); a borderline
    candidate is not confirmed: restarted, its trigger is no outlier."""
    e = zoo["entry"]
    rc, d, err = cli_json(capsys, "detect", e.vanilla, "--data", e.data_dir / "test.npz",
                          "--device", "cpu", "--quiet")
    assert d["anomaly_scale"] == "log"
    assert rc == 0 and d["flagged"] == [], (err, d["confirmation"])
    assert all(not c["confirmed"] and c["reasons"] for c in d["confirmation"])
    # every candidate's triggers were also tried on the clean reference classifiers
    assert all(c["reference"] is not None and len(c["reference"]) == 3 for c in d["confirmation"])
    norms = np.asarray(d["norms"])
    np.testing.assert_allclose(d["anomaly_index"], anomaly_index(norms, "log")[0], rtol=1e-9)
    idx_l1, flagged_l1 = anomaly_index(norms)
    assert flagged_l1 == [] and max(idx_l1) <= ANOMALY_THRESHOLD, idx_l1
    assert max(d["anomaly_index"]) < 3.0, d["anomaly_index"]
    small = norms < np.median(norms)
    assert np.all(norms[small] > 0.5 * np.median(norms)), norms


# ------------------------------------------------------------------------------------------
# bad inputs: exit 2, one line


def test_verify_empty_trigger_folder(zoo, tmp_path, capsys):
    e = zoo["entry"]
    for folder in (tmp_path / "empty", tmp_path / "empty_classes"):
        folder.mkdir()
    (tmp_path / "empty_classes" / "0").mkdir()
    for folder in (tmp_path / "empty", tmp_path / "empty_classes"):
        rc, out, err = cli(capsys, "verify", e.watermarked, "--triggers", folder,
                           "--device", "cpu")
        assert_one_error_line(rc, err, folder.name, "no images")
        assert out == ""


def test_verify_labels_outside_the_model(zoo, tmp_path, capsys):
    e = zoo["entry"]
    folder = tmp_path / "triggers10"
    (folder / "10").mkdir(parents=True)
    src = next((e.triggers / "0").iterdir())
    (folder / "10" / src.name).write_bytes(src.read_bytes())
    rc, _, err = cli(capsys, "verify", e.watermarked, "--triggers", folder, "--device", "cpu")
    assert_one_error_line(rc, err, "label 10", "0..9")
    npz = tmp_path / "bad.npz"
    np.savez(npz, x=np.zeros((3, 16, 16), np.uint8), y=np.array([0, 12, 3]))
    rc, _, err = cli(capsys, "verify", e.watermarked, "--triggers", npz, "--device", "cpu")
    assert_one_error_line(rc, err, "label 12")


@pytest.mark.parametrize("which, expect", [("input28", "1x28x28"), ("rgb16", "3x16x16"),
                                           ("classes5", "5 classes")])
def test_verify_vanilla_that_does_not_fit(zoo, bad_models, which, expect, capsys):
    e = zoo["entry"]
    rc, out, err = cli(capsys, "verify", e.watermarked, "--triggers", e.triggers,
                       "--vanilla", bad_models[which], "--device", "cpu")
    assert_one_error_line(rc, err, "vanilla", expect)
    assert out == ""


def test_verify_vanilla_and_null_rate_exclusive(zoo, capsys):
    e = zoo["entry"]
    rc, out, err = cli(capsys, "verify", e.watermarked, "--triggers", e.triggers,
                       "--vanilla", e.vanilla, "--null-rate", "0.1", "--device", "cpu")
    assert_one_error_line(rc, err, "--vanilla", "--null-rate")
    assert out == ""


@pytest.mark.parametrize("args, expect", [
    (["--null-rate", "1.5"], "--null-rate"),
    (["--alpha", "0"], "--alpha"),
    (["--vanilla", "missing.onnx"], "missing.onnx"),
])
def test_verify_bad_options(zoo, tmp_path, args, expect, capsys):
    e = zoo["entry"]
    args = [str(tmp_path / a) if a.endswith(".onnx") else a for a in args]
    rc, _, err = cli(capsys, "verify", e.watermarked, "--triggers", e.triggers, *args,
                     "--device", "cpu")
    assert_one_error_line(rc, err, expect)


def test_detect_bad_data(zoo, tmp_path, capsys):
    e = zoo["entry"]
    empty = tmp_path / "empty"
    empty.mkdir()
    one_class = tmp_path / "one_class.npz"
    np.savez(one_class, x=np.zeros((20, 16, 16), np.uint8), y=np.zeros(20, np.int64))
    bad_labels = tmp_path / "bad_labels.npz"
    np.savez(bad_labels, x=np.zeros((4, 16, 16), np.uint8), y=np.array([0, 1, 10, 2]))
    for data, expect in ((empty, "no images"), (one_class, "at least 2 classes"),
                         (bad_labels, "label 10")):
        rc, out, err = cli(capsys, "detect", e.watermarked, "--data", data, "--nc-epochs", "1",
                           "--device", "cpu", "--quiet")
        assert_one_error_line(rc, err, expect)
        assert out == ""


# ------------------------------------------------------------------------------------------
# unit tests on hand-made numbers


def _binom_sf(k: int, n: int, p: float) -> float:
    """P[X >= k], X ~ Bin(n, p), summed by hand."""
    return sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k, n + 1))


def test_verify_predictions_hand_numbers():
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    pred = np.array([0, 0, 0, 0, 3, 1, 1, 1, 2, 2])          # 7 hits of 10
    v = verify_predictions(pred, labels, 0.1, alpha=0.01, vanilla_source="given")
    assert (v.n, v.hits, v.watermark_accuracy) == (10, 7, 0.7)
    assert v.null_rate == 0.1 and v.vanilla_rate == 0.1
    assert v.p_value == pytest.approx(_binom_sf(7, 10, 0.1), rel=1e-12)   # 9.1216e-6
    assert v.p_value == pytest.approx(9.1216e-6, rel=1e-4)
    assert v.demonstrated is True
    assert v.confusion == {0: {0: 4, 3: 1}, 1: {1: 3, 2: 2}}
    d = v.to_dict()
    assert VERIFY_KEYS <= set(d) and d["vanilla_source"] == "given"
    # 7/10 against 0.5: p = 0.171875, not significant
    v = verify_predictions(pred, labels, 0.5)
    assert v.p_value == pytest.approx(0.171875) and v.demonstrated is False
    assert v.p_value == pytest.approx(_binom_sf(7, 10, 0.5))
    # alpha is honoured: 7/10 against 0.3 gives p = 0.0106
    v3 = verify_predictions(pred, labels, 0.3, alpha=0.01)
    assert v3.p_value == pytest.approx(_binom_sf(7, 10, 0.3)) and not v3.demonstrated
    assert verify_predictions(pred, labels, 0.3, alpha=0.05).demonstrated


def test_verify_predictions_clamps_the_null_rate():
    labels = np.zeros(10, np.int64)
    one_hit = np.array([0] + [5] * 9)
    v = verify_predictions(one_hit, labels, 0.0)            # 1/10 against a measured 0
    assert v.null_rate == pytest.approx(0.05) and v.vanilla_rate == 0.0
    assert v.p_value == pytest.approx(1 - 0.95 ** 10)      # P[X >= 1] = 0.401
    assert v.demonstrated is False
    all_hits = np.zeros(10, np.int64)
    v = verify_predictions(all_hits, labels, 1.0)
    assert v.null_rate == pytest.approx(0.95) and v.p_value == pytest.approx(0.95 ** 10)
    assert v.demonstrated is False
    assert effective_null_rate(0.2, 10) == 0.2
    assert effective_null_rate(0.0, 100) == 0.005 and effective_null_rate(1.0, 100) == 0.995


def test_verify_predictions_degenerate():
    v = verify_predictions(np.array([], np.int64), np.array([], np.int64), 0.1)
    assert v.n == 0 and v.p_value == 1.0 and v.demonstrated is False
    v = verify_predictions(np.array([1, 1]), np.array([0, 0]), 0.1)   # no hit
    assert v.hits == 0 and v.p_value == pytest.approx(1.0) and v.demonstrated is False


def test_anomaly_index_hand_numbers():
    norms = np.array([10.0, 30, 31, 29, 32, 28, 30, 31, 29, 60])
    # median 30; |dev| = 20,0,1,1,2,2,0,1,1,30 -> median 1 -> MAD 1.4826
    idx, flagged = anomaly_index(norms)
    assert MAD_CONSTANT == 1.4826 and ANOMALY_THRESHOLD == 2.0
    expect = np.abs(norms - 30) / 1.4826
    np.testing.assert_allclose(idx, expect)
    assert idx[0] == pytest.approx(13.4898, rel=1e-4) and idx[9] == pytest.approx(20.2347, rel=1e-4)
    assert flagged == [0]                      # the large outlier (index 20) is not flagged


def test_anomaly_index_threshold_is_strict_and_ordered():
    # median 30, MAD 1.4826 (|dev| median 1): a norm 2.9 below the median has index 1.956,
    # 3.1 below has 2.091; flagged lists the flagged classes by increasing norm
    norms = np.array([30.0, 27.1, 30, 31, 29, 31, 29, 30, 26.9, 5.0, 31])
    idx, flagged = anomaly_index(norms)
    med = float(np.median(norms))
    mad = 1.4826 * float(np.median(np.abs(norms - med)))
    assert (med, mad) == (30.0, pytest.approx(1.4826))
    assert idx[1] == pytest.approx(2.9 / 1.4826) and idx[1] < 2
    assert idx[8] == pytest.approx(3.1 / 1.4826) and idx[8] > 2
    assert flagged == [9, 8]


def test_anomaly_index_flat_norms():
    idx, flagged = anomaly_index(np.full(10, 25.0))
    assert np.all(idx == 0) and flagged == []
    # MAD 0 (most norms equal): any smaller norm is an outlier, larger ones never flagged
    idx, flagged = anomaly_index(np.array([25.0] * 8 + [3.0, 40.0]))
    assert flagged == [8] and idx[8] > 1e6 and idx[9] > 1e6


def test_anomaly_index_log_scale():
    # an MNIST content zoo model (bench/results/detect_models.json): class 0's trigger
    # is 3.2x smaller than any other, but the clean norms' spread hides it on the L1 scale
    norms = np.array([17.543, 127.426, 60.871, 69.3, 92.7, 81.4, 96.5, 112.4, 57.0, 119.9])
    idx_l1, flagged_l1 = anomaly_index(norms)
    idx_log, flagged_log = anomaly_index(norms, "log")
    assert flagged_l1 == [] and idx_l1[0] == pytest.approx(1.82, abs=0.01)
    logs = np.log(norms)
    med = np.median(logs)
    expect = np.abs(logs - med) / (1.4826 * np.median(np.abs(logs - med)))
    np.testing.assert_allclose(idx_log, expect)
    assert flagged_log == [0] and idx_log[0] == pytest.approx(3.72, abs=0.01)
    # a scale, not a shift: multiplying every norm leaves the log index as it is
    np.testing.assert_allclose(anomaly_index(norms * 7.0, "log")[0], idx_log)
    with pytest.raises(ValueError):
        anomaly_index(norms, "sqrt")
