"""Ownership verification: watermark accuracy against the vanilla-model rate, exact binomial test."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import binomtest


@dataclass
class Verification:
    n: int
    hits: int
    watermark_accuracy: float
    vanilla_rate: float
    vanilla_source: str          # "model:<path>" | "given" | "chance"
    null_rate: float             # the rate actually tested against (see effective_null_rate)
    p_value: float
    alpha: float
    demonstrated: bool
    confusion: dict               # trigger label -> {predicted label: count}
    vanilla_hits: int | None = None
    # every vanilla model measured: [{model, hits, rate}], the highest rate the one tested
    vanilla_models: list | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def effective_null_rate(rate: float, n: int) -> float:
    """A vanilla rate of 0 measured on n images is not evidence of a true rate of 0.

    Clamp to [1/(2n), 1 - 1/(2n)] so one lucky trigger hit is not 'proof' (p would be 0).
    """
    lo = 1.0 / (2 * max(n, 1))
    return float(min(max(rate, lo), 1 - lo))


def verify_predictions(pred: np.ndarray, labels: np.ndarray, vanilla_rate: float, *,
                       alpha: float = 0.01, vanilla_source: str = "given",
                       vanilla_hits: int | None = None,
                       vanilla_models: list | None = None) -> Verification:
    n = int(len(labels))
    hits = int((pred == labels).sum())
    p0 = effective_null_rate(vanilla_rate, n)
    p_value = float(binomtest(hits, n, p0, alternative="greater").pvalue) if n else 1.0
    confusion: dict[int, dict[int, int]] = {}
    for t, p in zip(labels.tolist(), pred.tolist()):
        row = confusion.setdefault(int(t), {})
        row[int(p)] = row.get(int(p), 0) + 1
    return Verification(n=n, hits=hits, watermark_accuracy=hits / max(n, 1),
                        vanilla_rate=float(vanilla_rate), vanilla_source=vanilla_source,
                        null_rate=p0, p_value=p_value, alpha=alpha,
                        demonstrated=bool(n and p_value < alpha and hits / n > p0),
                        confusion=confusion, vanilla_hits=vanilla_hits,
                        vanilla_models=vanilla_models)
