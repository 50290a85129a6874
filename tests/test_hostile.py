"""Hostile input is refused safely: one `error:` line, exit code 2, inputs untouched.

Every output path is checked against every input before any work starts (outputs naming an
input, its external data, a data folder, through links; outputs that cannot be created); corrupt
models, symlink loops, NaN weights, an unusable device and files pretending to be npz archives
get a message saying what is wrong, never an internal error.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from _hostile import (
    assert_refused,
    conv_model,
    guarded_cli,
    matmul_model,
    snapshot,
    write_npz,
    write_png_folder,
)

FAST_S = 60.0   # a refusal comes before the work: well under this even on a busy machine


@pytest.fixture
def ws(tmp_path: Path) -> dict[str, Path]:
    """A model, its external-data twin, a vanilla model, data (npz and image folder), a spec file."""
    f = {"root": tmp_path}
    f["model"] = tmp_path / "model.onnx"
    onnx.save(conv_model(0), str(f["model"]))
    f["vanilla"] = tmp_path / "vanilla.onnx"
    onnx.save(conv_model(1), str(f["vanilla"]))
    ext = tmp_path / "ext"
    ext.mkdir()
    f["ext_model"] = ext / "m.onnx"
    onnx.save(conv_model(0), str(f["ext_model"]), save_as_external_data=True, all_tensors_to_one_file=True,
              location="m.onnx.data", size_threshold=0)
    f["ext_data"] = ext / "m.onnx.data"
    f["npz"] = write_npz(tmp_path / "data.npz")
    f["folder"] = write_png_folder(tmp_path / "images")
    f["spec"] = tmp_path / "spec.json"
    f["spec"].write_text('{"scale": 0.00392156862745098}')
    f["text"] = tmp_path / "notes.txt"
    f["text"].write_text("a regular file\n")
    return f


@pytest.fixture
def no_work(monkeypatch):
    """Loading a model or building a zoo entry fails the test: refusals come before any work."""
    import audit.models_zoo.build as zoo_build
    from audit.graphs.model import AuditModel

    def work(*args, **kwargs):
        raise AssertionError("the work started before the refusal")

    monkeypatch.setattr(AuditModel, "load", classmethod(work))
    monkeypatch.setattr(zoo_build, "build_entry", work)


def refused_fast(capsys, ws, *args, expect=()) -> None:
    before = snapshot(ws["root"])
    t = time.perf_counter()
    rc, _, err = guarded_cli(capsys, *args, "--device", "cpu") if args[0] not in ("zoo", "demo") \
        else guarded_cli(capsys, *args)
    assert_refused(rc, err, *expect)
    assert time.perf_counter() - t < FAST_S
    assert snapshot(ws["root"]) == before


# ------------------------------------------------------------------------------------------
# 1. no output may write over an input


OVERWRITES = {  # case -> (argv with {names} of the ws fixture, expected fragment)
    "verify_report_is_model": (["verify", "{model}", "--triggers", "{npz}", "--report", "{model}"],
                               "refusing to overwrite the input"),
    "verify_report_is_triggers": (["verify", "{model}", "--triggers", "{npz}", "--report", "{npz}"],
                                  "refusing to overwrite the input"),
    "verify_report_is_vanilla": (["verify", "{model}", "--triggers", "{npz}", "--vanilla", "{vanilla}",
                                  "--report", "{vanilla}"], "refusing to overwrite the input"),
    "verify_report_is_spec": (["verify", "{model}", "--triggers", "{npz}", "--input-spec", "{spec}",
                               "--report", "{spec}"], "refusing to overwrite the input"),
    "verify_report_is_external_data": (["verify", "{ext_model}", "--triggers", "{npz}", "--report",
                                        "{ext_data}"], "refusing to overwrite the input"),
    "verify_report_in_trigger_folder": (["verify", "{model}", "--triggers", "{folder}", "--report",
                                         "{folder}/report.json"], "inside the input folder"),
    "launder_output_is_data": (["launder", "{model}", "--data", "{npz}", "-o", "{npz}"],
                               "refusing to overwrite the input"),
    "launder_output_is_external_data": (["launder", "{ext_model}", "--data", "{npz}", "-o", "{ext_data}"],
                                        "refusing to overwrite the input"),
    "launder_report_is_data_folder": (["launder", "{model}", "--data", "{folder}", "-o", "{root}/out.onnx",
                                       "--report", "{folder}"], "refusing to overwrite the input"),
    "launder_report_inside_data_folder": (["launder", "{model}", "--data", "{folder}", "-o",
                                           "{root}/out.onnx", "--report", "{folder}/rep"],
                                          "inside the input folder"),
    "launder_output_is_report": (["launder", "{model}", "--data", "{npz}", "-o", "{root}/rep/report.json",
                                  "--report", "{root}/rep"], "overlap"),
    "detect_report_is_data_folder": (["detect", "{model}", "--data", "{folder}", "--report", "{folder}"],
                                     "refusing to overwrite the input"),
}


@pytest.mark.parametrize("case", sorted(OVERWRITES))
def test_output_over_an_input_is_refused_before_work(case, ws, capsys, no_work):
    args, expect = OVERWRITES[case]
    fmt = {k: str(v) for k, v in ws.items()}
    refused_fast(capsys, ws, *[a.format(**fmt) for a in args], expect=(expect,))


def test_output_linked_to_the_model_is_refused(ws, capsys, no_work):
    link = ws["root"] / "link.json"
    link.symlink_to(ws["model"])
    refused_fast(capsys, ws, "verify", ws["model"], "--triggers", ws["npz"], "--report", link,
                 expect=("refusing to overwrite the input",))
    assert link.is_symlink()


def test_launder_data_file_beside_output_is_the_inputs_external_data(ws, capsys, no_work):
    """-o X writes X.data too when the model keeps its weights outside: X.data may be the input's."""
    model = ws["root"] / "ext" / "other.onnx"
    m = onnx.load(str(ws["ext_model"]), load_external_data=False)   # points at m.onnx.data
    onnx.save(m, str(model))
    refused_fast(capsys, ws, "launder", model, "--data", ws["npz"], "-o", ws["root"] / "ext" / "m.onnx",
                 expect=("refusing to overwrite the input",))


