"""The wide zoo (models_zoo/wide.py, wide_marks.py, wide_nets.py): draws, marks, builds, CLI."""

from __future__ import annotations

import collections
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from audit.cli import run
from audit.data import load_dataset
from audit.errors import AuditError
from audit.models_zoo.train import torch_threads
from audit.models_zoo.watermarks import SCHEMES, quantize_u8
from audit.models_zoo.wide import (
    ACCEPT,
    CONTROL_SEED_OFFSET,
    SIZES,
    build_draw,
    control_draw,
    draws,
    make_draw,
)
from audit.models_zoo.wide_marks import (
    FONTS,
    MARK_KINDS,
    SHAPES,
    UNRELATED_KINDS,
    Mark,
    Noise,
    Unrelated,
    apply_mark,
    apply_noise,
    draw_noise,
    mark_patch,
    noise_pattern,
    trigger_set,
)
from audit.models_zoo.wide_nets import ARCHS, make_net

BUILD_SEED = 0      # dev digits-0: unrelated watermark, MLP, 16x16, TorchScript (~8 s)
DYNAMO_SEED = 28    # dev digits-28: content watermark, MLP, 8x8, dynamo exporter (~5 s)


@pytest.fixture(scope="module")
def many() -> dict[str, list]:
    return {size: [make_draw(s, size) for s in range(200)] for size in SIZES}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("wide")


@pytest.fixture(scope="module")
def built(cache):
    with torch_threads(1):
        t = time.perf_counter()
        entry = build_draw(make_draw(BUILD_SEED, "digits"), cache)
        return entry, time.perf_counter() - t


# ------------------------------------------------------------------------------------------
# draws


def test_draw_is_a_pure_function_of_seed_and_size():
    for size in SIZES:
        for seed in (0, 7, 1000, 123456):
            a, b = make_draw(seed, size), make_draw(seed, size)
            assert a == b and a.to_dict() == b.to_dict() and a.size == size
            assert json.loads(json.dumps(a.to_dict())) == a.to_dict()
    assert make_draw(3, "digits") != make_draw(4, "digits")
    assert make_draw(3, "digits").to_dict() != make_draw(3, "mnist").to_dict()


def test_splits_disjoint_and_numbered():
    dev, held = draws("dev", 100), draws("heldout", 5, "mnist")
    assert [d.seed for d in dev] == list(range(100)) and {d.split for d in dev} == {"dev"}
    assert [d.seed for d in held] == [1000, 1001, 1002, 1003, 1004]
    assert {d.split for d in held} == {"heldout"} and {d.size for d in held} == {"mnist"}
    assert max(d.seed for d in draws("dev", 1000)) == 999
    from audit.models_zoo import cli, wide

    assert cli.SIZES == wide.SIZES and cli.SPLITS == tuple(wide.SPLITS)   # the CLI's copies
    for bad in (lambda: draws("dev", 0), lambda: draws("dev", 1001), lambda: draws("test", 1),
                lambda: draws("dev", 1, "imagenet"), lambda: make_draw(-1)):
        with pytest.raises(AuditError):
            bad()


def test_draws_cover_every_choice(many):
    ds = many["digits"]
    count = lambda f: collections.Counter(f(d) for d in ds)
    assert set(count(lambda d: d.scheme)) == set(SCHEMES)
    assert set(count(lambda d: d.arch)) == set(ARCHS)
    assert set(count(lambda d: d.exporter)) == {"torchscript", "dynamo"}
    assert set(count(lambda d: d.input_hw)) == {8, 16}
    marks = [d.mark for d in ds if d.mark]
    assert {m.kind for m in marks} == set(MARK_KINDS) and {m.mode for m in marks} == {"stamp",
                                                                                      "blend"}
    assert {m.shape for m in marks if m.kind == "logo"} == set(SHAPES)
    assert {d.noise.dist for d in ds if d.noise} == {"gaussian", "uniform"}
    assert {d.noise.region is None for d in ds if d.noise} == {True, False}
    assert {k for d in ds if d.unrelated for k in d.unrelated.kinds} == set(UNRELATED_KINDS)
    assert {d.abstract.source for d in ds if d.abstract} == {"generated", "real"}
    assert min(count(lambda d: d.scheme).values()) >= 30


