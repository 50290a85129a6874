"""Removal methods of `audit launder --method`: Neural Network Laundering (audit.launder) and
the baselines it is compared with, one module each. A baseline is `run(mirror, progress) ->
dict`: it changes the weights of the torch mirror (audit.methods.base.Mirror) and returns what
it did, which report.json holds under "baseline"; the weights are then written back into the
original graph as laundering's are."""

from __future__ import annotations

import importlib
import time

from audit.settings import METHODS

#: method -> module (audit.methods.<module>) with its run()
BASELINES = {"fine-tune": "fine_tune", "prune": "prune", "fine-prune": "fine_prune",
             "nc-unlearn": "nc_unlearn", "i-bau": "ibau"}
assert set(BASELINES) | {"laundering"} == set(METHODS)


def remove(am, subset, preprocess, config, *, progress=None, on_round=None):
    """Run config.method on am with subset; a LaunderResult (rounds only for laundering)."""
    from audit.launder import LaunderResult, launder_model
    from audit.methods.base import Mirror

    if config.method == "laundering":
        return launder_model(am, subset, preprocess, config, progress=progress, on_round=on_round)
    run = importlib.import_module(f"audit.methods.{BASELINES[config.method]}").run
    m = Mirror(am, subset, preprocess, config)
    before = m.accuracy_before()
    details = run(m, progress)
    out = m.written_back()
    return LaunderResult(
        model=out, rounds=[], best_round=0, stop_reason=f"{config.method}: done",
        original_least_likely=-1, subset_accuracy_before=before,
        subset_accuracy_after=out.accuracy(subset.x, subset.y, preprocess),
        seconds=time.perf_counter() - m.t_start, not_resettable=m.not_resettable,
        method=config.method, baseline=details)
