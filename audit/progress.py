"""Progress on stderr: tqdm bars on a terminal, plain lines in a log, nothing when quiet.

A CI log keeps every carriage-return frame of a bar, so off a terminal no bar is drawn: a
phase that ends writes one line (``recover: done (40/40 epochs, 12.3 s)``), and laundering
writes one line per round instead (:meth:`Bars.round_line`).
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


class Bars:
    def __init__(self, quiet: bool = False, stream=None) -> None:
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._bars: dict[str, tqdm] = {}
        self._started: dict[str, float] = {}
        #: labels whose end is reported by someone else (a launder round's line)
        self.silent_prefixes: tuple[str, ...] = ()

    def __call__(self, label: str, done: int, total: int) -> None:
        if self.quiet:
            return
        if not self.tty:
            self._started.setdefault(label, time.perf_counter())
            if done >= total and not label.startswith(self.silent_prefixes):
                secs = time.perf_counter() - self._started.pop(label)
                self.line(f"{label}: done ({done}/{total}, {secs:.1f} s)")
            return
        bar = self._bars.get(label)
        if bar is None:
            bar = self._bars[label] = tqdm(total=total, desc=label, file=self.stream, leave=False,
                                           dynamic_ncols=True)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    def line(self, text: str) -> None:
        """One plain line (off a terminal), unless quiet."""
        if not self.quiet and not self.tty:
            print(text, file=self.stream, flush=True)

    def round_line(self, result, _forward=None) -> None:
        """launder_model's on_round: one line per laundering round in a log."""
        rec = result.recovery
        flagged = ",".join(map(str, rec["flagged"])) or "none"
        what = result.stopped or (f"reset {sum(result.units_reset.values())} unit(s), subset "
                                  f"accuracy {result.subset_accuracy:.4f}")
        self.line(f"round {result.round}: flagged {flagged}; {what}")

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
