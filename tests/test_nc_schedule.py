"""Neural Cleanse's lambda schedule and early stop (audit.nc.CostSchedule), epoch by epoch."""

from __future__ import annotations

import pytest

from audit.nc import CostSchedule
from audit.settings import NCSchedule

CFG = NCSchedule(init_cost=1e-3, cost_up=2.0, cost_down=4.0, patience=2, attack_threshold=0.9,
                 early_stop_threshold=0.99, early_stop_patience=3)


def test_cost_goes_up_after_patience_successful_epochs():
    s = CostSchedule(1, schedule=CFG)
    s.observe(0, 0.95, 10.0)
    assert s.cost[0] == pytest.approx(1e-3) and not s.up_flag[0]
    s.observe(0, 0.95, 9.0)
    assert s.cost[0] == pytest.approx(2e-3) and s.up_flag[0]
    s.observe(0, 0.95, 8.0)
    s.observe(0, 0.95, 7.0)
    assert s.cost[0] == pytest.approx(4e-3)


def test_cost_goes_down_after_patience_failed_epochs_and_a_success_resets_the_count():
    s = CostSchedule(1, schedule=CFG)
    s.observe(0, 0.5, 10.0)
    s.observe(0, 0.95, 10.0)       # the failure count starts again
    s.observe(0, 0.5, 10.0)
    assert s.cost[0] == pytest.approx(1e-3)
    s.observe(0, 0.5, 10.0)
    assert s.cost[0] == pytest.approx(1e-3 / 4) and s.down_flag[0] and not s.up_flag[0]


def test_best_trigger_is_successful_and_smallest():
    s = CostSchedule(2, schedule=CFG)
    assert not s.observe(0, 0.5, 3.0)          # not successful
    assert s.observe(0, 0.95, 5.0)
    assert not s.observe(0, 0.95, 6.0)         # larger
    assert s.observe(0, 0.95, 4.0)
    assert s.best_norm[0] == 4.0 and s.best_norm[1] == float("inf")


def test_early_stop_needs_lambda_moved_both_ways():
    s = CostSchedule(1, schedule=CFG)
    for _ in range(6):                         # successful, norm stuck: lambda only goes up
        s.observe(0, 0.95, 5.0)
    assert s.up_flag[0] and not s.down_flag[0] and not s.done[0]
    for _ in range(2):                         # two failures move it down
        s.observe(0, 0.5, 5.0)
    assert s.down_flag[0] and not s.done[0]    # the stop test comes before this epoch's move
    s.observe(0, 0.5, 5.0)
    assert s.done[0]


def test_early_stop_off_never_stops():
    s = CostSchedule(1, early_stop=False, schedule=CFG)
    for success in [0.95] * 4 + [0.5] * 4 + [0.95] * 10:
        s.observe(0, success, 5.0)
    assert not s.done[0]


def test_zero_cost_restarts_at_init_cost():
    s = CostSchedule(1, schedule=CFG)
    s.cost[0] = 0.0
    s.observe(0, 0.95, 5.0)
    assert s.cost[0] == 0.0
    s.observe(0, 0.95, 5.0)    # patience successes at lambda 0: back to init_cost, flags cleared
    assert s.cost[0] == pytest.approx(1e-3) and not s.up_flag[0]