def test_report_folder_writing_over_the_model_is_refused(ws, capsys, no_work):
    """The model sits in the report folder at a name the report writes."""
    rep = ws["root"] / "rep"
    rep.mkdir()
    (rep / "report.json").write_bytes(ws["model"].read_bytes())
    refused_fast(capsys, ws, "detect", rep / "report.json", "--data", ws["npz"], "--report", rep,
                 expect=("refusing to overwrite the input",))


def test_report_folder_holding_the_model_elsewhere_is_fine(ws, capsys):
    """An output folder that holds an input is refused only where the tool would write."""
    from audit.paths import DETECT_REPORT, check_outputs, output_folder

    check_outputs([output_folder(ws["root"], DETECT_REPORT)], [ws["model"], ws["npz"]])


def test_zoo_output_inside_its_data_root_is_refused(ws, capsys, no_work):
    root = ws["root"] / "data_root"
    (root / "mnist").mkdir(parents=True)
    (root / "mnist" / "README").write_text("MNIST goes here\n")
    refused_fast(capsys, ws, "zoo", "build", "--dataset", "mnist", "--data-root", root, "-o", root / "mnist",
                 expect=("refusing to overwrite the input",))
    refused_fast(capsys, ws, "zoo", "build", "--dataset", "mnist", "--data-root", root, "-o",
                 root / "mnist" / "zoo", expect=("inside the input folder",))


# ------------------------------------------------------------------------------------------
# 2, 3. outputs that cannot be created are refused before the work


UNCREATABLE = {
    "launder_output": (["launder", "{model}", "--data", "{npz}", "-o", "{text}/out.onnx"], "is a file"),
    "launder_report": (["launder", "{model}", "--data", "{npz}", "-o", "{root}/o.onnx", "--report",
                        "{text}/rep"], "is a file"),
    "verify_report": (["verify", "{model}", "--triggers", "{npz}", "--report", "{text}/r.json"], "is a file"),
    "verify_report_is_folder": (["verify", "{model}", "--triggers", "{npz}", "--report", "{folder}/.."],
                                "--report"),
    "detect_report": (["detect", "{model}", "--data", "{npz}", "--report", "{text}/deep/rep"], "is a file"),
    "demo_out": (["demo", "--out", "{text}/demo"], "is a file"),
    "zoo_out": (["zoo", "build", "-o", "{text}/zoo"], "is a file"),
}


@pytest.mark.parametrize("case", sorted(UNCREATABLE))
def test_output_that_cannot_be_created_is_refused_before_work(case, ws, capsys, no_work):
    args, expect = UNCREATABLE[case]
    fmt = {k: str(v) for k, v in ws.items()}
    refused_fast(capsys, ws, *[a.format(**fmt) for a in args], expect=(expect,))


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_output_in_a_read_only_folder_is_refused(ws, capsys, no_work):
    ro = ws["root"] / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        refused_fast(capsys, ws, "verify", ws["model"], "--triggers", ws["npz"], "--report", ro / "r.json",
                     expect=("not writable",))
    finally:
        ro.chmod(0o755)


