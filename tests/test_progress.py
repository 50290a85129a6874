"""Progress output: bars only on a terminal; in a log, plain lines without carriage returns."""

from __future__ import annotations

import io
from types import SimpleNamespace

from audit.commands.scan import Progress
from audit.progress import Bars


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_gets_one_line_per_phase_and_no_bar_frames():
    log = io.StringIO()
    bars = Bars(stream=log)
    for e in range(1, 41):
        bars("recover", e, 40)
    for e in range(1, 6):
        bars("retrain", e, 5)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert [ln.split(":")[0] for ln in lines] == ["recover", "retrain"]
    assert "(40/40" in lines[0]


def test_launder_rounds_are_one_line_each_in_a_log():
    log = io.StringIO()
    bars = Bars(stream=log)
    bars.silent_prefixes = ("round ",)
    for r in (1, 2):
        for e in range(1, 11):
            bars(f"round {r}: recover", e, 10)
        rr = SimpleNamespace(round=r, recovery={"flagged": [3] if r == 1 else []},
                             units_reset={"conv": 2, "fc": 1}, subset_accuracy=0.98, stopped=None)
        bars.round_line(rr)
    assert log.getvalue().splitlines() == [
        "round 1: flagged 3; reset 3 unit(s), subset accuracy 0.9800",
        "round 2: flagged none; reset 3 unit(s), subset accuracy 0.9800"]


def test_terminal_gets_a_bar_and_quiet_gets_nothing():
    tty = Tty()
    bars = Bars(stream=tty)
    for e in range(1, 11):
        bars("recover", e, 10)
    bars.close()
    assert "\r" in tty.getvalue()
    quiet = io.StringIO()
    q = Bars(quiet=True, stream=quiet)
    q("recover", 10, 10)
    q.line("x")
    assert quiet.getvalue() == ""


def test_scan_progress_in_a_log_is_one_line_per_model():
    log = io.StringIO()
    p = Progress(2, log)
    p({"path": "a.onnx", "verdict": "clean", "seconds": {"total": 1.25}})
    p({"path": "b.onnx", "verdict": "error", "seconds": {"total": 0.5}})
    assert log.getvalue().splitlines() == ["[1/2] a.onnx: clean (1.2 s)", "[2/2] b.onnx: error (0.5 s)"]
