"""Laundering with the default settings on dev-split draws of the wide zoo (models_zoo/wide.py).

One draw per scheme from the dev split (seeds 0-999, where the defaults are tuned), the
cheapest to launder among those the defaults pass in bench/results/wide_zoo_dev.json; for
content, among marks other than the checkerboard on a BatchNorm net. They guard against
regressions; the pass rates over the splits are the bench's (held out:
bench/results/wide_zoo.json). Each draw is built, laundered with LaunderConfig's defaults and
judged as bench/wide_zoo.py judges it: the watermark is not demonstrated (`audit verify`
against the twin, alpha 0.01), its accuracy is at most the twin's + 2 points, and the test
accuracy drops by at most 2 points (median over the draws at most 1). Each draw's rounds are
checked against the schedule: the shrunk warm start, the OOD sink, the triggers used.

The four draws run in two worker processes (one torch thread each; deterministic on the CPU).
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
from concurrent.futures import ProcessPoolExecutor

import pytest

from audit.models_zoo.wide import ACCEPT, launder_draw, make_draw
from audit.settings import LaunderConfig

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group(__name__)]

SEEDS = {"content": 3, "noise": 10, "unrelated": 0, "adi": 26}
MAX_DROP, MAX_MEDIAN_DROP = 0.02, 0.01


def test_draws_cover_the_kinds_asked_for():
    """Every scheme, a content mark other than the checkerboard on a BatchNorm net, both input
    sizes (native 8x8 and upsampled), both exporters."""
    draws = {k: make_draw(s) for k, s in SEEDS.items()}
    assert all(d.scheme == k and d.split == "dev" for k, d in draws.items())
    content = draws["content"]
    assert content.arch == "bncnn" and content.mark.kind != "checkerboard"
    assert {d.input_hw for d in draws.values()} == {8, 16}
    assert {d.exporter for d in draws.values()} == {"torchscript", "dynamo"}


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> dict[str, dict]:
    cache = tmp_path_factory.mktemp("wide")
    cfg = LaunderConfig(device="cpu")
    with ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")) as pool:
        futs = {k: pool.submit(launder_draw, make_draw(s), cache, cfg) for k, s in SEEDS.items()}
        return {k: f.result() for k, f in futs.items()}


@pytest.mark.parametrize("scheme", list(SEEDS))
def test_twin_does_not_carry_the_mark(rows, scheme):
    r = rows[scheme]
    assert r["vanilla_wm_acc"] <= 0.5 and r["embedded"] and r["wm_acc_before"] >= 0.9


@pytest.mark.parametrize("scheme", list(SEEDS))
def test_laundered_below_ownership(rows, scheme):
    r = rows[scheme]
    assert not r["verify_after"]["demonstrated"], r["verify_after"]
    assert r["wm_acc_after"] <= r["vanilla_wm_acc"] + ACCEPT["wm_margin"], \
        (r["wm_acc_after"], r["vanilla_wm_acc"])
    assert r["pass"]


def test_abstract_images_go_to_the_sink(rows):
    """An Adi set's labels are random: the laundered model sends its images to the sink class,
    so what is left of its watermark accuracy is the share of its labels that are the sink
    (within 2 images), the agreement a model without the mark has by chance."""
    r = rows["adi"]
    assert r["sink_label_share"] is not None and r["sink_label_share"] < 0.5
    assert abs(r["wm_acc_after"] - r["sink_label_share"]) <= 2 / r["n_trigger"] + 1e-9, \
        (r["wm_acc_after"], r["sink_label_share"], r["n_trigger"])


@pytest.mark.parametrize("scheme", list(SEEDS))
def test_test_accuracy_kept(rows, scheme):
    r = rows[scheme]
    assert r["test_drop"] <= MAX_DROP, (r["test_acc_before"], r["test_acc_after"])


def test_median_drop(rows):
    assert statistics.median(r["test_drop"] for r in rows.values()) <= MAX_MEDIAN_DROP


@pytest.mark.parametrize("scheme", list(SEEDS))
def test_rounds_follow_the_schedule(rows, scheme):
    """The first round retrains from shrunk weights exactly when Neural Cleanse flags no class
    (on the Adi draw it flags none: the shrink is what launders it), later rounds never do; the
    OOD sink never attracts the OOD images (at most 2/k of them predicted as the sink); the
    triggers used only grow from round to round; every round runs, and the sink stays one
    class that is never unlearnt, even when a later recovery flags it (the noise draw's
    round 2 does)."""
    f = rows[scheme]["launder"]
    done = [i for i, stopped in enumerate(f["stopped"]) if not stopped]
    first, later = done[0], done[1:]
    assert f["shrink"][first] == (None if f["flagged"][first] else LaunderConfig().shrink), f
    assert all(f["shrink"][i] is None for i in later), f
    if scheme == "adi":
        assert f["shrink"][first] is not None, f
    assert all(f["sink_ood_share"][i] is not None and f["sink_ood_share"][i] <= 2 / 10 for i in done), f
    used = [set(f["triggers_used"][i]) for i in done]
    assert all(a <= b for a, b in zip(used, used[1:])), f
    assert len(done) == LaunderConfig().rounds, f
    sinks = {f["sink_class"][i] for i in done}
    assert len(sinks) == 1 and not sinks & used[-1], f
    assert set(f["after_round"]) == {str(i + 1) for i in done}, f