def test_draw_ranges(many):
    for size, ds in many.items():
        lo, hi = (2, 4) if size == "digits" else (3, 8)
        for d in ds:
            assert d.split == "dev" and 0.01 <= d.wm_share <= 0.15
            assert 10 <= d.subset_per_class <= 60 and d.epochs >= 1
            assert (d.target is None) == (d.scheme == "adi")
            assert d.target is None or 0 <= d.target < 10
            if d.mark:
                m = d.mark
                assert lo <= m.side <= hi and 0 <= m.top <= d.input_hw - m.side
                assert 0 <= m.left <= d.input_hw - m.side and 0.5 <= m.alpha <= 1
                assert (m.alpha == 1) == (m.mode == "stamp")
            if d.noise:
                assert 0.1 <= d.noise.sigma <= 0.5
    mnist = many["mnist"]
    assert {d.n_train for d in mnist} == {5000, 10000, 20000, 30000, 60000}
    assert {d.input_hw for d in mnist} == {28} and set(ARCHS) == {d.arch for d in mnist}
    assert {(d.arch, d.channels, d.input_hw) for d in many["cifar10"]} == {("table7", 3, 32)}
    centres = [d.mark for d in many["mnist"] if d.mark and d.mark.top <= 12 <= d.mark.top + 5]
    assert centres                                    # marks land in the middle too


def test_twins_shared_by_key(many):
    by_key = collections.defaultdict(list)
    for d in many["digits"]:
        by_key[d.twin_key].append(d)
    shared = [v for v in by_key.values() if len(v) > 1]
    assert shared
    fields = ("input_hw", "arch", "width", "blocks", "norm", "n_train", "data_seed",
              "train_seed", "epochs", "batch_size")
    for group in shared:
        assert len({tuple(getattr(d, f) for f in fields) for d in group}) == 1
        assert len({d.seed for d in group}) == len(group)


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 16, 16), (1, 28, 28), (3, 32, 32)])
def test_every_architecture_at_every_input(shape):
    archs = ("table7",) if shape[0] == 3 else ARCHS
    for arch in archs:
        net = make_net(arch, shape[0], shape[1], width=16 if arch != "mlp" else 128, blocks=3)
        assert net.eval()(torch.zeros(2, *shape)).shape == (2, 10)


# ------------------------------------------------------------------------------------------
# marks


def _marks(shape: tuple[int, int, int]):
    c, h, _ = shape
    fg, bg = ((230,), (20,)) if c == 1 else ((230, 40, 200), (25, 215, 55))
    for side in range(2, 9):
        if side > h // 2:
            continue
        at = {"top": h - side, "left": (h - side) // 2}
        base = Mark("solid", side, mode="stamp", alpha=1.0, fg=fg, bg=bg, opaque=False, **at)
        yield replace(base, kind="checkerboard", cell=1 if side < 4 else 2)
        yield replace(base, kind="solid")
        yield replace(base, kind="random_block", bits_seed=side)
        for opaque in (False, True):
            for font in FONTS:
                yield replace(base, kind="text", text="K", font=font, opaque=opaque)
            for shape_name in SHAPES:
                yield replace(base, kind="logo", shape=shape_name, opaque=opaque)


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 16, 16), (1, 28, 28), (3, 32, 32)])
def test_every_mark_renders_at_its_size_and_only_there(shape):
    x = np.full((2, *shape), 128 / 255, np.float32)
    x[1] = quantize_u8(np.random.default_rng(0).random(shape))
    n = 0
    for m in _marks(shape):
        values, weight, _ = mark_patch(m, shape[0])
        assert values.shape == (shape[0], m.side, m.side) and weight.shape == (m.side, m.side)
        out = apply_mark(x, m)
        changed = np.any(out != x, axis=1)                      # [2, H, W]
        box = np.zeros(shape[1:], bool)
        box[m.top:m.top + m.side, m.left:m.left + m.side] = True
        assert not np.any(changed[:, ~box]), m                  # nothing outside the mark
        inside = changed[0][box].reshape(m.side, m.side)
        assert not np.any(inside & (weight == 0)), m            # nor where it is transparent
        rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
        assert max(np.ptp(rows), np.ptp(cols)) + 1 == m.side, m  # the drawn size
        n += 1
    assert n >= 40


def test_blended_mark_weight_and_solid_value():
    x = np.zeros((1, 1, 16, 16), np.float32)
    m = Mark("solid", 4, 6, 6, "blend", 0.6, (255,), (0,), False)
    out = apply_mark(x, m)
    assert np.allclose(out[0, 0, 6:10, 6:10], round(0.6 * 255) / 255)
    assert out.sum() == pytest.approx(16 * round(0.6 * 255) / 255, rel=1e-6)


