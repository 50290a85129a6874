"""Scanning one model: inspect, detect (confirmed), verify each watermark the policy names.

scan_model runs in a worker (a pool process or a Ray task) and never raises: whatever goes
wrong becomes the record's ``error`` and the verdict ``error``.
"""

from __future__ import annotations

import time
from pathlib import Path

from audit.errors import AuditError, one_line
from audit.graphs.io import sha256_file
from audit.scan.policy import ModelPolicy
from audit.settings import DetectConfig

#: verdicts, from worst to best
VERDICTS = ("error", "suspected", "ownership-lost", "clean")


def scan_model(path: str, policy: ModelPolicy, device: str = "cpu", pictures: str | None = None
               ) -> dict:
    """One result record: everything inspect, detect and verify report, timings and errors.
    pictures: a folder for the model's detect report and its flagged classes' triggers (in a
    subfolder named after the model's sha256)."""
    t0 = time.perf_counter()
    rec = empty_record(path, policy)
    try:
        rec["sha256"] = sha256_file(path)
        _run(rec, Path(path), policy, device, pictures)
    except AuditError as exc:
        rec["error"] = one_line(exc.format_message())
    except OSError as exc:
        rec["error"] = f"{path}: cannot read: {exc.strerror or exc}"
    except Exception as exc:   # a worker never dies on one model
        rec["error"] = f"internal error: {type(exc).__name__}: {one_line(exc)}"
    except BaseException as exc:   # SystemExit and the like from library code
        rec["error"] = f"internal error: {type(exc).__name__}"
    rec["seconds"]["total"] = round(time.perf_counter() - t0, 3)
    rec["verdict"] = verdict(rec)
    rec["fails"] = fails(rec["verdict"], policy.fail_on)
    return rec


def empty_record(path: str, policy: ModelPolicy) -> dict:
    """A model's record before anything is known: verdict error, no results."""
    return {"path": str(path), "sha256": None, "policy_key": policy.key(), "verdict": "error",
            "fails": False, "reasons": [], "inspect": None, "detect": None, "verify": [],
            "pictures": {}, "error": None, "seconds": {}}


def _run(rec: dict, path: Path, policy: ModelPolicy, device: str, pictures: str | None) -> None:
    from audit import api
    from audit.data import data_for
    from audit.graphs.model import AuditModel

    if policy.data is None:
        raise AuditError("no clean data for this model: give --data or data in the policy")
    pp = policy.preprocess()
    t = time.perf_counter()
    am = AuditModel.load(path, device=device)
    ds = data_for(am, policy.data)   # read once: inspect takes its first 256 images, detect all
    rec["inspect"] = api.inspect(am, ds.subset(slice(0, 256)), preprocess=pp, device=device)
    rec["seconds"]["inspect"] = round(time.perf_counter() - t, 3)
    problem = api.unusable(rec["inspect"])
    if problem:
        raise AuditError(problem)
    t = time.perf_counter()
    folder = Path(pictures) / rec["sha256"][:16] if pictures else None
    d = api.detect(am, ds, preprocess=pp, config=DetectConfig().nc(epochs=policy.nc_epochs),
                   seed=policy.seed, max_images=policy.max_images, confirm=policy.confirm,
                   threshold=policy.anomaly_threshold, report_dir=folder, pictures="flagged",
                   device=device)
    d["model"] = str(path)
    rec["detect"] = d
    rec["seconds"]["detect"] = round(time.perf_counter() - t, 3)
    for k in d["flagged"]:
        if folder is not None:
            # relative to the folder the pictures folder is in (the first report's)
            rec["pictures"][str(k)] = str(Path(folder.parent.name, folder.name, f"trigger_{k}.png"))
        rec["reasons"].append(f"class {k} flagged (anomaly index {d['anomaly_index'][k]:.2f}"
                              f"{', confirmed' if policy.confirm else ''})")
    t = time.perf_counter()
    for wm in policy.watermarks:
        v = api.verify(am, wm.triggers, vanilla=wm.vanilla, null_rate=wm.null_rate,
                       alpha=wm.alpha, preprocess=pp, device=device)
        out = {"triggers": wm.triggers, "expect": wm.expect, **v.to_dict()}
        rec["verify"].append(out)
        if wm.expect == "demonstrated" and not v.demonstrated:
            rec["reasons"].append(f"ownership not demonstrated on {wm.triggers} "
                                  f"(p = {v.p_value:.3g})")
    if policy.watermarks:
        rec["seconds"]["verify"] = round(time.perf_counter() - t, 3)


def verdict(rec: dict) -> str:
    if rec["error"] is not None:
        return "error"
    if rec["detect"] and rec["detect"]["flagged"]:
        return "suspected"
    if any(v["expect"] == "demonstrated" and not v["demonstrated"] for v in rec["verify"]):
        return "ownership-lost"
    return "clean"


def fails(verdict_: str, fail_on: str) -> bool:
    """Whether a verdict fails the gate: suspected and ownership-lost unless fail_on is never;
    errors only when fail_on is error."""
    if fail_on == "never" or verdict_ == "clean":
        return False
    return verdict_ != "error" or fail_on == "error"


def exit_code(records: list[dict]) -> int:
    """0 nothing failed, 1 a model suspected or its ownership lost, 2 a model that could not be
    scanned (when its fail_on is error), 3 nothing scanned."""
    if not records:
        return 3
    failed = [r["verdict"] for r in records if r["fails"]]
    if "error" in failed:
        return 2
    return 1 if failed else 0
