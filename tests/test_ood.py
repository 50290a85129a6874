"""Synthetic out-of-distribution images (audit.ood) and the launder helpers that use them."""

from __future__ import annotations

import numpy as np
import pytest

from audit import ood
from audit.launder import RoundResult, _best_round, _most_likely, _sink_class, _with_grown_trigger, dilate_trigger
from audit.nc import stamp


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_generate_shape_range_and_determinism(shape):
    a = ood.generate(50, shape, seed=3)
    b = ood.generate(50, shape, seed=3)
    c = ood.generate(50, shape, seed=4)
    assert a.shape == (50, *shape) and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 1.0
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    # not blank: every image has some contrast
    flat = a.reshape(len(a), -1)
    assert (flat.max(1) - flat.min(1) > 0.1).all()


def test_generate_respects_family_shares():
    x = ood.generate(40, (1, 28, 28), seed=0, families={"noise": 1.0})
    # uniform / Gaussian noise: almost every pixel differs from its neighbour
    assert (np.abs(np.diff(x, axis=3)) > 1e-3).mean() > 0.9
    with pytest.raises(ValueError, match="unknown image family"):
        ood.generate(4, (1, 8, 8), seed=0, families={"fractals": 1.0})
    assert ood.generate(0, (1, 8, 8), seed=0).shape == (0, 1, 8, 8)


def test_fields_are_smooth_and_span_a_contrast():
    x = ood.fields(30, 1, 28, 28, seed=0)
    flat = x.reshape(30, -1)
    assert (flat.max(1) - flat.min(1) >= 0.29).all()
    # smooth: neighbouring pixels differ far less than in noise
    assert np.abs(np.diff(x, axis=3)).mean() < 0.05
    assert np.array_equal(ood.fields(3, 3, 8, 8, seed=1), ood.fields(3, 3, 8, 8, seed=1))


def test_dilated_trigger_grows_the_mask_and_extends_its_pattern():
    mask = np.zeros((1, 10, 10), np.float32)
    mask[0, 4:6, 4:6] = 1.0
    pattern = np.zeros((1, 10, 10), np.float32)
    pattern[0, 4:6, 4:6] = 0.8                  # the pattern's colour under the mask
    m2, p2 = dilate_trigger(mask, pattern, 1)
    assert m2.sum() == 16 and m2[0, 3:7, 3:7].min() == 1.0
    assert np.allclose(p2[0, 3:7, 3:7], 0.8)     # the colour spreads into the new border
    assert p2[0, 0, 0] == 0.0                    # far away: unchanged
    same = dilate_trigger(mask, pattern, 0)
    assert same[0] is mask and same[1] is pattern
    x = np.full((6, 1, 10, 10), 0.3, np.float32)
    plain = stamp(x, mask, pattern)
    out = _with_grown_trigger(plain, x, mask, pattern, 1, seed=0)
    grown = np.isclose(out[:, 0, 3, 3], 0.8)
    assert grown.sum() == 3                      # half of the images carry the grown trigger
    assert np.allclose(out[~grown][:, 0, 4, 4], 0.8)


def test_characters_use_the_data_palette():
    dark = ood.characters(20, 1, 28, 28, seed=0, pal=(1.0, 0.0))
    light = ood.characters(20, 1, 28, 28, seed=0, pal=(0.0, 1.0))
    assert np.median(dark) == 0.0 and np.median(light) == 1.0
    assert dark.max() > 0.9 and light.min() < 0.1


def test_palette_reads_ink_and_paper():
    x = np.zeros((10, 1, 28, 28), np.float32)
    x[:, :, 10:18, 12:15] = 0.9                          # MNIST-like: bright strokes on black
    assert ood.palette(x) == pytest.approx((0.9, 0.0))
    assert ood.palette(1 - x) == pytest.approx((0.1, 1.0))    # dark ink on white paper
    flat = np.full((4, 1, 8, 8), 0.5, np.float32)            # no contrast: far end of the range
    assert ood.palette(flat) == pytest.approx((0.0, 0.5))


def _round(r: int, acc: float, stopped: str | None = None) -> RoundResult:
    return RoundResult(round=r, recovery={}, triggers_used=[], units_reset={}, thresholds={},
                       subset_accuracy=acc, stamped_accuracy=1.0, losses=[], seconds={},
                       stopped=stopped)


def test_best_round_prefers_later_rounds_within_tolerance():
    rounds = [_round(1, 0.990), _round(2, 0.986), _round(3, 0.970)]
    assert _best_round(rounds, 0.005) == 2
    assert _best_round(rounds, 0.0) == 1
    assert _best_round(rounds, 0.05) == 3
    assert _best_round([_round(1, 0.9), _round(2, float("nan"), stopped="x")], 0.005) == 1
    assert _best_round([_round(1, float("nan"), stopped="x")], 0.005) == 0


class _Rec:
    def __init__(self, norms):
        self.norms = np.asarray(norms, float)
        self.least_likely = int(np.argmax(self.norms))


def test_sink_avoids_suspects_and_ood_attractors():
    rec = _Rec([5, 9, 8, 7, 1])            # class 1 has the largest mask norm
    fair = [0.2] * 5
    assert _sink_class(rec, set(), fair) == 1
    assert _sink_class(rec, {1}, fair) == 2
    # class 1 takes 60% of the OOD predictions (> 2/5): an attractor is never the sink
    assert _sink_class(rec, set(), [0.1, 0.6, 0.1, 0.1, 0.1]) == 2
    # every class suspect or attracting: the least attracting non-suspect
    assert _sink_class(rec, {0, 1, 2}, [0.0, 0.0, 0.0, 0.45, 0.55]) == 3


def test_the_most_likely_class_is_never_the_sink():
    rec = _Rec([5, 9, 8, 7, 1])
    assert _most_likely(rec, None) == 4
    assert _most_likely(rec, 4) == 0       # the sink's small mask is the retraining's artefact
    assert _most_likely(_Rec([3, 3, 9]), 0) == 1


def test_threshold_forms_and_the_round_one_floor():
    from audit.reset import Threshold

    adiff = np.array([0.0, 0.1, 0.2, 0.3, 5.0, -1.0])
    z = Threshold.parse("z:1.0")
    assert z.cutoff(adiff) == pytest.approx(adiff.mean() + adiff.std())
    assert z.select(adiff).tolist() == [4]
    assert Threshold.parse("0.15").select(adiff).tolist() == [2, 3, 4]
    assert Threshold.parse("top:0.34").select(adiff).tolist() == [3, 4]
    # a floor (round 1's cut-off) only ever raises the bar
    assert Threshold.parse("0.15").select(adiff, floor=0.25).tolist() == [3, 4]
    assert Threshold.parse("0.15").cutoff(adiff, floor=0.05) == 0.15
    # positive A_diff only, whatever the cut-off
    assert Threshold.parse("abs:-2").select(adiff).tolist() == [1, 2, 3, 4]