def test_noise_marks_have_the_drawn_sigma():
    rng = np.random.default_rng(1)
    ratios = []
    for shape in [(1, 8, 8), (1, 16, 16), (1, 28, 28), (3, 32, 32)] * 15:
        nz = draw_noise(rng, shape)
        pat, mask = noise_pattern(nz, shape)
        inside = pat[:, mask == 1]
        assert np.all(pat[:, mask == 0] == 0) and inside.size >= 16
        ratios.append(float(inside.std()) / nz.sigma)
        assert abs(float(inside.mean())) < 4 * nz.sigma / np.sqrt(inside.size)
        assert 0.6 < ratios[-1] < 1.4, nz
    assert np.mean(ratios) == pytest.approx(1.0, abs=0.05)
    for dist in ("gaussian", "uniform"):   # applied: added to mid grey, sigma measured
        nz = Noise(dist, 0.1, "add", 1.0, None, 7)
        out = apply_noise(np.full((3, 1, 28, 28), 0.5, np.float32), nz)
        assert np.all(out == out[0])                    # one fixed pattern per model
        assert float((out[0] - 0.5).std()) == pytest.approx(0.1, rel=0.1)


def test_trigger_sets_of_each_kind():
    x = quantize_u8(np.random.default_rng(0).random((60, 1, 16, 16)) * 0.3)
    y = np.arange(60) % 10
    m = Mark("checkerboard", 3, 0, 0, "stamp", 1.0, (255,), (0,), False)
    u = Unrelated(UNRELATED_KINDS, FONTS, 30.0, True)
    for spec, scheme in ((m, "content"), (Noise("uniform", 0.3, "blend", 0.7, (2, 2, 8, 8), 1),
                                          "noise"), (u, "unrelated")):
        ts = trigger_set(spec, x, y, target=4, n=40, seed=5)
        assert ts.scheme == scheme and len(ts) == 40 and np.all(ts.y == 4)
        assert ts.x.shape == (40, 1, 16, 16) and np.array_equal(ts.x, quantize_u8(ts.x))
        assert len({im.tobytes() for im in ts.x}) == 40
        if ts.source_index is not None:
            assert np.all(y[ts.source_index] != 4)
    assert len({w.split(":")[0] for w in ts.info["images"]}) > 10


# ------------------------------------------------------------------------------------------
# builds and the CLI


def test_build_draw_watermarks_and_twin(built, cache):
    entry, seconds = built
    d, meta = entry.draw, entry.meta
    assert entry.built and entry.out_dir == cache / "dev" / "digits-0" and seconds < 40
    assert meta["draw"] == d.to_dict() and meta["n_trigger"] == d.n_trigger
    assert meta["wm_acc"]["watermarked"] >= 0.9 and meta["wm_acc"]["vanilla"] <= 0.15
    assert meta["test_acc"]["watermarked"] >= 0.9 and meta["test_acc"]["vanilla"] >= 0.9
    assert entry.vanilla == cache / "twins" / d.twin_key / "vanilla.onnx"
    geo = {"channels": 1, "height": d.input_hw, "width": d.input_hw}
    trig = load_dataset(entry.triggers, **geo)
    assert len(trig) == d.n_trigger and np.all(trig.y == d.target)
    sub = load_dataset(entry.data_dir / "train.npz", **geo)
    assert np.array_equal(np.bincount(sub.y), np.full(10, d.subset_per_class))
    assert len(load_dataset(entry.data_dir / "test.npz", **geo)) == 450
    proto = onnx.load(str(entry.watermarked))
    assert proto.ir_version <= 10 and meta["export"]["watermarked"]["exporter"] == "torchscript"


