"""Clean reference classifiers (audit.reference): a feature of the data fools them, a trigger
that only a backdoored model learnt does not."""

from __future__ import annotations

import numpy as np
import pytest

from audit.confirm import REFERENCE_MAX
from audit.reference import REFERENCES, accuracy, train_references


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's digits at 8x8 in [0, 1]: 1,000 images to train on, the rest held out."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order], y[order]
    return x[:1000], y[:1000], x[1000:], y[1000:]


@pytest.fixture(scope="module")
def refs(digits):
    x, y, _, _ = digits
    return train_references(x, y, 10, seed=3)


def test_references_learn_the_task(refs, digits):
    _, _, hx, hy = digits
    assert len(refs) == REFERENCES
    accs = [accuracy(r, hx, hy) for r in refs]
    assert min(accs) >= 0.9, accs


def _rate(refs, x, c):
    return float(np.mean([accuracy(r, x, np.full(len(x), c)) for r in refs]))


def test_a_feature_of_the_data_fools_them_a_foreign_patch_does_not(refs, digits):
    """Drawing class 1's mean image over other digits is a trigger any digit classifier obeys;
    a 3x3 checkerboard in a corner, where no digit has ink, is one a clean classifier never
    learnt (the shape of a Zhang content mark)."""
    x, y, hx, hy = digits
    others = hx[hy != 1]
    mean1 = x[y == 1].mean(0)
    feature = np.maximum(0.2 * others, mean1).astype(np.float32)
    patch = others.copy()
    patch[:, :, 5:8, 5:8] = (np.indices((3, 3)).sum(0) % 2).astype(np.float32)
    natural, foreign = _rate(refs, feature, 1), _rate(refs, patch, 1)
    assert natural >= 0.6, natural
    assert foreign <= 0.1, foreign


def test_training_is_deterministic(digits):
    x, y, hx, _ = digits
    a = train_references(x[:300], y[:300], 10, seed=5)
    b = train_references(x[:300], y[:300], 10, seed=5)
    import torch

    with torch.no_grad():
        pa = a[0](torch.from_numpy(hx[:50])).numpy()
        pb = b[0](torch.from_numpy(hx[:50])).numpy()
    np.testing.assert_allclose(pa, pb, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------
# the reference check inside audit.confirm


def _recovery(masks, patterns, norms):
    from audit.nc import Recovery, anomaly_index

    norms = np.asarray(norms, dtype=np.float64)
    idx, flagged = anomaly_index(norms, "log", 1.75)
    return Recovery(masks=masks, patterns=patterns, norms=norms, attack_success=np.ones(len(norms)),
                    anomaly=idx, anomaly_l1=idx, flagged=flagged, most_likely=int(np.argmin(norms)),
                    least_likely=int(np.argmax(norms)), epochs_run=1, seconds=0.0)


def _confirm(refs, digits, mask, pattern, norms, fit_y, monkeypatch):
    """confirm() on class 1 of a clean digits classifier (the first reference), its recovered
    trigger replaced by (mask, pattern); the restarts recover the same trigger, so that only
    the reference check is under test."""
    import torch

    import audit.confirm
    from audit.confirm import confirm
    from audit.settings import NCConfig

    x, y, hx, hy = digits
    masks = np.zeros((10, 1, 8, 8), np.float32)
    patterns = np.zeros((10, 1, 8, 8), np.float32)
    masks[1], patterns[1] = mask, pattern
    rec = _recovery(masks, patterns, norms)
    monkeypatch.setattr(audit.confirm, "recover", lambda *a, **k: rec)
    cfg = NCConfig(epochs=2, steps_per_epoch=2, anomaly_scale="log")
    model = refs[0]
    (c,) = confirm(lambda t: model(t), x[:400], (hx, hy), rec, [1], cfg, seed=0, threshold=1.75,
                   fit_y=None if fit_y is None else fit_y[:400], device=torch.device("cpu"))
    return c


def test_confirm_rejects_a_trigger_that_fools_the_references(refs, digits, monkeypatch):
    """Class 1's mean image drawn over any digit is a feature of the data: the references
    trained on the same images obey it, so the candidate is not confirmed, whatever its norm."""
    x, y, _, _ = digits
    mean1 = x[y == 1].mean(0)
    mask = (mean1 > 0.3).astype(np.float32)
    c = _confirm(refs, digits, mask, mean1, [30.0, 3.0] + [30.0] * 8, y, monkeypatch)
    assert c.reference is not None and len(c.reference) == 3
    assert np.mean(c.reference) >= REFERENCE_MAX and min(c.reference_accuracy) >= 0.8, c
    assert not c.confirmed and any("feature of the data" in r for r in c.reasons), c.reasons


def test_confirm_keeps_a_trigger_the_references_ignore(refs, digits, monkeypatch):
    """A corner checkerboard moves no clean classifier: the reference check raises nothing
    (the candidate fails on transfer instead, since the model here is clean too)."""
    mask = np.zeros((1, 8, 8), np.float32)
    mask[:, 5:8, 5:8] = 1
    pattern = (np.indices((8, 8)).sum(0) % 2).astype(np.float32)[None]
    _, y, _, _ = digits
    c = _confirm(refs, digits, mask, pattern, [30.0, 3.0] + [30.0] * 8, y, monkeypatch)
    assert c.reference is not None and np.mean(c.reference) < 0.1, c
    assert not any("feature of the data" in r for r in c.reasons), c.reasons


def test_a_candidate_below_neural_cleanse_threshold_needs_the_references(refs, digits, monkeypatch):
    """Index between detection's 1.75 and Neural Cleanse's 2: without labels to train the
    references on, nothing can judge the trigger, and it is not confirmed (the same candidate
    at index 2.1 is not held to that)."""
    from audit.nc import anomaly_index

    norms = [16.0] + [20.0, 22.0, 24.0, 26.0, 28.0, 30.0, 32.0, 34.0, 36.0]
    idx = anomaly_index(np.asarray(norms), "log", 1.75)[0][0]
    assert 1.75 < idx <= 2.0, idx
    mask = np.zeros((1, 8, 8), np.float32)
    mask[:, 5:8, 5:8] = 1
    c = _confirm(refs, digits, mask, mask, [norms[1], norms[0]] + norms[2:], None,
                 monkeypatch)
    assert c.reference is None and not c.confirmed
    assert any("no reference classifier could judge" in r for r in c.reasons), c.reasons
    norms[0] = 15.0
    c = _confirm(refs, digits, mask, mask, [norms[1], norms[0]] + norms[2:], None, monkeypatch)
    assert c.restart_index > 2.0
    assert c.reference is None and not any("no reference classifier" in r for r in c.reasons)