# ------------------------------------------------------------------------------------------
# 4. names that are not text


@pytest.mark.parametrize("name", [b"relu", b"Conv", b"x"])
def test_invalid_utf8_in_a_model_is_a_corrupt_model(name, ws, capsys):
    raw = ws["model"].read_bytes()
    i = raw.index(name)
    bad = ws["root"] / "flipped.onnx"
    bad.write_bytes(raw[:i] + b"\xff" + raw[i + 1:])
    refused_fast(capsys, ws, "inspect", bad, expect=(str(bad), "corrupt model", "not valid UTF-8"))
    refused_fast(capsys, ws, "evaluate", bad, "--data", ws["npz"], expect=("corrupt model",))


# ------------------------------------------------------------------------------------------
# 5. symbolic link loops in an image folder


def test_image_folder_with_symlink_loops_finishes(ws, capsys):
    folder = ws["folder"]
    (folder / "0" / "up").symlink_to(folder)                 # back to the data-set root
    (folder / "1" / "self").symlink_to(folder / "1")        # to itself
    (folder / "2" / "a").mkdir()
    (folder / "2" / "a" / "b").symlink_to(folder / "2")     # two levels
    before = snapshot(ws["root"])
    rc, out, err = guarded_cli(capsys, "evaluate", ws["model"], "--data", folder, "--json", "--device", "cpu")
    assert rc == 0, err
    assert '"n": 10' in out                                  # every image read once
    assert snapshot(ws["root"]) == before


def test_image_folder_of_only_loops_is_refused(ws, capsys):
    loops = ws["root"] / "loops"
    (loops / "0").mkdir(parents=True)
    (loops / "0" / "again").symlink_to(loops)
    (loops / "1").mkdir()
    (loops / "1" / "me").symlink_to(loops / "1" / "me")    # a link to itself
    refused_fast(capsys, ws, "evaluate", ws["model"], "--data", loops, expect=("contains no images",))


# ------------------------------------------------------------------------------------------
# 6. the device, and NaN weights, are named as what is wrong


def test_cuda_without_a_gpu_blames_the_device(ws, capsys):
    from audit.graphs.runtime import cuda_usable

    if cuda_usable():
        pytest.skip("a CUDA device is present")
    model = ws["root"] / "mm.onnx"
    onnx.save(matmul_model(), str(model))   # normalisation rewrites it: the old path blamed the passes
    for args in (["inspect", model], ["evaluate", model, "--data", ws["npz"]]):
        before = snapshot(ws["root"])
        rc, _, err = guarded_cli(capsys, *args, "--device", "cuda")
        assert_refused(rc, err, "--device cuda")
        assert "normalisation" not in err
        assert snapshot(ws["root"]) == before


def test_cuda_without_a_gpu_through_the_api(ws):
    from audit.errors import AuditError
    from audit.graphs.model import AuditModel
    from audit.graphs.runtime import cuda_usable

    if cuda_usable():
        pytest.skip("a CUDA device is present")
    model = ws["root"] / "mm.onnx"
    onnx.save(matmul_model(), str(model))
    with pytest.raises(AuditError, match="--device cuda") as exc:
        AuditModel.load(model, device="cuda")
    assert "normalisation" not in str(exc.value)


def test_nan_weights_are_named(ws, capsys):
    w = np.random.default_rng(1).standard_normal((64, 10)).astype(np.float32)
    w[3, 4] = np.nan
    model = ws["root"] / "nan.onnx"
    onnx.save(matmul_model(w), str(model))
    refused_fast(capsys, ws, "inspect", model, expect=("initializer 'W' holds NaN values",))
    model2 = ws["root"] / "nan_const.onnx"
    onnx.save(matmul_model(constant_bias=np.full(10, np.nan)), str(model2))
    refused_fast(capsys, ws, "evaluate", model2, "--data", ws["npz"], expect=("Constant node", "NaN values"))


def test_infinite_weights_give_nan_outputs_named(ws, capsys):
    w = np.random.default_rng(1).standard_normal((64, 10)).astype(np.float32)
    w[:, 0] = np.inf
    w[1::2, 0] = -np.inf     # inf - inf on every image: NaN scores
    model = ws["root"] / "inf.onnx"
    onnx.save(matmul_model(w), str(model))
    refused_fast(capsys, ws, "inspect", model, expect=("outputs are NaN on random inputs",))