def _snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {p.relative_to(folder).as_posix(): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_build_draw_cached(built, cache):
    entry, _ = built
    before = _snapshot(cache)
    t = time.perf_counter()
    again = build_draw(make_draw(BUILD_SEED, "digits"), cache)
    assert time.perf_counter() - t < 1.0
    assert not again.built and again.meta == entry.meta and _snapshot(cache) == before


def test_control_draw_judges_a_clean_model(built, cache):
    """The clean control: the twin retrained with another seed, judged against the twin by
    the laundering acceptance rule (bench/wide_control.py)."""
    entry, _ = built
    d = entry.draw
    row = control_draw(d, cache)
    clean = row["clean_model"]
    assert clean["train_seed"] == d.train_seed + CONTROL_SEED_OFFSET and clean["built_now"]
    path = cache / "twins" / clean["twin_key"] / "vanilla.onnx"
    assert clean["twin_key"] != d.twin_key and path.read_bytes() != entry.vanilla.read_bytes()
    # the watermarked model before, the clean model after: it never saw the trigger set
    assert row["wm_acc_before"] == pytest.approx(entry.meta["wm_acc"]["watermarked"])
    assert row["vanilla_wm_acc"] == pytest.approx(entry.meta["wm_acc"]["vanilla"])
    assert row["embedded"] and row["wm_acc_after"] <= 0.15
    assert row["test_acc_after"] >= 0.9 and abs(row["test_drop"]) <= 0.05
    assert row["pass"] == (row["wm_acc_after"] <= row["vanilla_wm_acc"] + ACCEPT["wm_margin"]
                           and not row["verify_after"]["demonstrated"])
    again = control_draw(d, cache)
    assert not again["clean_model"]["built_now"]
    assert {k: v for k, v in again.items() if k != "clean_model"} == \
        {k: v for k, v in row.items() if k != "clean_model"}
    # the twin as its own reference (offset 0) changes nothing
    same = control_draw(d, cache, reference_offset=0)["with_reference"]
    assert same["reference_model"]["twin_key"] == d.twin_key
    assert same["vanilla_wm_acc"] == row["vanilla_wm_acc"]
    for k in ("verify_before", "verify_after"):
        assert {**same[k], "vanilla_models": None} == {**row[k], "vanilla_models": None}
    assert same["pass"] == row["pass"]
    # a second clean model as the reference: the higher rate of the two is the null
    ref = control_draw(d, cache, reference_offset=2 * CONTROL_SEED_OFFSET)["with_reference"]
    rates = [m["rate"] for m in ref["verify_after"]["vanilla_models"]]
    assert rates[0] == pytest.approx(row["vanilla_wm_acc"]) and len(rates) == 2
    assert ref["vanilla_wm_acc"] == max(rates)
    assert ref["verify_after"]["p_value"] >= row["verify_after"]["p_value"]
    assert ref["verify_before"]["demonstrated"] and ref["embedded"]


def test_dynamo_draw_deterministic(tmp_path):
    d = make_draw(DYNAMO_SEED, "digits")
    assert d.exporter == "dynamo" and d.input_hw == 8
    a, b = (build_draw(d, tmp_path / k) for k in ("a", "b"))
    assert a.meta["export"]["watermarked"]["opset"]["ai.onnx"] >= 18
    assert a.meta["export"]["watermarked"]["ir_version"] <= 10
    assert a.meta["wm_acc"]["watermarked"] >= 0.9 and a.meta["wm_acc"]["vanilla"] <= 0.15
    for rel in ("dev/digits-28/watermarked.onnx", f"twins/{d.twin_key}/vanilla.onnx",
                "dev/digits-28/data/train.npz"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    # the exporter's side files (dynamo's external .data) do not end up beside the model
    assert sorted(p.name for p in (tmp_path / "a" / "dev" / "digits-28").iterdir()) == \
        ["data", "meta.json", "triggers", "watermarked.onnx"]


def test_cli_wide(built, cache, capsys):
    assert run(["zoo", "build", "--wide", "1", "--split", "dev", "-o", str(cache)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[1].split()[:3] == ["dev/digits-0", "unrelated", "mlp"]
    assert "cached" in out[1]
    for argv, msg in ((["--wide", "0"], "--wide"), (["--wide", "1", "--split", "test"], "--split"),
                      (["--split", "dev"], "--wide"), (["--wide", "1", "--scheme", "adi"],
                                                       "--scheme")):
        assert run(["zoo", "build", *argv, "-o", str(cache)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and msg in err[0]


@pytest.mark.shared
@pytest.mark.parametrize("size", ["mnist", "cifar10"])
def test_shared_sizes_data_and_triggers(size, tmp_path):
    from audit.models_zoo.build import _write_npz
    from audit.models_zoo.datasets import default_data_root
    from audit.models_zoo.wide import _data, _triggers

    if not (default_data_root() / size).is_dir():
        pytest.skip(f"../shared/data/{size} absent (development machines only)")
    ds = [make_draw(s, size) for s in range(40)]
    firsts = {d.scheme: d for d in reversed(ds)}
    assert set(firsts) == set(SCHEMES)
    for d in firsts.values():
        data = _data(d, None)
        assert len(data.train) == d.n_train and data.train.x.shape[1:] == d.input_shape
        assert len(data.test) == {"mnist": 10000, "cifar10": 2000}[size]
        trig = _triggers(d, data.train, None)
        assert trig.x.shape[1:] == d.input_shape and len(trig) == d.n_trigger
        if d.channels == 3:
            assert np.abs(trig.x[:, 0] - trig.x[:, 1]).max() > 0.1
        _write_npz(tmp_path / "t.npz", data.test.x[:50], data.test.y[:50])
        back = load_dataset(tmp_path / "t.npz", channels=d.channels, height=d.input_hw,
                            width=d.input_hw)
        assert np.array_equal(back.x, data.test.x[:50]) and np.array_equal(back.y,
                                                                           data.test.y[:50])
