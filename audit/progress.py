"""tqdm progress bars on stderr, one per phase label; silent when quiet."""

from __future__ import annotations

import sys

from tqdm import tqdm


class Bars:
    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self._bars: dict[str, tqdm] = {}

    def __call__(self, label: str, done: int, total: int) -> None:
        if self.quiet:
            return
        bar = self._bars.get(label)
        if bar is None:
            bar = self._bars[label] = tqdm(total=total, desc=label, file=sys.stderr, leave=False,
                                           dynamic_ncols=True)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