# ------------------------------------------------------------------------------------------
# 7. files that are not npz archives; pickles never loaded


class _Marker:
    """Unpickling this would create a file: proof that nothing is unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_text_named_npz_is_not_an_npz(ws, capsys):
    fake = ws["root"] / "fake.npz"
    fake.write_text("x,y\n1,2\n")
    refused_fast(capsys, ws, "evaluate", ws["model"], "--data", fake, expect=("not an npz file",))
    _, _, err = guarded_cli(capsys, "evaluate", ws["model"], "--data", fake, "--device", "cpu")
    assert "pickle" not in err
    npy = ws["root"] / "array.npz"
    np.save(npy.with_suffix(".npy"), np.zeros((2, 8, 8), np.uint8))
    npy.with_suffix(".npy").rename(npy)
    refused_fast(capsys, ws, "evaluate", ws["model"], "--data", npy, expect=(".npy array",))


def test_pickled_npz_is_never_unpickled(ws, capsys):
    marker = ws["root"] / "unpickled.txt"
    evil = ws["root"] / "evil.npz"
    y = np.empty(2, dtype=object)
    y[0], y[1] = _Marker(str(marker)), _Marker(str(marker))
    np.savez(evil, x=np.zeros((2, 8, 8), np.uint8), y=y)
    refused_fast(capsys, ws, "evaluate", ws["model"], "--data", evil, expect=("object arrays", "never loaded"))
    assert not marker.exists()


# ------------------------------------------------------------------------------------------
# options and spec files never reach an internal error


BAD_OPTIONS = {
    "alpha_nan": ["verify", "{model}", "--triggers", "{npz}", "--alpha", "nan"],
    "null_rate_nan": ["verify", "{model}", "--triggers", "{npz}", "--null-rate", "nan"],
    "seed_negative": ["detect", "{model}", "--data", "{npz}", "--seed", "-1"],
    "nc_epochs_zero": ["detect", "{model}", "--data", "{npz}", "--nc-epochs", "0"],
    "batch_size_zero": ["launder", "{model}", "--data", "{npz}", "-o", "{root}/o.onnx", "--batch-size", "0"],
    "lr_negative": ["launder", "{model}", "--data", "{npz}", "-o", "{root}/o.onnx", "--lr", "-1"],
    "lr_nan": ["launder", "{model}", "--data", "{npz}", "-o", "{root}/o.onnx", "--lr", "nan"],
    "distill_nan": ["launder", "{model}", "--data", "{npz}", "-o", "{root}/o.onnx", "--distill", "nan"],
    "scale_overflow": ["evaluate", "{model}", "--data", "{npz}", "--scale", "1e308"],
    "limit_zero": ["evaluate", "{model}", "--data", "{npz}", "--limit", "0"],
}


@pytest.mark.parametrize("case", sorted(BAD_OPTIONS))
def test_bad_option_is_one_error_line(case, ws, capsys, no_work):
    fmt = {k: str(v) for k, v in ws.items()}
    refused_fast(capsys, ws, *[a.format(**fmt) for a in BAD_OPTIONS[case]])


@pytest.mark.parametrize("content", ["[" * 100_000, '{"scale": 1' + "0" * 5000 + "}", "\udcff", ""])
def test_hostile_spec_file_is_one_error_line(content, ws, capsys):
    spec = ws["root"] / "hostile.json"
    spec.write_bytes(content.encode("utf-8", "surrogateescape"))
    refused_fast(capsys, ws, "evaluate", ws["model"], "--data", ws["npz"], "--input-spec", spec,
                 expect=(str(spec),))


# ------------------------------------------------------------------------------------------
# pipes and devices are never opened (reading one would block forever)


@pytest.mark.parametrize("where", ["model", "data", "image", "spec"])
def test_pipe_as_input_is_refused_without_blocking(where, ws, capsys):
    fifo = ws["root"] / ("pipe.onnx" if where == "model" else "pipe.npz")
    if where == "image":
        fifo = ws["folder"] / "0" / "pipe.png"
    os.mkfifo(fifo)
    args = {"model": ["inspect", fifo],
            "data": ["evaluate", ws["model"], "--data", fifo],
            "image": ["evaluate", ws["model"], "--data", ws["folder"]],
            "spec": ["evaluate", ws["model"], "--data", ws["npz"], "--input-spec", fifo]}[where]
    refused_fast(capsys, ws, *args, expect=(str(fifo), "regular file"))
